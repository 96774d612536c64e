"""RGMComm's action-value vectors (its Eq. 5), for every sender at once, from replay samples.

For sender ``i`` and its observation ``o_i``, Eq. 5 is the vector of joint action values
``Q(o_i, o_-i, a_i, a_-i) d(o_-i | o_i)`` over the receivers' (observation, action) pairs.
Following the paper's Algorithm 2, the pairs are the ``K2`` most frequent receivers'
``(o_-i, a_-i)`` in the sample, combined with every available action of the sender; the
weight ``d(o_-i | o_i)`` is the frequency of the receivers' observation among the samples with
the same sender observation, smoothed towards its marginal frequency (so that continuous
observations, seen once each, still get a vector). Values come from a critic on joint
observations and actions (``seqcomm.dfl.critic.TeamCritic`` with ``state = o.flatten()``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from seqcomm.comm.rgmcomm import activate_q
from seqcomm.dfl.critic import TeamCritic
from seqcomm.dfl.label_lookahead import sender_group_ids


@dataclass
class QVectors:
    """Eq. 5 vectors of every sender over N samples.

    Attributes:
        q: ``[n, N, K2 * A]`` the critic's action values (zero where not ``valid``).
        weights: ``[n, N, K2 * A]`` their weights ``d(o_-i | o_i)`` (zero where not ``valid``).
        valid: ``[n, N, K2 * A]`` available sender action and an existing pair.
        pairs: ``[n, K2]`` sample index of each sender's top receivers' pairs.
        sender_group: ``[n, N]`` ids of the sender's distinct observations (``0 .. G-1``).
        receiver_group: ``[n, N]`` ids of the receivers' distinct observations.
    """

    q: torch.Tensor
    weights: torch.Tensor
    valid: torch.Tensor
    pairs: torch.Tensor
    sender_group: torch.Tensor
    receiver_group: torch.Tensor

    @property
    def values(self) -> torch.Tensor:
        """``[n, N, K2 * A]`` Eq. 5's vectors, ``Q(o_i, o_-i, a) d(o_-i | o_i)``."""
        return self.q * self.weights

    def pair_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``[n, N, K2]`` each pair's ``d(o_-i | o_i) max_a Q(o_i, o_-i, a, a_-i)`` over the
        sender's available actions (0 where the pair does not exist), and ``[n, K2]`` ids of
        the pairs' receivers' observations, ``0 .. K2 - 1`` with ``K2`` for missing pairs
        (what ``seqcomm.comm.return_gap.ReturnGapObjective`` reads)."""
        n, N = self.q.shape[:2]
        K2 = self.pairs.shape[-1]
        valid = self.valid.view(n, N, K2, -1)
        best = self.q.view(n, N, K2, -1).masked_fill(~valid, -torch.inf).amax(-1)
        weight = self.weights.view(n, N, K2, -1).amax(-1)
        exists = valid.any(-1).any(1)  # [n, K2]
        values = torch.where(valid.any(-1), best * weight, torch.zeros_like(best))
        receivers = self.receiver_group.gather(1, self.pairs)  # [n, K2]
        local = local_group_ids(receivers.unsqueeze(-1))
        return values, torch.where(exists, local, torch.full_like(local, K2))

    def activated(self, activation: str = "product") -> torch.Tensor:
        """``[n, N, K2 * A]`` what Eq. 13 clusters: ``product``, the paper's ``f(Q d)``
        (``activate_q``), or ``weighted``, ``d f(Q)``. ``f`` centres each vector, so the
        product's zero entries (pairs that never occur with ``o_i``) all become one negative
        value, and observations that never occur together look alike; ``weighted`` keeps
        them at zero."""
        if activation == "product":
            return activate_q(self.values, self.valid)
        return activate_q(self.q, self.valid) * self.weights


def others_index(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[n, n-1]``: row ``i`` lists the agents other than ``i`` in order."""
    eye = torch.eye(n, dtype=torch.bool, device=device)
    return torch.arange(n, device=device).expand(n, n)[~eye].view(n, n - 1)


def local_group_ids(x: torch.Tensor) -> torch.Tensor:
    """``[n, N]`` ids ``0 .. G_i - 1`` of the identical rows of each ``x[i] [N, D]``."""
    ids = sender_group_ids(x.transpose(0, 1))  # one id space, each agent's ids contiguous
    return ids - ids.amin(-1, keepdim=True)


