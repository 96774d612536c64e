"""The value parameters ``w`` of docs/method.md §3.2: agents, messages and mixer together.

``TeamQ`` is what the learner optimises, copies into a target network, hands to the world
model's inner loop, and what the acting policy runs. All methods are batched over agents and
over any leading dimensions (time, batch, counterfactual message masks).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from seqcomm.agent import Body, Receiver, RNNAgent
from seqcomm.comm.base import Communication, MessageOutput, NoComm
from seqcomm.envs.base import EnvInfo
from seqcomm.mixer import MonotonicMixer

#: A message generator configured by class_path; the learner supplies (hidden_dim, n_agents).
CommFactory = Callable[[int, int], Communication]


class TeamQ(nn.Module):
    """Agents + communication + monotonic mixer (docs/method.md §1.2 and §2).

    Args:
        info: environment sizes (read from the specs).
        comm: message generator factory (``None`` = no communication).
        hidden_dim: agent width (GRU state size).
        mixer_embed_dim: QMIX mixing width.
        full_obs: every agent also observes the global state (the upper reference).
        oracle_obs: every agent also observes all agents' observations (the oracle channel
            of the diagnostic ladder: a perfect, free message of each sender's raw input).
        receiver: how utilities read the message context (see ``RNNAgent``).
        last_action: agents also input their previous action's one-hot (see ``RNNAgent``).
        agent_body: ``gru`` or ``mlp`` (feed-forward; see ``RNNAgent``).
    """

    def __init__(
        self,
        info: EnvInfo,
        comm: CommFactory | None = None,
        hidden_dim: int = 64,
        mixer_embed_dim: int = 32,
        full_obs: bool = False,
        oracle_obs: bool = False,
        receiver: Receiver = "mlp",
        last_action: bool = False,
        agent_body: Body = "gru",
    ) -> None:
        super().__init__()
        self.info, self.full_obs, self.oracle_obs = info, full_obs, oracle_obs
        self.comm = comm(hidden_dim, info.n_agents) if comm is not None else NoComm(
            hidden_dim, info.n_agents)
        self.comm.observe(info.obs_dim)
        in_dim = (info.obs_dim + (info.state_dim if full_obs else 0)
                  + (info.n_agents * info.obs_dim if oracle_obs else 0) + self.comm.input_dim)
        self.agent = RNNAgent(in_dim, info.n_agents, info.n_actions, hidden_dim,
                              self.comm.ctx_dim, receiver, last_action, agent_body)
        self.mixer = MonotonicMixer(info.state_dim, info.n_agents, mixer_embed_dim)

    def inputs(self, obs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Agent inputs: the observation, plus the global state under ``full_obs``, every
        agent's observation under ``oracle_obs`` and a messenger's ``input_context``."""
        parts = [obs]
        if self.full_obs:
            parts.append(state.unsqueeze(-2).expand(*obs.shape[:-1], -1))
        if self.oracle_obs:
            parts.append(obs.flatten(-2).unsqueeze(-2).expand(*obs.shape[:-1], -1))
        if self.comm.input_dim:
            parts.append(self.comm.input_context(obs))
        return torch.cat(parts, dim=-1) if len(parts) > 1 else obs

    def previous_actions(self, action: torch.Tensor, is_init: torch.Tensor):
        """For a chunk of actions ``[B, T, n]`` (``is_init [B, T]``): the one-hot previous
        action each step's input sees ``[B, T, n, A]`` (zero where an episode starts) and the one
        the step after it sees (the step's own action), for agents with ``last_action``."""
        now = nn.functional.one_hot(action, self.info.n_actions).float()
        prev = torch.cat([torch.zeros_like(now[:, :1]), now[:, :-1]], 1)
        return prev * (~is_init).to(prev.dtype)[..., None, None], now

    def utilities(
        self, h: torch.Tensor, deliver: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, MessageOutput]:
        """Per-agent utilities ``[*B, n, A]`` after communication, and the messenger's output
        with the receivers' context ``ctx`` set (for losses that reuse it)."""
        ctx, out = self.comm(h, deliver)
        return self.agent.q(h, ctx), out._replace(ctx=ctx)

    def mix(self, chosen: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """``Q_tot [*B, 1]`` from chosen utilities ``[*B, n]`` and the state."""
        return self.mixer(chosen, state)


def masked_argmax(q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Greedy action among the available ones (an agent with none available picks 0)."""
    return q.masked_fill(~mask, -float("inf")).argmax(dim=-1)
