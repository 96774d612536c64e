"""Guidance potential and the speaking order (docs/method.md §2.2).

``GP_i = Q_tot(greedy | all delivered) - Q_tot(greedy | i masked)``; the agent with the
highest guidance potential speaks first (the Stackelberg leader). Each agent learns a head
``psi(h_i)`` regressed on the counterfactual target, so execution needs one scalar per agent.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

OrderingMode = Literal["prosocial", "fixed", "random"]
ORDERING_MODES: tuple[str, ...] = get_args(OrderingMode)


def precedence_from_order(order: torch.Tensor) -> torch.Tensor:
    """``precedence[..., j, i] = 1`` iff agent i comes strictly before agent j in ``order``."""
    rank = torch.argsort(order, dim=-1)  # inverse permutation: position of each agent
    return (rank.unsqueeze(-2) < rank.unsqueeze(-1)).to(torch.get_default_dtype())


class Ordering(nn.Module):
    """Speaking order of the agents, one batched computation per step.

    Args:
        hidden_dim: size of the agent's recurrent state ``h_i`` (input of ``psi``).
        mode: ``"prosocial"`` (order by guidance potential, highest first, with a
            straight-through soft sort), ``"fixed"`` (agent index order, agent 0 leads) or
            ``"random"`` (a fresh random permutation per call, non-differentiable).
        tau: temperature of the pairwise soft relaxation ``sigmoid((s_i - s_j) / tau)``.
        fixed_order: the speaking order of ``"fixed"`` mode as a permutation of the agent
            indices (leader first); default ``0, 1, ..., n-1``.
    """

    def __init__(self, hidden_dim: int, mode: OrderingMode = "prosocial", tau: float = 1.0,
                 fixed_order: list[int] | None = None) -> None:
        super().__init__()
        if mode not in ORDERING_MODES:
            raise ValueError(f"ordering mode must be one of {ORDERING_MODES}, got {mode!r}")
        if fixed_order is not None and sorted(fixed_order) != list(range(len(fixed_order))):
            raise ValueError(f"fixed_order must be a permutation of 0..n-1, got {fixed_order}")
        self.fixed_order = fixed_order
        if tau <= 0:
            raise ValueError(f"ordering tau must be positive, got {tau}")
        self.mode, self.tau = mode, tau
        # whether psi runs when the order does not need it (``fixed``, ``random`` or given
        # ``scores``): a learner that never regresses it turns this off (``SeqCommDFL``)
        self.predict = True
        self.psi = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1)
        )

    def forward(
        self, h: torch.Tensor, scores: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(gp_pred [*B, n], precedence [*B, n, n], order [*B, n])``; ``gp_pred`` is
        ``None`` when ``predict`` is off and the order does not read it.

        ``scores`` (``[*B, n]``) replaces ``psi(h)`` as the sort key in ``prosocial`` mode and
        the random keys in ``random`` mode (so a caller can fix one permutation across
        counterfactual passes); ``fixed`` ignores it. In ``random`` mode, leading dims along
        which ``h`` is an ``expand()`` view (stride 0, e.g. a counterfactual-mask dimension)
        share one permutation.
        """
        # psi reads a detached state: the order's straight-through gradient (and the GP
        # regression) must not reach the agents' GRU. With it, a TD-trained messenger stayed
        # idle on hospital (seed 0, 400k steps: -177); with a fixed order it reached -38.
        sorts = self.mode == "prosocial" and scores is None
        gp_pred = self.psi(h.detach()).squeeze(-1) if self.predict or sorts else None
        batch, n = h.shape[:-1], h.shape[-2]
        if self.mode == "fixed":
            if self.fixed_order is not None and len(self.fixed_order) != n:
                raise ValueError(f"fixed_order has {len(self.fixed_order)} entries for {n} agents")
            fixed = self.fixed_order if self.fixed_order is not None else list(range(n))
            order = torch.tensor(fixed, device=h.device)  # one order: views over the batch
            precedence = precedence_from_order(order).to(h.dtype).expand(*batch, n)
            return gp_pred, precedence, order.expand(batch)
        if self.mode == "random":
            if scores is None:
                shape = [1 if h.stride(d) == 0 else s for d, s in enumerate(batch)]
                shape[-1] = n
                scores = torch.rand(shape, device=h.device, dtype=h.dtype).expand(batch)
            scores = scores.detach()
        elif scores is None:
            scores = gp_pred
        scores = scores.expand(batch)
        order = torch.argsort(-scores, dim=-1, stable=True)
        hard = precedence_from_order(order).to(scores.dtype)
        if self.mode == "random":
            return gp_pred, hard, order
        # straight-through soft sort: hard 0/1 forward, gradient of the pairwise relaxation
        # soft[..., j, i] = P(i speaks before j) = sigmoid((s_i - s_j) / tau)
        soft = torch.sigmoid((scores.unsqueeze(-2) - scores.unsqueeze(-1)) / self.tau)
        soft = soft * (1 - torch.eye(n, device=h.device, dtype=soft.dtype))
        return gp_pred, hard + (soft - soft.detach()), order


def guidance_potential(q_tot_all: torch.Tensor, q_tot_masked: torch.Tensor) -> torch.Tensor:
    """Counterfactual guidance-potential target ``GP [*B, n]`` (docs/method.md §2.2).

    Args:
        q_tot_all: ``[*B]`` mixer value of the greedy joint action, all messages delivered.
        q_tot_masked: ``[n, *B]``, row i: the same with agent i's message masked (the
            leading dimension is the counterfactual-mask dimension of the batched pass).
    """
    if q_tot_masked.shape[1:] != q_tot_all.shape:
        raise ValueError(
            f"q_tot_masked must be [n, *B] with *B = q_tot_all.shape {tuple(q_tot_all.shape)}, "
            f"got {tuple(q_tot_masked.shape)}; put the masked agent in the leading dimension"
        )
    return (q_tot_all.unsqueeze(0) - q_tot_masked).movedim(0, -1)


def order_entropy(order: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of the leader's identity over a batch of orders ``[*B, n]``.

    0 when one agent always leads, ``log2 n`` when every agent leads equally often
    (logged as ``comm/order_entropy``).
    """
    n = order.shape[-1]
    counts = torch.bincount(order[..., 0].reshape(-1), minlength=n).to(torch.float64)
    p = counts / counts.sum()
    p = p[p > 0]
    return -(p * torch.log2(p)).sum().to(torch.get_default_dtype())