def group_counts(ids: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """``[n, G]`` samples per group of ``ids [n, N]``."""
    size = int(ids.max()) + 1 if size is None else size
    return torch.zeros(ids.shape[0], size, device=ids.device).scatter_add_(
        1, ids, torch.ones(ids.shape, device=ids.device))


def group_representatives(ids: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """``[n, G]`` a sample index of each group of ``ids [n, N]`` (0 for absent groups)."""
    G = int(ids.max()) + 1 if size is None else size
    index = torch.arange(ids.shape[-1], device=ids.device).expand_as(ids)
    return torch.zeros(ids.shape[0], G, dtype=torch.long, device=ids.device).scatter_(
        1, ids, index)


def joint_counts(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``[n, R, C]`` samples per (row group, column group) of ids ``rows``, ``cols [n, N]``."""
    R, C = int(rows.max()) + 1, int(cols.max()) + 1
    flat = group_counts(rows * C + cols, R * C)
    return flat.view(-1, R, C)


def receiver_conditional(sender_group: torch.Tensor, receiver_group: torch.Tensor,
                         prior: float = 1.0) -> torch.Tensor:
    """``[n, N, G]`` row-stochastic weights of ``p(m | o_-i^p) = sum_g w[p, g] m_g``: the
    share of sample p's receivers' group held by each sender group g, plus ``prior``
    pseudo-samples of the pooled marginal (continuous observations form groups of one)."""
    N = sender_group.shape[-1]
    table = joint_counts(receiver_group, sender_group)  # [n, R, G]
    count = group_counts(sender_group, table.shape[-1]).unsqueeze(1)  # [n, 1, G]
    rows = (table + prior * count / N) / (table.sum(-1, keepdim=True) + prior)
    return rows.gather(1, receiver_group.unsqueeze(-1).expand(-1, -1, table.shape[-1]))


def eq5_vectors(critic: TeamCritic, obs: torch.Tensor, action: torch.Tensor,
                mask: torch.Tensor, top_k: int = 16, prior: float = 1.0,
                max_elements: int = 2**25) -> QVectors:
    """Eq. 5 vectors of every sender from samples ``obs [N, n, D]``, ``action [N, n]``,
    ``mask [N, n, A]`` (one batched pass; no loop over agents). Counts and critic values are
    taken per distinct observation, so repeated observations cost nothing.

    Args:
        critic: ``Q(o, a)`` built with ``state_dim = n * D``.
        top_k: ``K2``, receivers' pairs per vector.
        prior: pseudo-count of the marginal in ``d(o_-i | o_i)``.
        max_elements: bound on the critic's hidden activations held at once (memory).
    """
    N, n, D = obs.shape
    A = mask.shape[-1]
    oth = others_index(n, obs.device)
    onehot = F.one_hot(action, A).to(obs.dtype)  # [N, n, A]
    recv_obs = obs[:, oth].flatten(-2).transpose(0, 1)  # [n, N, (n-1) D]
    recv_act = onehot[:, oth].flatten(-2).transpose(0, 1)
    own_group = local_group_ids(obs.transpose(0, 1))  # [n, N]
    recv_group = local_group_ids(recv_obs)
    pair_group = local_group_ids(torch.cat([recv_obs, recv_act], -1))
    # K2: the most frequent receivers' (observation, action) pairs
    size = max(int(pair_group.max()) + 1, min(top_k, N))  # K2 = min(top_k, N) slots
    top, pair_ids = group_counts(pair_group, size).topk(min(top_k, N), dim=-1)  # [n, K2]
    pairs = group_representatives(pair_group, size).gather(1, pair_ids)
    exists = top > 0
    K2 = pairs.shape[-1]

    # d(o_-i^k | o_i^p): among samples sharing o_i^p, those whose receivers saw o_-i^k
    table = joint_counts(own_group, recv_group)  # [n, G, R]
    k_recv = recv_group.gather(1, pairs)  # [n, K2]
    joint = table.gather(2, k_recv.unsqueeze(1).expand(-1, table.shape[1], -1))  # [n, G, K2]
    count = table.sum(-1, keepdim=True)  # [n, G, 1]
    marginal = table.sum(1).gather(1, k_recv).unsqueeze(1) / N  # [n, 1, K2]
    weight = (joint + prior * marginal) / (count + prior)  # [n, G, K2]

    # critic values by its first layer's additive split: the sender's slot + the receivers'
    first = critic.net[0]
    w_obs = first.weight[:, : n * D].T.reshape(n, D, -1)  # [n, D, Hc]
    w_act = first.weight[:, n * D :].T.reshape(n, A, -1)  # [n, A, Hc]
    slot = torch.einsum("pjd,jdh->pjh", obs, w_obs) + torch.einsum("pja,jah->pjh", onehot, w_act)
    rest = (slot.sum(1, keepdim=True) - slot).transpose(0, 1)  # [n, N, Hc]: all but the sender
    rest = rest.gather(1, pairs.unsqueeze(-1).expand(n, K2, rest.shape[-1]))  # [n, K2, Hc]
    reps = group_representatives(own_group)  # [n, G]
    own = torch.einsum("pid,idh->iph", obs, w_obs)  # [n, N, Hc]
    own = own.gather(1, reps.unsqueeze(-1).expand(-1, -1, own.shape[-1]))  # [n, G, Hc]
    G = reps.shape[-1]
    block = max(1, max_elements // (n * K2 * A * rest.shape[-1]))
    q = torch.cat([  # blocks of observations bound the memory of [n, block, K2, A, Hc]
        critic.unscale(critic.net[1:](
            own[:, s : s + block, None, None] + w_act[:, None, None] + rest[:, None, :, None]
            + first.bias).squeeze(-1))
        for s in range(0, G, block)], dim=1)  # [n, G, K2, A]

    per_sample = own_group.view(n, N, 1, 1).expand(-1, -1, K2, A)
    weight = weight.unsqueeze(-1).expand(-1, -1, -1, A).gather(1, per_sample)
    valid = exists[:, None, :, None] & mask.transpose(0, 1)[:, :, None, :]
    weight = weight.masked_fill(~valid, 0.0)
    q = q.gather(1, per_sample).masked_fill(~valid, 0.0)
    return QVectors(q.flatten(-2), weight.flatten(-2), valid.flatten(-2), pairs, own_group,
                    recv_group)
