"""The monotonic QMIX mixer (docs/method.md §1.2), from TorchRL.

``torchrl.modules.QMixer`` holds the hypernetworks; this subclass lets the state broadcast
over extra leading dimensions (counterfactual message masks, a critic's switched actions),
which QMixer's ``view``-based forward does not, and runs the hypernetworks once per state
there (written by hand because QMixer has no such path).
"""

from __future__ import annotations

import math

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
        switched actions), the hypernetworks run once per state and each state's copies mix
        as the rows of one ``bmm``: ``QMixer.mix`` without recomputing the ``S``-wide layers
        or copying their outputs for every copy (issue 9: at 27 agents they were most of an
        update).
        """
        batch = chosen.shape[:-1]
        if state.shape[:-1] == batch:
            return super().forward(chosen.unsqueeze(-1).contiguous(), state.contiguous())
        n, e = self.n_agents, self.embed_dim
        lead = (1,) * (len(batch) - state.dim() + 1) + tuple(state.shape[:-1])
        shared = [d for d, (s, b) in enumerate(zip(lead, batch, strict=True)) if s < b]
        order = [d for d in range(len(batch)) if d not in shared] + shared
        copies = math.prod(batch[d] for d in shared)
        x = chosen.permute(*order, -1).reshape(-1, copies, n)  # [states, copies, n]
        state = state.reshape(-1, state.shape[-1])
        w1 = torch.abs(self.hyper_w_1(state)).view(-1, n, e)
        hidden = nn.functional.elu(torch.bmm(x, w1) + self.hyper_b_1(state).view(-1, 1, e))
        w_final = torch.abs(self.hyper_w_final(state)).view(-1, e, 1)
        y = torch.bmm(hidden, w_final) + self.V(state).view(-1, 1, 1)  # [states, copies, 1]
        y = y.view(*(batch[d] for d in order), 1)
        return y.permute(*sorted(range(len(batch)), key=order.__getitem__), -1)
