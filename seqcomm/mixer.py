"""The monotonic QMIX mixer (docs/method.md §1.2), from TorchRL.

``torchrl.modules.QMixer`` holds the hypernetworks; this subclass only lets the state broadcast
over extra leading dimensions (the learner's counterfactual message masks), which QMixer's
``view``-based forward does not.
"""

from __future__ import annotations

import torch
from torchrl.modules import QMixer


class MonotonicMixer(QMixer):
    """``Q_tot = f_mix(Q_1..Q_n; s)`` with non-negative mixing weights.

    Args:
        state_dim: size of the global state.
        n_agents: number of agents.
        embed_dim: width of the mixing network (PyMARL default 32).
    """

    def __init__(self, state_dim: int, n_agents: int, embed_dim: int = 32) -> None:
        super().__init__(state_shape=(state_dim,), mixing_embed_dim=embed_dim,
                         n_agents=n_agents, device="cpu")

    def forward(self, chosen: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """``chosen [*B, n]``, ``state [*B', S]`` broadcastable to ``[*B, S]`` -> ``[*B, 1]``."""
        batch = chosen.shape[:-1]
        state = state.expand(*batch, state.shape[-1]).contiguous()
        return super().forward(chosen.unsqueeze(-1).contiguous(), state)
