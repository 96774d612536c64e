"""A team critic factored like QMIX on the global state: the evaluator whose switch values
rank one agent's actions by what that agent's own choice is worth.

``Q_c(s, a) = f_mix(u_1(s, a_1), ..., u_n(s, a_n); s)`` with per-agent utilities ``u_j`` of
the full state and the agent's id and the monotonic mixer. Every transition in which agent j
played a trains ``u_j(s, a)``, whatever the others played, so a switch of one agent is scored
by values fitted on that agent's own actions; the MLP critic (``TeamCritic``) is fitted on
joint actions and queried at joint actions it rarely saw. On microcombat 3m with sight 4 the
MLP critic's best response to the others' greedy actions lost every game (docs/results.md,
section 12); this critic's greedy decisions are those of QMIX with full observability.
"""

from __future__ import annotations

import torch
from torch import nn

from seqcomm.dfl.critic import TeamCritic
from seqcomm.mixer import MonotonicMixer


class FactoredCritic(TeamCritic):
    """``Q_c(s, a)`` as a monotonic mix of per-agent full-state utilities.

    Args:
        state_dim: size of the global state.
        n_agents: number of agents.
        n_actions: number of actions per agent.
        hidden_dim: width of the utilities' MLP (shared by the agents, which it tells apart
            by a one-hot id).
        embed_dim: width of the mixing network.
        normalize: regress on targets standardised by running statistics (``TeamCritic``).
        norm_rate: update rate of those statistics.
    """

    enumerates_joint_actions = False  # the best joint action is each agent's own best

    def __init__(self, state_dim: int, n_agents: int, n_actions: int, hidden_dim: int = 128,
                 embed_dim: int = 32, normalize: bool = True, norm_rate: float = 0.01):
        self.embed_dim = embed_dim
        super().__init__(state_dim, n_agents, n_actions, hidden_dim, normalize, norm_rate)

    def body(self, state_dim: int, hidden_dim: int) -> nn.Module:
        utility = nn.Sequential(
            nn.Linear(state_dim + self.n_agents, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, self.n_actions))
        return nn.ModuleDict({"utility": utility,
                              "mixer": MonotonicMixer(state_dim, self.n_agents, self.embed_dim)})

    def utilities(self, state: torch.Tensor) -> torch.Tensor:
        """``u_j(s, .)`` for every agent, ``[*B, n, A]`` (standardised units)."""
        # the first layer on [state, one-hot id] is the state's part (once per state) plus
        # agent j's id column: no [*B, n, S] copy of the state (issue 9: at 27 agents it was
        # a fifth of an update)
        first, rest = self.net["utility"][0], self.net["utility"][1:]
        w_state, w_id = first.weight[:, :-self.n_agents], first.weight[:, -self.n_agents:]
        z = (state @ w_state.T).unsqueeze(-2) + (w_id.T + first.bias)  # [*B, n, H]
        return rest(z)

    def score(self, state: torch.Tensor, joint: torch.Tensor) -> torch.Tensor:
        chosen = (self.utilities(state) * joint).sum(-1)
        return self.net["mixer"](chosen, state)

    def switch_values(self, state: torch.Tensor, action: torch.Tensor,
                      agents: torch.Tensor | None = None) -> torch.Tensor:
        """``[*B, n, A]`` (or ``[*B, len(agents), A]``): the value when agent j plays a and
        the others keep ``action [*B, n]``; one batched mixer pass over all (j, a)."""
        u = self.utilities(state)
        chosen = u.gather(-1, action.unsqueeze(-1)).squeeze(-1)  # [*B, n]
        js = torch.arange(self.n_agents, device=state.device) if agents is None else agents
        switched = nn.functional.one_hot(js, self.n_agents).bool()[:, None, :]  # [k, 1, n]
        own = u[..., js, :].unsqueeze(-1)  # [*B, k, A, 1]: j's utility of each a
        joint = torch.where(switched, own, chosen[..., None, None, :])  # [*B, k, A, n]
        return self.unscale(self.net["mixer"](joint, state[..., None, None, :]).squeeze(-1))

    def best_joint_score(self, state: torch.Tensor, mask: torch.Tensor,
                         max_elements: int = 2**24) -> torch.Tensor:
        """``max_a score(state, a)`` over available joint actions, ``[*B, 1]``: the mixer is
        monotonic, so it is each agent's own best available utility, mixed."""
        u = self.utilities(state).masked_fill(~mask.bool(), float("-inf"))
        return self.net["mixer"](u.amax(-1), state)
