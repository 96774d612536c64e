"""Look-ahead scores for a discrete sender (Hartigan's step, for the one-way few-bit setting).

A sender scored against its receiver's *current* decisions under each label (the best-response
gain) makes the labels and the receiver a Lloyd iteration: it stops at any labelling from
which no single observation gains by switching while the receiver stays put, and on random
matrix tables those fixed points are often worse than the best message
(``benchmarks/matrix_label_dynamics.py``). The look-ahead scores a label by the team value
*after* the receivers best-respond to the new pools: every sample of one sender observation
moves to label ``k`` together, each (receiver observation, label) pool is re-solved against
the evaluator's values, and the score is the change of the batch's team value. Computed for
every (observation, label) candidate in one batched pass; its cost grows as
``G x M x (S x N x M + R x M x A)`` (G distinct sender observations, R receiver ones), which
suits discrete-observation tasks such as the matrix game. Written here because no library
implements a label look-ahead against a learned critic.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.nn import functional as F

from seqcomm.team_q import masked_argmax


class LookAhead(NamedTuple):
    """``scores [S, N, M]``: each label's look-ahead score per sample; ``pooled [S, N, M, A]``:
    the mean evaluator value of each receiver action over the sample's current
    (receiver observation, label) pool (unavailable actions: ``-inf``)."""

    scores: torch.Tensor
    pooled: torch.Tensor


def group_ids(rows: torch.Tensor) -> torch.Tensor:
    """``[N]`` ids of identical rows of ``rows [N, D]`` (0 .. number of distinct rows - 1)."""
    return torch.unique(rows, dim=0, return_inverse=True)[1]


def sender_group_ids(x: torch.Tensor) -> torch.Tensor:
    """``[n, N]`` ids of identical rows per agent of ``x [N, n, D]``, distinct across agents
    (one id space for all, as ``lookahead_label_scores`` and ``refine_labelling`` expect)."""
    N, n = x.shape[:2]
    agent = torch.arange(n, dtype=x.dtype, device=x.device).view(1, n, 1).expand(N, n, 1)
    return group_ids(torch.cat([agent, x], -1).transpose(0, 1).flatten(0, 1)).view(n, N)


def lookahead_label_scores(
    probs: torch.Tensor,
    values: torch.Tensor,
    sender_group: torch.Tensor,
    receiver_group: torch.Tensor,
    action_mask: torch.Tensor | None = None,
) -> LookAhead:
    """Per-sample look-ahead score of each label, and the current pools' values.

    Args:
        probs: ``[S, N, M]`` each sender's label probabilities per sample (their argmax is
            the labelling scored).
        values: ``[S, N, A]`` the evaluator's value of the listening receiver playing ``a``.
        sender_group: ``[S, N]`` ids of the sender's observation, distinct across senders.
        receiver_group: ``[S, N]`` ids of the receiver's observation, distinct across senders.
        action_mask: ``[S, N, A]`` the receiver's available actions (constant in a group).

    ``J(p) = 1/N sum_n sum_m p_n(m) values_n(a*(r_n, m))`` with ``a*(r, m)`` the action that
    is best for the pool of samples whose receiver observation is ``r`` and whose sender
    sends ``m`` (weighted by ``p``); the score of label ``k`` for a sample is ``J`` with its
    whole sender group sending ``k``, minus ``J`` of the current labelling.
    """
    S, N, M = probs.shape
    # the labels sent at execution: the argmax (ties: the first label), so a move from a
    # sender undecided between labels still creates a pure pool (soft pools of an
    # undecided sender are all alike, and every move would score 0)
    p = F.one_hot(probs.detach().argmax(-1), M).to(probs.dtype)
    G, R = int(sender_group.max()) + 1, int(receiver_group.max()) + 1
    inside = F.one_hot(sender_group, G).to(p.dtype).permute(2, 0, 1)[:, None, :, :, None]
    labels = torch.eye(M, dtype=p.dtype, device=p.device)[None, :, None, None, :]
    candidates = inside * labels + (1 - inside) * p  # [G, M, S, N, M]
    p_all = torch.cat([candidates.reshape(G * M, S, N, M), p.unsqueeze(0)])  # last: current
    member = F.one_hot(receiver_group, R).to(p.dtype)  # [S, N, R]
    pool = torch.einsum("csnm,snr,sna->crma", p_all, member, values)
    if action_mask is not None:  # an action counts only where every sample of the group has it
        have = torch.einsum("snr,sna->ra", member, action_mask.to(p.dtype))
        usable = have >= member.sum((0, 1)).unsqueeze(-1)
    else:
        usable = torch.ones(R, values.shape[-1], dtype=torch.bool, device=p.device)
    best = masked_argmax(pool, usable[None, :, None, :])
    best = best[:, receiver_group]  # [C, S, N, M]
    chosen = values.unsqueeze(0).expand(best.shape[0], -1, -1, -1).gather(-1, best)
    team = (p_all * chosen).sum((-1, -2)) / N  # [C, S]
    score = (team[:-1] - team[-1]).view(G, M, S).permute(2, 0, 1)  # [S, G, M]
    mass = torch.einsum("snm,snr->rm", p, member).clamp_min(1e-12)
    pooled = (pool[-1] / mass.unsqueeze(-1)).masked_fill(~usable[:, None, :], -float("inf"))
    return LookAhead(score.gather(1, sender_group.unsqueeze(-1).expand(S, N, M)),
                     pooled[receiver_group])


def pool_best_actions(values: torch.Tensor, keys: torch.Tensor,
                      action_mask: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's pool best response: ``(best [N], decided [N])``.

    ``values [N, A]``: an evaluator's value of the receiver playing each action in the
    sample's state; ``keys [N, D]``: what the receiver knows (its observation and the
    labels it heard): samples with identical keys form one pool, and ``best`` is the action
    with the highest mean value over the pool (among the actions every member has, under
    ``action_mask``). ``decided``: the pool prefers one action by more than float noise.
    With continuous observations the pools are single samples."""
    group = group_ids(keys)
    member = F.one_hot(group, int(group.max()) + 1).to(values.dtype)  # [N, G]
    pooled = member.T @ values  # [G, A]: sums; the argmax is that of the mean
    if action_mask is not None:
        have = member.T @ action_mask.to(values.dtype)
        usable = have >= member.sum(0).unsqueeze(-1)
        pooled = pooled.masked_fill(~usable, -float("inf"))
    top2 = pooled.topk(min(2, pooled.shape[-1]), dim=-1).values
    decided = (top2[:, 0] - top2[:, -1]) > 1e-6 * member.sum(0)
    return pooled.argmax(-1)[group], decided[group]
