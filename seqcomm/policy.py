"""The acting policy the TorchRL collector runs (docs/method.md §1.2 and §7).

Recurrent, epsilon-greedy over available actions, messages included: it runs exactly the
``TeamQ`` forward the learner trains (same communication pass, same order), one step at a time.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.data import Composite, Unbounded

from seqcomm.envs.base import ACTION, MASK, OBS, STATE
from seqcomm.team_q import TeamQ, masked_argmax

HIDDEN = "hidden"  # [E, n, H] at the root, so nested agent batch sizes never clash
PREV_ACTION = "prev_action"  # [E, n, A] one-hot, under TeamQ(last_action=True)


class EpsilonGreedyPolicy(TensorDictModuleBase):
    """Epsilon-greedy over ``TeamQ`` utilities, epsilon annealed by global env steps.

    Args:
        net: the online value network.
        eps_start: epsilon at step 0.
        eps_end: final epsilon.
        eps_anneal_frames: env steps over which epsilon falls linearly.

    ``anneal_start`` (env steps, 0) is where the anneal begins; a learner that restarts its
    receivers (RGMComm's staged schedule) moves it.
    """

    def __init__(self, net: TeamQ, eps_start: float = 1.0, eps_end: float = 0.05,
                 eps_anneal_frames: int = 50_000) -> None:
        super().__init__()
        self.net = net
        self.in_keys = [OBS, MASK, STATE, HIDDEN, "is_init"]
        self.out_keys = [ACTION, ("next", HIDDEN)] + (
            [("next", PREV_ACTION)] if net.agent.last_action else [])
        self.eps_start, self.eps_end, self.eps_anneal_frames = eps_start, eps_end, eps_anneal_frames
        self.register_buffer("frames", torch.zeros((), dtype=torch.long))
        self.greedy = False
        self.anneal_start = 0
        self.generator = torch.Generator()

    @property
    def epsilon(self) -> float:
        frac = (self.frames.item() - self.anneal_start) / max(self.eps_anneal_frames, 1)
        frac = min(max(frac, 0.0), 1.0)
        return self.eps_start + frac * (self.eps_end - self.eps_start)

    def primer_spec(self, num_envs: int, device: torch.device | str | None = None
                    ) -> Composite:
        """Spec of the recurrent state (zero at an episode start) of ``num_envs`` copies."""
        n, H = self.net.info.n_agents, self.net.agent.hidden_dim
        spec = {HIDDEN: Unbounded((num_envs, n, H), device=device)}
        if self.net.agent.last_action:
            spec[PREV_ACTION] = Unbounded((num_envs, n, self.net.info.n_actions), device=device)
        return Composite(spec, shape=(num_envs,), device=device)

    @torch.no_grad()
    def forward(self, td: TensorDictBase) -> TensorDictBase:
        obs, mask = td[OBS], td[MASK]
        h = td.get(HIDDEN, None)
        if h is None:
            h = obs.new_zeros(*obs.shape[:-1], self.net.agent.hidden_dim)
        reset = td.get("is_init", None)
        prev = td.get(PREV_ACTION, None) if self.net.agent.last_action else None
        if self.net.agent.last_action and prev is None:
            prev = obs.new_zeros(*mask.shape)
        if reset is not None:
            h = h * (~reset).to(h.dtype).unsqueeze(-1)
            prev = prev * (~reset).to(h.dtype).unsqueeze(-1) if prev is not None else None
        h = self.net.agent.encode(self.net.inputs(obs, td[STATE]), h, prev)
        q, _ = self.net.utilities(h)
        action = masked_argmax(q, mask)
        if not self.greedy:
            gen_device = self.generator.device
            explore = torch.rand(action.shape, generator=self.generator, device=gen_device)
            explore = explore.to(action.device) < self.epsilon
            flat = mask.reshape(-1, mask.shape[-1]).float().to(gen_device)
            rand = torch.multinomial(flat, 1, generator=self.generator).view(action.shape)
            action = torch.where(explore, rand.to(action.device), action)
        td.set(ACTION, action)
        td.set(("next", HIDDEN), h)
        if self.net.agent.last_action:  # the next step's input (replay rebuilds it from ACTION)
            td.set(("next", PREV_ACTION), torch.nn.functional.one_hot(
                action, self.net.info.n_actions).to(obs.dtype))
        return td
