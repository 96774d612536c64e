"""What a receiver lacks: the global state decoded from its own state and its message context.

An auxiliary message objective (``model.lambda_state``; docs/method.md §2.4). A decoder reads
``[sg(h_j), ctx_j]`` and regresses the global state; with the receiver's own state detached,
its gradient reaches the messenger only, and only as far as the context adds to what ``h_j``
already tells the decoder. On microcombat 3m sight SeqComm-DFL's messages carried what allies
see in common and a tenth to a third of what the receivers lacked about the enemies
(docs/results.md, sections 20-21): value-aware and TD gradients do not single that part out.
With this loss the contexts carried five to ten times more about the enemies there, and the
win rate fell (section 22): off in the method file.
"""

from __future__ import annotations

import torch
from torch import nn


class ReceiverStateHead(nn.Module):
    """Decodes the global state from each receiver's detached state and its context.

    Args:
        hidden_dim: size of a receiver's recurrent state ``h_j``.
        ctx_dim: size of its message context ``ctx_j``.
        state_dim: size of the global state.
        width: the decoder's hidden width.
    """

    def __init__(self, hidden_dim: int, ctx_dim: int, state_dim: int, width: int = 64) -> None:
        super().__init__()
        self.decoder = nn.Sequential(nn.Linear(hidden_dim + ctx_dim, width), nn.ReLU(),
                                     nn.Linear(width, state_dim))

    def forward(self, h: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """The state each receiver decodes, ``[*B, n, S]``, from ``h [*B, n, H]`` (detached
        here) and ``ctx [*B, n, C]``."""
        return self.decoder(torch.cat([h.detach(), ctx], dim=-1))

    def loss(self, h: torch.Tensor, ctx: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """MSE against the state ``[*B, S]`` standardised by its batch mean and deviation
        (columns constant in the batch left out): ``mean_col (1 - R^2)`` once the decoder has
        the means; scale-free, so one weight serves every task's state."""
        flat = state.reshape(-1, state.shape[-1])
        std, mean = torch.std_mean(flat, dim=0)
        varies = std > 1e-5 * mean.abs().clamp_min(1)  # constant up to float rounding: left out
        target = ((state - mean) / std)[..., varies]
        pred = self(h, ctx)[..., varies]
        return (pred - target.unsqueeze(-2)).pow(2).mean()
