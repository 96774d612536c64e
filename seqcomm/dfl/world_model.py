"""Communication-augmented world model ``W_theta(s, o, a, M) -> (s', o', r, terminated)``.

docs/method.md §3.1. Each agent's observation, one-hot action, message and one-hot id are
embedded by one shared MLP; the embeddings are pooled over agents and combined with the
global state; the model predicts residual deltas for the next state and the next
observations, plus the team reward and a termination logit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Pooling = Literal["mean", "concat"]
POOLINGS: tuple[str, ...] = get_args(Pooling)


class WorldModelPrediction(NamedTuple):
    """One imagined transition; ``*B`` are the caller's batch dimensions."""

    next_state: Tensor  # [*B, S]
    next_obs: Tensor  # [*B, n, D]
    reward: Tensor  # [*B, 1]
    terminated_logit: Tensor  # [*B, 1]


class WorldModel(nn.Module):
    """Predicts the next transition from state, observations, joint action and messages.

    Args:
        state_dim: size S of the global state (from the env's ``state`` spec).
        obs_dim: size D of one agent's observation.
        n_agents: number of agents n.
        n_actions: number of discrete actions per agent.
        msg_dim: size of one agent's message; 0 for a world model without messages.
        hidden_dim: width of every hidden layer.
        pooling: how the per-agent embeddings are combined: ``"mean"`` (size independent of
            n; the agent id inside each embedding keeps agents apart) or ``"concat"``
            (exact for small n, grows with n).

    Activations are SiLU rather than ReLU so that second derivatives through the model (the
    Hessian-vector products of the implicit gradient) are not zero almost everywhere.
    """

    def __init__(
        self,
        state_dim: int,
        obs_dim: int,
        n_agents: int,
        n_actions: int,
        msg_dim: int = 0,
        hidden_dim: int = 128,
        pooling: Pooling = "mean",
    ) -> None:
        super().__init__()
        for name, value, low in [("state_dim", state_dim, 1), ("obs_dim", obs_dim, 1),
                                 ("n_agents", n_agents, 1), ("n_actions", n_actions, 1),
                                 ("msg_dim", msg_dim, 0), ("hidden_dim", hidden_dim, 1)]:
            if value < low:
                raise ValueError(f"WorldModel: {name}={value} must be >= {low}.")
        if pooling not in POOLINGS:
            raise ValueError(f"WorldModel: pooling={pooling!r} is unknown; use one of {POOLINGS}.")
        self.state_dim, self.obs_dim = state_dim, obs_dim
        self.n_agents, self.n_actions, self.msg_dim = n_agents, n_actions, msg_dim
        self.pooling = pooling
        self.register_buffer("agent_ids", torch.eye(n_agents), persistent=False)
        agent_in = obs_dim + n_actions + msg_dim + n_agents
        self.agent_encoder = nn.Sequential(
            nn.Linear(agent_in, hidden_dim), nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.SiLU(),
        )
        pooled_dim = hidden_dim * (n_agents if pooling == "concat" else 1)
        self.joint = nn.Sequential(
            nn.Linear(state_dim + pooled_dim, hidden_dim), nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.SiLU(),
        )
        self.state_head = nn.Linear(hidden_dim, state_dim)
        self.reward_head = nn.Linear(hidden_dim, 1)
        self.terminated_head = nn.Linear(hidden_dim, 1)
        self.obs_head = nn.Sequential(
            nn.Linear(2 * hidden_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, obs_dim)
        )

    def forward(
        self, state: Tensor, obs: Tensor, action: Tensor, messages: Tensor | None = None
    ) -> WorldModelPrediction:
        """``state [*B,S]``, ``obs [*B,n,D]``, ``action [*B,n]`` int64, ``messages [*B,n,msg_dim]``
        (``None`` or an empty last dimension when ``msg_dim == 0``)."""
        n = self.n_agents
        if state.shape[-1] != self.state_dim or obs.shape[-2:] != (n, self.obs_dim):
            raise ValueError(
                f"WorldModel expects state [*B,{self.state_dim}] and obs [*B,{n},{self.obs_dim}]"
                f", got {tuple(state.shape)} and {tuple(obs.shape)}."
            )
        if action.shape != obs.shape[:-1]:
            raise ValueError(f"action must be [*B,{n}] int64, got {tuple(action.shape)}.")
        batch = obs.shape[:-2]
        if messages is None:
            if self.msg_dim:
                raise ValueError(f"messages [*B,{n},{self.msg_dim}] are required (msg_dim > 0).")
            messages = obs.new_zeros(*batch, n, 0)
        elif messages.shape[-2:] != (n, self.msg_dim):
            raise ValueError(
                f"messages must be [*B,{n},{self.msg_dim}], got {tuple(messages.shape)}."
            )
        one_hot = F.one_hot(action, self.n_actions).to(obs.dtype)
        ids = self.agent_ids.to(obs.dtype).expand(*batch, n, n)
        emb = self.agent_encoder(torch.cat([obs, one_hot, messages.to(obs.dtype), ids], -1))
        pooled = emb.mean(-2) if self.pooling == "mean" else emb.flatten(-2)
        g = self.joint(torch.cat([state, pooled], -1))
        obs_in = torch.cat([emb, g.unsqueeze(-2).expand_as(emb)], -1)
        return WorldModelPrediction(
            next_state=state + self.state_head(g),
            next_obs=obs + self.obs_head(obs_in),
            reward=self.reward_head(g),
            terminated_logit=self.terminated_head(g),
        )

    def prediction_loss(
        self,
        pred: WorldModelPrediction,
        next_state: Tensor,
        next_obs: Tensor,
        reward: Tensor,
        terminated: Tensor,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Maximum-likelihood loss of the ``mle`` ablation: MSE on state, observations and
        reward plus BCE on termination, averaged over samples where ``mask`` ([*B] or
        [*B,1], true = real step) is set."""
        per_sample = (
            (pred.next_state - next_state).pow(2).mean(-1)
            + (pred.next_obs - next_obs).pow(2).mean((-2, -1))
            + (pred.reward - reward).pow(2).squeeze(-1)
            + F.binary_cross_entropy_with_logits(
                pred.terminated_logit, terminated.to(pred.terminated_logit.dtype),
                reduction="none",
            ).squeeze(-1)
        )
        if mask is None:
            return per_sample.mean()
        mask = mask.reshape(per_sample.shape).to(per_sample.dtype)
        return (per_sample * mask).sum() / mask.sum().clamp_min(1.0)


#: A world model configured by class_path; the learner supplies the task's sizes
#: (state_dim, obs_dim, n_agents, n_actions) and the message size msg_dim.
WorldModelFactory = Callable[[int, int, int, int, int], WorldModel]
