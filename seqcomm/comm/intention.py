"""SeqComm's negotiation phase: intention values from world-model rollouts, and the order
they give (Ding et al., "Multi-Agent Sequential Decision-Making via Communication").

Agent i's intention value is the return the team expects when i decides first: for ``F``
sampled orders with i at the top (the others in random order), the agents' intended actions
come from the launching phase under that order, the world model rolls the joint action out
for ``H`` steps (the intended actions re-decided at every imagined step), and the value of
the last imagined step bootstraps the return; the ``F`` returns are averaged. Agents with a
higher intention value decide earlier. Everything is batched over the environments, the
``n`` candidate leaders and the ``F`` orders; only the ``H`` rollout steps loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from seqcomm.comm.launching import launch
from seqcomm.dfl.world_model import WorldModelPrediction
from seqcomm.team_q import TeamQ

#: ``(h, state, order, mask) -> (actions [*B, n], chosen utilities [*B, n])``
Decide = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                  tuple[torch.Tensor, torch.Tensor]]


def leader_orders(batch: torch.Size, n: int, samples: int,
                  generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """``[*batch, n, samples, n]``: for each candidate leader i, ``samples`` random orders
    (first to last) that start with i."""
    keys = torch.rand(*batch, n, samples, n, generator=generator,
                      device=generator.device if generator is not None else device)
    keys = keys.to(device)
    lead = torch.eye(n, dtype=torch.bool, device=device).view(n, 1, n)
    keys = keys.masked_fill(lead.expand_as(keys), 2.0)  # above every uniform key
    return torch.argsort(keys, dim=-1, descending=True)


def rollout_return(decide: Decide, advance: Callable[..., torch.Tensor],
                   world_model: Callable[..., WorldModelPrediction],
                   value: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   h: torch.Tensor, state: torch.Tensor, obs: torch.Tensor, mask: torch.Tensor,
                   order: torch.Tensor, horizon: int, gamma: float) -> torch.Tensor:
    """``sum_{k<H} gamma^k c_k r_k + gamma^H c_H V(s_H)`` per row ``[*B]``, with
    ``c_{k+1} = c_k (1 - P(terminated_k))``.

    ``decide`` gives the intended joint action at each imagined step, ``world_model(state,
    obs, actions)`` the next transition, ``advance(next_obs, next_state, h)`` the agents'
    next hidden states and ``value(chosen, state) [*B, 1]`` the bootstrap. The real action
    mask applies at the first step; imagined steps allow every action (the model predicts no
    masks).
    """
    ret = state.new_zeros(state.shape[:-1])
    alive = torch.ones_like(ret)
    open_mask = torch.ones_like(mask)
    for k in range(horizon):  # the H imagined steps; everything else is batched
        actions, _ = decide(h, state, order, mask if k == 0 else open_mask)
        pred = world_model(state, obs, actions)
        ret = ret + gamma**k * alive * pred.reward.squeeze(-1)
        alive = alive * (1 - torch.sigmoid(pred.terminated_logit.squeeze(-1)))
        h = advance(pred.next_obs, pred.next_state, h)
        state, obs = pred.next_state, pred.next_obs
    _, chosen = decide(h, state, order, mask if horizon == 0 else open_mask)
    return ret + gamma**horizon * alive * value(chosen, state).squeeze(-1)


def intention_values(decide: Decide, advance: Callable[..., torch.Tensor],
                     world_model: Callable[..., WorldModelPrediction],
                     value: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     h: torch.Tensor, state: torch.Tensor, obs: torch.Tensor,
                     mask: torch.Tensor, orders: torch.Tensor, horizon: int,
                     gamma: float) -> torch.Tensor:
    """Intention values ``[*B, n]`` from orders ``[*B, n, F, n]`` (``leader_orders``): the
    rollout return of each order, averaged over agent i's ``F`` orders."""
    n, samples = orders.shape[-3:-1]

    def rows(x: torch.Tensor, agent_dims: int) -> torch.Tensor:  # [*B, ...] -> [*B, n, F, ...]
        at = x.dim() - agent_dims
        return x.reshape(*x.shape[:at], 1, 1, *x.shape[at:]).expand(
            *x.shape[:at], n, samples, *x.shape[at:])

    returns = rollout_return(decide, advance, world_model, value, rows(h, 2), rows(state, 1),
                             rows(obs, 2), rows(mask, 2), orders, horizon, gamma)
    return returns.mean(-1)


def order_by_intention(values: torch.Tensor) -> torch.Tensor:
    """``[*B, n]`` agents first to last: higher intention value first (ties: lower index)."""
    return torch.argsort(-values, dim=-1, stable=True)


def negotiate(net: TeamQ, world_model: Callable[..., WorldModelPrediction], h: torch.Tensor,
              state: torch.Tensor, obs: torch.Tensor, mask: torch.Tensor, samples: int,
              horizon: int, gamma: float, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The negotiation phase with ``net`` (whose ``comm`` is a ``LaunchingMessenger``):
    ``(order [*B, n], intention values [*B, n])``; intended actions are greedy. ``samples``
    is capped at the ``(n-1)!`` orders a leader has (two agents: one order, one rollout)."""
    n = net.info.n_agents

    def decide(h_, state_, order_, mask_):
        heard = net.comm.negotiation(h_)

        def utilities(actions):
            return net.agent.q(h_, net.comm.launching(heard, order_, actions))

        actions, q = launch(utilities, mask_, n)
        return actions, q.gather(-1, actions.unsqueeze(-1)).squeeze(-1)

    def advance(next_obs, next_state, h_):
        return net.agent.encode(net.inputs(next_obs, next_state), h_)

    # with n agents there are (n-1)! orders per leader; more samples would only repeat them
    orders = leader_orders(h.shape[:-2], n, min(samples, math.factorial(n - 1)), generator,
                           h.device)
    values = intention_values(decide, advance, world_model, net.mix, h, state, obs, mask,
                              orders, horizon, gamma)
    return order_by_intention(values), values
