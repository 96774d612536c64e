"""The interface every message generator implements (docs/method.md §2 and §5).

A ``Communication`` turns the agents' recurrent states ``h`` of shape ``[*B, n, H]`` into the
context each receiver conditions its utility on, ``ctx`` of shape ``[*B, n, ctx_dim]``.
``deliver`` (broadcastable to ``[*B, n]``, 1 = the sender's message is delivered, 0 = it is
replaced by the empty message) lets the learner evaluate counterfactuals (guidance potential,
receiver gains) for many masks in one batched pass by adding a leading mask dimension.
"""

from __future__ import annotations

import torch
from torch import nn


class Communication(nn.Module):
    """Base class: subclasses set ``ctx_dim`` and implement ``forward``.

    Args:
        hidden_dim: size H of an agent's recurrent state (linked from the agent).
        n_agents: number of agents (linked from the environment's specs).
    """

    ctx_dim: int = 0
    #: True when the messages are discrete labels (bits per step are then log2 |M|).
    discrete: bool = False

    def __init__(self, hidden_dim: int = 64, n_agents: int = 2) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.n_agents = n_agents

    def forward(
        self, h: torch.Tensor, deliver: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return ``(ctx [*B, n, ctx_dim], aux)``; ``aux`` holds extra tensors for the losses
        and logs (messages, order, guidance potential, ...)."""
        raise NotImplementedError

    def bits_per_step(self) -> float:
        """Bits every agent broadcasts per step (logged as ``comm/bits_per_step``)."""
        return 0.0

    def samples(self) -> bool:
        """Whether a forward pass draws random numbers (so two passes on the same states may
        differ and must not be shared by the learner); subclasses that never do say so."""
        return True


class NoComm(Communication):
    """No communication: receivers get an empty context (QMIX baseline)."""

    def samples(self) -> bool:
        return False

    def forward(self, h, deliver=None):
        return h.new_zeros(*h.shape[:-1], 0), {}
