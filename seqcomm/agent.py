"""The recurrent agent network of the QMIX backbone (DESIGN.md section 1).

One GRU shared by all agents (agent id one-hot appended to the input). ``encode`` advances the
recurrent state, ``q`` reads the per-agent utilities ``Q_i(h_i, ctx_i, .)`` where ``ctx_i`` is
the message context a ``Communication`` module produced for receiver ``i``.
"""

from __future__ import annotations

import torch
from torch import nn


class RNNAgent(nn.Module):
    """PyMARL's RNN agent with a message context at the Q head.

    Args:
        obs_dim: size of one agent's input vector (observation, plus state under full_obs).
        n_agents: number of agents (for the id one-hot).
        n_actions: number of discrete actions.
        hidden_dim: GRU state size.
        ctx_dim: size of the message context each receiver gets (0 = no communication).
    """

    def __init__(
        self, obs_dim: int, n_agents: int, n_actions: int, hidden_dim: int = 64, ctx_dim: int = 0
    ) -> None:
        super().__init__()
        self.n_agents, self.hidden_dim = n_agents, hidden_dim
        self.fc = nn.Linear(obs_dim + n_agents, hidden_dim)
        self.rnn = nn.GRUCell(hidden_dim, hidden_dim)
        self.head = nn.Linear(hidden_dim + ctx_dim, n_actions)
        self.register_buffer("agent_ids", torch.eye(n_agents), persistent=False)

    def encode(self, obs: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One recurrent step: ``obs [*B, n, D]``, ``h [*B, n, H]`` -> new ``h [*B, n, H]``."""
        ids = self.agent_ids.expand(*obs.shape[:-1], self.n_agents)
        x = torch.relu(self.fc(torch.cat([obs, ids], dim=-1)))
        flat = self.rnn(x.reshape(-1, x.shape[-1]), h.reshape(-1, self.hidden_dim))
        return flat.reshape(h.shape)

    def unroll(self, obs: torch.Tensor, is_init: torch.Tensor) -> torch.Tensor:
        """Recurrent states ``[B, T, n, H]`` over a chunk ``obs [B, T, n, D]``, ``is_init [B, T]``.

        The state is reset to zero wherever an episode starts (``is_init``).
        """
        B, T, n = obs.shape[:3]
        h = obs.new_zeros(B, n, self.hidden_dim)
        states = []
        for t in range(T):  # a loop over time, not over agents or environment copies
            h = self.encode(obs[:, t], h * (~is_init[:, t]).view(B, 1, 1).to(h.dtype))
            states.append(h)
        return torch.stack(states, dim=1)

    def q(self, h: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """Utilities ``[*B, n, n_actions]`` from states ``h`` and message contexts ``ctx``."""
        if ctx.shape[:-1] != h.shape[:-1]:
            h = h.expand(*ctx.shape[:-1], h.shape[-1])
        return self.head(torch.cat([h, ctx], dim=-1))
