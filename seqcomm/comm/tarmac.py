"""TarMAC baseline (Das et al. 2019; docs/method.md §5).

Each sender broadcasts a signature (key) and a value; each receiver predicts a query and
takes the soft-attention-weighted sum of the values of all other delivered senders (one
communication round, single head).
"""

from __future__ import annotations

import torch
from torch import nn

from seqcomm.comm.base import Communication, MessageOutput
from seqcomm.comm.messages import expand_to_deliver, masked_attention, others_mask


class TarMAC(Communication):
    """Targeted signature-based attention messages; ``ctx_dim = value_dim``.

    Args:
        hidden_dim: size of the agent's recurrent state ``h_i``.
        n_agents: number of agents.
        key_dim: size of the signatures and queries.
        value_dim: size of the message values (and of the context).
    """

    def __init__(
        self, hidden_dim: int = 64, n_agents: int = 2, key_dim: int = 16, value_dim: int = 32
    ) -> None:
        super().__init__(hidden_dim, n_agents)
        if key_dim < 1 or value_dim < 1:
            raise ValueError(f"TarMAC key_dim and value_dim must be >= 1, got {key_dim} and "
                             f"{value_dim}; for no messages leave model.comm unset (QMIX)")
        self.key_dim, self.value_dim = key_dim, value_dim
        self.ctx_dim = value_dim
        self.signature = nn.Linear(hidden_dim, key_dim)
        self.value = nn.Linear(hidden_dim, value_dim)
        self.query = nn.Linear(hidden_dim, key_dim)

    def forward(
        self, h: torch.Tensor, deliver: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, MessageOutput]:
        """``(ctx, out)``; ``out.messages``: the values, ``out.signatures``: the keys."""
        h, deliver = expand_to_deliver(h, deliver)
        others = others_mask(h, deliver)
        keys, values = self.signature(h), self.value(h)
        ctx = masked_attention(self.query(h), keys, values, others)
        return ctx, MessageOutput(messages=values, signatures=keys)

    def samples(self) -> bool:
        """Deterministic: the learner may reuse a pass's utilities at the next states."""
        return False

    def bits_per_step(self) -> float:
        """Signature and value per agent (32-bit floats)."""
        return 32.0 * (self.key_dim + self.value_dim)
