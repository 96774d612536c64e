"""The acting policy of the SeqComm baseline: negotiate an order, then decide in it.

Per step (batched over environments and agents): the agents' hidden states; the negotiation
phase (``seqcomm.comm.intention.negotiate``: intention values from world-model rollouts,
higher first); the launching phase (``seqcomm.comm.launching.launch``) with epsilon-greedy
exploration, an explorer's random action being what its followers hear. The order is written
under ``ORDER`` so the replay batch trains each step under the order it was acted in.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch import nn

from seqcomm.comm.intention import negotiate
from seqcomm.comm.launching import launch
from seqcomm.envs.base import ACTION, MASK, OBS, STATE
from seqcomm.policy import HIDDEN, EpsilonGreedyPolicy
from seqcomm.team_q import TeamQ

ORDER = "order"  # [E, n] agents first to last, stored in the replay buffer


class SequentialPolicy(EpsilonGreedyPolicy):
    """Epsilon-greedy SeqComm acting (``EpsilonGreedyPolicy``'s exploration schedule).

    Args:
        net: the online value network (its ``comm`` a ``LaunchingMessenger``).
        world_model: the model the negotiation rolls out.
        orders: ``F``, sampled orders per candidate leader.
        horizon: ``H``, imagined steps per rollout.
        gamma: discount of the imagined returns.
        eps_start, eps_end, eps_anneal_frames: as ``EpsilonGreedyPolicy``.
    """

    def __init__(self, net: TeamQ, world_model: nn.Module, orders: int, horizon: int,
                 gamma: float, eps_start: float = 1.0, eps_end: float = 0.05,
                 eps_anneal_frames: int = 50_000) -> None:
        super().__init__(net, eps_start, eps_end, eps_anneal_frames)
        self.world_model = world_model
        self.orders, self.horizon, self.gamma = orders, horizon, gamma
        self.out_keys = [ACTION, ORDER, ("next", HIDDEN)]

    @torch.no_grad()
    def forward(self, td: TensorDictBase) -> TensorDictBase:
        obs, mask, state = td[OBS], td[MASK], td[STATE]
        h = td.get(HIDDEN, None)
        if h is None:
            h = obs.new_zeros(*obs.shape[:-1], self.net.agent.hidden_dim)
        reset = td.get("is_init", None)
        if reset is not None:
            h = h * (~reset).to(h.dtype).unsqueeze(-1)
        h = self.net.agent.encode(self.net.inputs(obs, state), h)
        order, _ = negotiate(self.net, self.world_model, h, state, obs, mask, self.orders,
                             self.horizon, self.gamma, self.generator)
        override = None
        if not self.greedy:
            gen_device = self.generator.device
            shape = mask.shape[:-1]
            explore = torch.rand(shape, generator=self.generator, device=gen_device)
            explore = explore.to(mask.device) < self.epsilon
            flat = mask.reshape(-1, mask.shape[-1]).float().to(gen_device)
            rand = torch.multinomial(flat, 1, generator=self.generator).view(shape)
            override = (explore, rand.to(mask.device))

        heard = self.net.comm.negotiation(h)

        def utilities(actions):
            return self.net.agent.q(h, self.net.comm.launching(heard, order, actions))

        action, _ = launch(utilities, mask, self.net.info.n_agents, override)
        td.set(ACTION, action)
        td.set(ORDER, order)
        td.set(("next", HIDDEN), h)
        return td
