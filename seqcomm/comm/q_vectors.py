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

from seqcomm.dfl.critic import TeamCritic


@dataclass
class QVectors:
    """Eq. 5 vectors of every sender over N samples.

    Attributes:
        values: ``[n, N, K2 * A]`` weighted action values (zero where not ``valid``).
        valid: ``[n, N, K2 * A]`` available sender action and an existing pair.
        pairs: ``[n, K2]`` sample index of each sender's top receivers' pairs.
        same_obs: ``[n, N, N]`` whether two samples share the sender's observation.
        same_receivers: ``[n, N, N]`` whether two samples share the receivers' observations.
    """

    values: torch.Tensor
    valid: torch.Tensor
    pairs: torch.Tensor
    same_obs: torch.Tensor
    same_receivers: torch.Tensor


def others_index(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[n, n-1]``: row ``i`` lists the agents other than ``i`` in order."""
    eye = torch.eye(n, dtype=torch.bool, device=device)
    return torch.arange(n, device=device).expand(n, n)[~eye].view(n, n - 1)


def same_rows(x: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """``[*, N, N]``: rows of ``x [*, N, D]`` that are equal (squared distance under tol)."""
    return torch.cdist(x, x).pow(2) < tol


def top_pairs(key: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``[*, k]`` of the ``k`` most frequent distinct rows of ``key [*, N, D]`` (the
    first sample of each), and whether each exists (fewer than ``k`` distinct rows)."""
    same = same_rows(key)
    N = key.shape[-2]
    earlier = torch.ones(N, N, dtype=torch.bool, device=key.device).tril(-1)
    first = ~(same & earlier).any(-1)  # the first sample of its class
    score = same.sum(-1).to(key.dtype) * first
    top, idx = score.topk(min(k, N), dim=-1)
    return idx, top > 0


def eq5_vectors(critic: TeamCritic, obs: torch.Tensor, action: torch.Tensor,
                mask: torch.Tensor, top_k: int = 16, prior: float = 1.0,
                max_elements: int = 2**25) -> QVectors:
    """Eq. 5 vectors of every sender from samples ``obs [N, n, D]``, ``action [N, n]``,
    ``mask [N, n, A]`` (one batched pass; no loop over agents).

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
    recv_key = torch.cat([recv_obs, onehot[:, oth].flatten(-2).transpose(0, 1)], -1)
    pairs, exists = top_pairs(recv_key, top_k)  # [n, K2]
    K2 = pairs.shape[-1]

    # d(o_-i^k | o_i^p): among samples sharing o_i^p, those whose receivers saw o_-i^k
    same_obs = same_rows(obs.transpose(0, 1))  # [n, N, N]
    same_recv = same_rows(recv_obs)  # [n, N, N]
    hits = same_recv.gather(1, pairs.unsqueeze(-1).expand(n, K2, N)).to(obs.dtype)  # [n, K2, N]
    joint = same_obs.to(obs.dtype) @ hits.transpose(1, 2)  # [n, N, K2]
    count = same_obs.sum(-1, keepdim=True).to(obs.dtype)  # [n, N, 1]
    marginal = hits.mean(-1).unsqueeze(1)  # [n, 1, K2]
    weight = (joint + prior * marginal) / (count + prior)

    # critic values by its first layer's additive split: the sender's slot + the receivers'
    first = critic.net[0]
    w_obs = first.weight[:, : n * D].T.reshape(n, D, -1)  # [n, D, Hc]
    w_act = first.weight[:, n * D :].T.reshape(n, A, -1)  # [n, A, Hc]
    slot = torch.einsum("pjd,jdh->pjh", obs, w_obs) + torch.einsum("pja,jah->pjh", onehot, w_act)
    rest = (slot.sum(1, keepdim=True) - slot).transpose(0, 1)  # [n, N, Hc]: all but the sender
    rest = rest.gather(1, pairs.unsqueeze(-1).expand(n, K2, rest.shape[-1]))  # [n, K2, Hc]
    own = torch.einsum("pid,idh->iph", obs, w_obs)  # [n, N, Hc]
    block = max(1, max_elements // (n * K2 * A * rest.shape[-1]))
    q = torch.cat([  # blocks of samples bound the memory of [n, block, K2, A, Hc]
        critic.unscale(critic.net[1:](
            own[:, s : s + block, None, None] + w_act[:, None, None] + rest[:, None, :, None]
            + first.bias).squeeze(-1))
        for s in range(0, N, block)], dim=1)  # [n, N, K2, A]

    valid = exists[:, None, :, None] & mask.transpose(0, 1)[:, :, None, :]
    values = (q * weight.unsqueeze(-1)).masked_fill(~valid, 0.0)
    return QVectors(values.flatten(-2), valid.flatten(-2), pairs, same_obs, same_recv)
