"""The return gap of a labelling itself, as a clustering objective for RGMComm's labels.

RGMComm's Eq. 13 minimises a bound on the return gap (its Theorem 4.3); the labelling that
minimises the bound is not always the labelling that loses the least value (on 15 of 40 random
matrix tables, docs/results.md section 31). This objective scores a labelling by the value it
loses under the critic instead: receivers that hear label ``l`` and see ``o_-i`` play the
receivers' action best on average over the sender observations under ``l``, so the value of
soft labels ``m(o_i)`` is

    J(m) = sum_l sum_r max_{k in r} sum_p w_p m_l(o_i^p) d(o_-i^k | o_i^p) U(o_i^p, k),

``r`` the receivers' distinct observations among the Eq. 5 pairs ``k`` (their (observation,
action) pairs), ``U`` the critic's value of pair ``k`` with the sender's best available
action and ``w_p`` the sender observation's visitation weight. The return gap is the value of
full information (every observation its own label) minus ``J``: zero for a lossless labelling,
and one label for everything loses the most, so no information term is needed. On the matrix
game with exact values ``J`` is the message value of ``seqcomm.envs.matrix.message_value``.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def group_max_sum(s: torch.Tensor, ids: torch.Tensor, size: int) -> torch.Tensor:
    """``sum_r max_{k: ids[k] = r} s[..., k]`` of ``s [*, K]`` over groups ``ids [*, K]``
    (``0 .. size - 1``; id ``size`` drops the entry)."""
    out = s.new_zeros(*s.shape[:-1], size + 1)
    out = out.scatter_reduce(-1, ids.expand_as(s), s, "amax", include_self=False)
    return out[..., :size].sum(-1)


class ReturnGapObjective:
    """The return gap of labels of ``G`` distinct sender observations, per sender.

    Args:
        values: ``[n, G, K]`` ``d(o_-i^k | o_i^p) U(o_i^p, k)`` (``QVectors.pair_values``).
        weight: ``[n, G]`` visitation weights of the observations.
        pair_group: ``[n, K]`` ids ``0 .. K - 1`` of each pair's receivers' observation, ``K``
            for pairs that do not exist.
    """

    def __init__(self, values: torch.Tensor, weight: torch.Tensor,
                 pair_group: torch.Tensor) -> None:
        self.weight = weight
        self.mass = (weight.unsqueeze(-1) * values).detach()  # [n, G, K]: constants
        self.ids = pair_group.unsqueeze(1)  # [n, 1, K]
        self.size = values.shape[-1]
        self.full = self.value_of(self.mass).sum(-1)  # [n]: every observation its own label

    def value_of(self, s: torch.Tensor) -> torch.Tensor:
        """``sum_r max_{k in r} s[..., k]`` for ``s [n, *, K]``."""
        ids = self.ids.view(self.ids.shape[0], *[1] * (s.dim() - 2), -1)
        return group_max_sum(s, ids, self.size)

    def loss(self, probs: torch.Tensor) -> torch.Tensor:
        """``[n]`` the return gap of label distributions ``probs [n, G, M]`` (the gradient
        flows to ``probs``; one-hots score a labelling)."""
        heard = probs.transpose(-1, -2) @ self.mass  # [n, M, K]
        return self.full - self.value_of(heard).sum(-1)

    def refine(self, labels: torch.Tensor, n_labels: int, max_moves: int = 64) -> torch.Tensor:
        """Local search on the hard labels ``[n, G]``: move the one observation whose move to
        another label lowers the gap most, until none does (or ``max_moves``); exact, since a
        move changes only its two labels' terms."""
        idx = torch.arange(labels.shape[0], device=labels.device)
        labels = labels.clone()
        for _ in range(max_moves):  # a loop over moves, once per clustering
            own = F.one_hot(labels, n_labels).to(self.mass.dtype)  # [n, G, M]
            heard = own.transpose(-1, -2) @ self.mass  # [n, M, K]
            now = self.value_of(heard)  # [n, M]
            old = heard.gather(1, labels.unsqueeze(-1).expand(-1, -1, self.size))  # [n, G, K]
            leave = self.value_of(old - self.mass) - now.gather(1, labels)  # [n, G]
            join = self.value_of(heard.unsqueeze(1) + self.mass.unsqueeze(2)) - now.unsqueeze(1)
            gain = (leave.unsqueeze(-1) + join).masked_fill(own > 0, -float("inf"))  # [n, G, M]
            best = gain.flatten(1).max(-1)
            improve = best.values > 1e-9 * self.full.abs().clamp_min(1.0)
            if not improve.any():
                break
            g, k = best.indices // n_labels, best.indices % n_labels
            labels[idx[improve], g[improve]] = k[improve]
        return labels
