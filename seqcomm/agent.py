"""The agent network of the QMIX backbone (docs/method.md §1.2).

One GRU (or, with ``body="mlp"``, one feed-forward layer) shared by all agents (agent id
one-hot appended to the input; optionally PyMARL's one-hot of the agent's previous action,
zero at an episode start). ``encode`` advances the state, ``q`` reads the per-agent utilities
``Q_i(h_i, ctx_i, .)`` where ``ctx_i`` is the message context a ``Communication`` module
produced for receiver ``i``.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn
from torch.func import functional_call

Receiver = Literal["mlp", "linear"]
RECEIVERS: tuple[str, ...] = get_args(Receiver)
Body = Literal["gru", "mlp"]
BODIES: tuple[str, ...] = get_args(Body)


class RNNAgent(nn.Module):
    """PyMARL's RNN agent with a message context at the Q head.

    Args:
        obs_dim: size of one agent's input vector (observation, plus state under full_obs).
        n_agents: number of agents (for the id one-hot).
        n_actions: number of discrete actions.
        hidden_dim: GRU state size.
        ctx_dim: size of the message context each receiver gets (0 = no communication).
        receiver: how the utility reads the context: ``"mlp"`` (one hidden layer over
            ``[h_i, ctx_i]``, so a message's meaning can depend on the receiver's own state:
            "this risk is yours, not mine") or ``"linear"`` (``Linear([h_i, ctx_i])``: a
            message only adds a per-action offset). Without a context the head is linear.
        last_action: also input the one-hot of the agent's previous action (PyMARL's
            ``obs_last_action``); ``encode`` / ``unroll`` then need ``prev_action``.
        body: ``"gru"`` (PyMARL's recurrent agent) or ``"mlp"`` (a feed-forward
            ``relu(Linear)`` layer in its place, as TorchRL's and BenchMARL's QMIX default: the
            state is a function of this step's input alone and ``h`` is ignored).
    """

    def __init__(
        self,
        obs_dim: int,
        n_agents: int,
        n_actions: int,
        hidden_dim: int = 64,
        ctx_dim: int = 0,
        receiver: Receiver = "mlp",
        last_action: bool = False,
        body: Body = "gru",
    ) -> None:
        super().__init__()
        self.n_agents, self.hidden_dim, self.last_action = n_agents, hidden_dim, last_action
        if receiver not in RECEIVERS:
            raise ValueError(f"receiver={receiver!r}; choose one of {RECEIVERS}")
        if body not in BODIES:
            raise ValueError(f"body={body!r}; choose one of {BODIES}")
        self.body = body
        self.fc = nn.Linear(obs_dim + n_agents + (n_actions if last_action else 0), hidden_dim)
        if body == "gru":
            self.rnn = nn.GRUCell(hidden_dim, hidden_dim)
        else:
            self.mlp = nn.Linear(hidden_dim, hidden_dim)
        if ctx_dim > 0 and receiver == "mlp":
            self.head = nn.Sequential(nn.Linear(hidden_dim + ctx_dim, hidden_dim), nn.ReLU(),
                                      nn.Linear(hidden_dim, n_actions))
        else:
            self.head = nn.Linear(hidden_dim + ctx_dim, n_actions)
        self.register_buffer("agent_ids", torch.eye(n_agents), persistent=False)

    @property
    def encoder(self) -> tuple[nn.Module, ...]:
        """The modules that compute the state ``h``: the input layer and the body."""
        return (self.fc, self.rnn if self.body == "gru" else self.mlp)

    def features(self, obs: torch.Tensor,
                 prev_action: torch.Tensor | None = None) -> torch.Tensor:
        """The GRU's input ``relu(fc([obs, prev_action, id]))`` for any leading shape
        ``obs [*B, n, D]`` -> ``[*B, n, H]``."""
        ids = self.agent_ids.expand(*obs.shape[:-1], self.n_agents)
        parts = [obs, ids]
        if self.last_action:
            if prev_action is None:
                raise ValueError("RNNAgent(last_action=True) needs prev_action: this caller "
                                 "does not feed the previous joint action")
            parts = [obs, prev_action.to(obs.dtype), ids]
        return torch.relu(self.fc(torch.cat(parts, dim=-1)))

    def encode(self, obs: torch.Tensor, h: torch.Tensor,
               prev_action: torch.Tensor | None = None) -> torch.Tensor:
        """One recurrent step: ``obs [*B, n, D]``, ``h [*B, n, H]`` -> new ``h [*B, n, H]``;
        ``prev_action [*B, n, A]`` (one-hot, zero at an episode start) under ``last_action``."""
        x = self.features(obs, prev_action)
        if self.body == "mlp":
            return torch.relu(self.mlp(x))
        flat = self.rnn(x.reshape(-1, x.shape[-1]), h.reshape(-1, self.hidden_dim))
        return flat.reshape(h.shape)

    def unroll(self, obs: torch.Tensor, is_init: torch.Tensor,
               prev_action: torch.Tensor | None = None) -> torch.Tensor:
        """Recurrent states ``[B, T, n, H]`` over a chunk ``obs [B, T, n, D]``, ``is_init [B, T]``
        (and ``prev_action [B, T, n, A]`` under ``last_action``): the same as ``encode`` step
        by step from a zero state, reset to zero wherever an episode starts (``is_init``).
        """
        if self.body == "mlp":  # no recurrence: every step in one pass, [B, T, n, H]
            return torch.relu(self.mlp(self.features(obs, prev_action)))
        # Hand-written GRU recursion (the same gates as nn.GRUCell): nn.GRU cannot reset the
        # state mid-sequence and GRUCell recomputes fc and W_ih x every step; here those two
        # are one matmul over all steps and only the W_hh half is stepped (issue 9, measured:
        # nn.GRU over episode segments and torch.compile did not pay on CPU).
        x = self.features(obs.transpose(0, 1),
                          None if prev_action is None else prev_action.transpose(0, 1))
        H = self.hidden_dim
        gi = nn.functional.linear(x, self.rnn.weight_ih, self.rnn.bias_ih)  # [T, B, n, 3H]
        gi_rz, gi_n = gi[..., :2 * H].unbind(0), gi[..., 2 * H:].unbind(0)
        keep = (~is_init).t().to(x.dtype)[..., None, None].unbind(0)
        h = x.new_zeros(x.shape[1:])
        states = []
        for t in range(x.shape[0]):  # a loop over time, not over agents or environment copies
            h = h * keep[t]
            gh = nn.functional.linear(h, self.rnn.weight_hh, self.rnn.bias_hh)
            r, z = torch.sigmoid(gi_rz[t] + gh[..., :2 * H]).chunk(2, dim=-1)
            n = torch.tanh(torch.addcmul(gi_n[t], r, gh[..., 2 * H:]))
            h = torch.lerp(n, h, z)  # (1 - z) * n + z * h
            states.append(h)
        return torch.stack(states, dim=1)

    def q(self, h: torch.Tensor, ctx: torch.Tensor,
          head_params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Utilities ``[*B, n, n_actions]`` from states ``h`` and message contexts ``ctx``;
        ``head_params`` replaces the head's parameters (e.g. detached copies)."""
        if ctx.shape[:-1] != h.shape[:-1]:
            h = h.expand(*ctx.shape[:-1], h.shape[-1])
        x = torch.cat([h, ctx], dim=-1)
        if head_params is None:
            return self.head(x)
        return functional_call(self.head, head_params, (x,))
