"""CommNet baseline (Sukhbaatar et al. 2016; docs/method.md §5).

Each receiver gets the mean of the other agents' delivered hidden states through a linear
layer: ``ctx_j = C * mean_{i != j, delivered} h_i``. The mean is anonymous: a receiver cannot
tell which sender a feature came from. ``sender_slots: true`` (a diagnostic, not CommNet)
writes each state into its sender's own slot before the mean, so who said what survives it
(on hospital it takes CommNet from idle to all of the gap: docs/results.md section 34).
"""

from __future__ import annotations

import torch
from torch import nn

from seqcomm.comm.base import Communication, MessageOutput
from seqcomm.comm.messages import expand_to_deliver, masked_mean, others_mask


class CommNet(Communication):
    """Mean-of-hidden-states communication.

    Args:
        hidden_dim: size of the agent's recurrent state ``h_i``.
        n_agents: number of agents.
        ctx_dim: size of the context each receiver gets.
        sender_slots: average ``h_i`` outer the sender's one-hot id (``n_agents`` times as
            wide) instead of ``h_i``, so the mean keeps who sent what.
    """

    def __init__(self, hidden_dim: int = 64, n_agents: int = 2, ctx_dim: int = 64,
                 sender_slots: bool = False) -> None:
        super().__init__(hidden_dim, n_agents)
        if ctx_dim < 1:
            raise ValueError(f"CommNet ctx_dim must be >= 1, got {ctx_dim}; for no messages "
                             "leave model.comm unset (QMIX)")
        self.ctx_dim = ctx_dim
        self.sender_slots = sender_slots
        # no bias: a receiver with no delivered sender gets the zero (empty) context
        self.comm = nn.Linear(hidden_dim * (n_agents if sender_slots else 1), ctx_dim,
                              bias=False)

    def forward(
        self, h: torch.Tensor, deliver: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, MessageOutput]:
        """``(ctx, out)``; ``out.messages``: the hidden states ``h`` (what is broadcast)."""
        h, deliver = expand_to_deliver(h, deliver)
        sent = h
        if self.sender_slots:  # [*B, n, H, n] -> [*B, n, H n]: h_i in column i
            ids = torch.eye(h.shape[-2], dtype=h.dtype, device=h.device)
            sent = (h.unsqueeze(-1) * ids.unsqueeze(-2)).flatten(-2)
        return self.comm(masked_mean(others_mask(h, deliver), sent)), MessageOutput(messages=h)

    @property
    def message_dim(self) -> int:
        """The broadcast hidden state's size."""
        return self.hidden_dim

    def samples(self) -> bool:
        """Deterministic: the learner may reuse a pass's utilities at the next states."""
        return False

    def bits_per_step(self) -> float:
        """Every agent broadcasts its hidden state (32-bit floats)."""
        return 32.0 * self.hidden_dim
