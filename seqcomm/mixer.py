"""The monotonic QMIX mixer (docs/method.md §1.2), from TorchRL.

``torchrl.modules.QMixer`` holds the hypernetworks; this subclass only lets the state broadcast
over extra leading dimensions (the learner's counterfactual message masks), which QMixer's
``view``-based forward does not.
"""

from __future__ import annotations

import torch
from torch import nn
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
        """``chosen [*B, n]``, ``state [*B', S]`` broadcastable to ``[*B, S]`` -> ``[*B, 1]``.

        Where ``state`` is shared by extra leading dimensions of ``chosen`` (message masks,
        switched actions), the hypernetworks run once per state and their outputs broadcast:
        the same mixing as ``QMixer.mix`` (its ``bmm`` calls), without recomputing the
        ``S``-wide layers for every copy (issue 9: at 27 agents they were most of an update).
        """
        batch = chosen.shape[:-1]
        if state.shape[:-1] == batch:
            return super().forward(chosen.unsqueeze(-1).contiguous(), state.contiguous())
        n, e = self.n_agents, self.embed_dim

        def spread(x: torch.Tensor, *shape: int) -> torch.Tensor:  # [*B', .] -> [N, *shape]
            return x.unflatten(-1, shape).expand(*batch, *shape).reshape(-1, *shape)

        w1 = spread(torch.abs(self.hyper_w_1(state)), n, e)
        b1 = spread(self.hyper_b_1(state), 1, e)
        hidden = nn.functional.elu(torch.bmm(chosen.reshape(-1, 1, n), w1) + b1)
        w_final = spread(torch.abs(self.hyper_w_final(state)), e, 1)
        v = spread(self.V(state), 1, 1)
        return (torch.bmm(hidden, w_final) + v).view(*batch, 1)
