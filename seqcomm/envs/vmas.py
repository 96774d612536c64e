"""VMAS tasks with discrete actions behind the seqcomm key contract (docs/method.md §6.6).

``VmasTask`` is a batched ``EnvBase`` directly over ``vmas.make_env``, which writes VMAS's
per-agent lists into the contract keys (``seqcomm.envs.base``) in one step. It does by hand
what ``torchrl.envs.VmasEnv`` plus a transform would: that stack builds a TensorDict per agent
and forwards two attribute reads through ``dir()`` at every step, which cost about as much as
the simulator itself (issue 9, benchmarks/README.md).

* ``("agents", "observation")``: VMAS's per-agent observation, unchanged.
* ``("agents", "action_mask")``: all true (every VMAS discrete action is always legal).
* ``"state"``: the concatenation of all learning agents' observations, ``n * obs_dim``.
* ``"reward"``: the mean over the learning agents of VMAS's per-agent reward. Each scenario
  is configured so that this per-agent reward already is the team's (simple_spread gives
  every agent the same global reward, simple_tag's predators and navigation's agents are
  built with shared rewards); a sum would count the team reward ``n`` times.
* ``"terminated"``: the scenario's own end (only navigation has one: all agents on goal);
  ``"truncated"``: ``max_steps`` reached; ``"done"``: either.
* ``("info", <metric>)``: one team metric per scenario (see ``VmasTask``).

Discrete actions are VMAS's 3 x 3 grid of forces per axis (9 actions, 0 = no force).
VMAS keeps one random state for all its environments in a process (a class attribute),
seeded by ``seed`` when a ``VmasTask`` is built; tasks built later reseed that shared state.
Resetting only some copies (navigation, whose episodes end early) calls VMAS's one-copy
``reset_at`` in a Python loop: VMAS 1.5 offers no batched partial reset. simple_spread and
simple_tag only end by truncation, all copies at once, and reset in one batched call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
from tensordict import TensorDict, TensorDictBase
from vmas import make_env
from vmas.scenarios import navigation
from vmas.scenarios.mpe import simple_spread, simple_tag
from vmas.simulator.scenario import BaseScenario

from seqcomm.envs.base import ACTION, AGENTS, INFO, OBS, STATE, MultiAgentEnv
from seqcomm.envs.reference import random_policy

Scenario = Literal["simple_spread", "simple_tag", "navigation"]
SCENARIOS: tuple[str, ...] = get_args(Scenario)


def _positions(entities: list) -> torch.Tensor:
    """Positions ``[E, len(entities), 2]`` of a small fixed list of VMAS entities."""
    return torch.stack([e.state.pos for e in entities], dim=1)


class _Spread(simple_spread.Scenario):
    """simple_spread plus the metric ``landmark_dist``: mean landmark-to-nearest-agent distance."""

    def info(self, agent) -> dict[str, torch.Tensor]:
        dist = torch.cdist(_positions(self.world.landmarks), _positions(self.world.agents))
        return {"landmark_dist": dist.min(-1).values.mean(-1)}


class _Tag(simple_tag.Scenario):
    """simple_tag with scripted prey and the metric ``catches`` (predator-prey contacts so far).

    Each prey flees at full force straight away from its nearest predator. Giving the prey
    an ``action_script`` makes VMAS drive it inside its own step, batched over copies, and
    leave it out of the policy agents, so the learner sees only the predators.
    """

    def make_world(self, batch_dim: int, device: torch.device, **kwargs):
        world = super().make_world(batch_dim, device, **kwargs)
        for prey in (a for a in world.agents if not a.adversary):
            # VMAS takes the script only as a constructor argument of Agent, which
            # simple_tag builds itself, hence setting the attribute afterwards.
            prey._action_script = self._flee
        self.catches = torch.zeros(batch_dim, device=device)
        return world

    def _flee(self, prey, world) -> None:
        away = prey.state.pos.unsqueeze(1) - _positions(self.adversaries())  # [E, n_pred, 2]
        nearest = away.norm(dim=-1).argmin(-1)
        direction = away[torch.arange(away.shape[0], device=away.device), nearest]
        direction = (direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-6))
        u_max = prey.action.u_range_tensor
        prey.action.u = direction.clamp(-1, 1) * u_max * prey.action.u_multiplier_tensor

    def reset_world_at(self, env_index: int | None = None) -> None:
        super().reset_world_at(env_index)
        if env_index is None:
            self.catches.zero_()
        else:
            self.catches[env_index] = 0

    def post_step(self) -> None:
        preds, prey = self.adversaries(), self.good_agents()
        reach = preds[0].shape.radius + prey[0].shape.radius
        dist = torch.cdist(_positions(preds), _positions(prey))
        self.catches += (dist < reach).sum((-1, -2)).float()

    def info(self, agent) -> dict[str, torch.Tensor]:
        return {"catches": self.catches.clone()}


class _Navigation(navigation.Scenario):
    """VMAS navigation plus the metric ``success``: every agent is on its goal."""

    def info(self, agent) -> dict[str, torch.Tensor]:
        return {"success": self.done().float()}


def scenario_setup(scenario: Scenario, n_agents: int, observe_teammates: bool, n_prey: int,
                   n_obstacles: int, shaped_reward: bool
                   ) -> tuple[BaseScenario, str, dict[str, Any]]:
    """The scenario object, its team metric and its ``vmas.make_env`` keyword arguments
    (``VmasTask``'s arguments of the same names)."""
    if scenario == "simple_spread":
        world, metric = _Spread(), "landmark_dist"
        kwargs = {"n_agents": n_agents, "obs_agents": observe_teammates}
    elif scenario == "simple_tag":
        world, metric = _Tag(), "catches"
        kwargs = {"num_adversaries": n_agents, "num_good_agents": n_prey,
                  "num_landmarks": n_obstacles, "observe_same_team": observe_teammates,
                  "shape_adversary_rew": shaped_reward, "adversaries_share_rew": True}
    else:
        world, metric = _Navigation(), "success"
        kwargs = {"n_agents": n_agents, "shared_rew": True,
                  "pos_shaping_factor": 1.0 if shaped_reward else 0.0}
    return world, metric, kwargs


class VmasTask(MultiAgentEnv):
    """A VMAS scenario with discrete actions behind the seqcomm key contract.

    Scenarios and their team metric (``("info", ...)``, read at episode end):

    * ``simple_spread``: ``n_agents`` agents cover ``n_agents`` landmarks (cooperative
      navigation); metric ``landmark_dist`` (mean landmark-to-nearest-agent distance).
      VMAS's reward subtracts each landmark's nearest-agent distance once per agent, so it
      is ``n_agents`` times MPE's distance term.
    * ``simple_tag``: ``n_agents`` learning predators chase ``n_prey`` scripted prey
      around ``n_obstacles`` obstacles; +10 per contact, minus 0.1 x the sum of each
      predator's distance to its nearest prey when ``shaped_reward`` (RGMComm App. E.1);
      metric ``catches`` (contacts summed over the episode).
    * ``navigation``: ``n_agents`` agents reach their own goals, sensing others by lidar;
      the episode terminates when all are on their goals; metric ``success``.

    Args:
        num_envs: number of parallel copies.
        seed: VMAS seed.
        device: torch device.
        scenario: one of ``simple_spread``, ``simple_tag``, ``navigation``.
        max_steps: steps per episode before truncation (also ``episode_limit``).
        n_agents: learning agents (predators in simple_tag).
        observe_teammates: agents observe the other learning agents' relative positions
            (simple_spread's ``obs_agents``, simple_tag's ``observe_same_team``; RGMComm's
            predators do not). Ignored by navigation.
        n_prey: scripted prey (simple_tag only).
        n_obstacles: obstacles (simple_tag only).
        shaped_reward: distance shaping (simple_tag predators, navigation's goal shaping).
    """

    def __init__(
        self,
        num_envs: int = 1,
        seed: int = 0,
        device: str = "cpu",
        scenario: Scenario = "simple_spread",
        max_steps: int = 25,
        n_agents: int = 3,
        observe_teammates: bool = True,
        n_prey: int = 1,
        n_obstacles: int = 2,
        shaped_reward: bool = True,
    ) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"vmas: unknown scenario {scenario!r}; use one of {SCENARIOS}")
        if num_envs < 1 or max_steps < 1 or n_agents < 1:
            raise ValueError("vmas: num_envs, max_steps and n_agents must all be >= 1, got "
                             f"{num_envs}, {max_steps}, {n_agents}")
        if scenario == "simple_tag" and (n_prey < 1 or n_obstacles < 0):
            raise ValueError(f"vmas: simple_tag needs n_prey >= 1 and n_obstacles >= 0, got "
                             f"n_prey={n_prey}, n_obstacles={n_obstacles}")
        world, metric, kwargs = scenario_setup(scenario, n_agents, observe_teammates, n_prey,
                                               n_obstacles, shaped_reward)
        sim = make_env(world, num_envs=num_envs, device=device, continuous_actions=False,
                       max_steps=None, seed=seed, **kwargs)
        self.n_agents, self.n_actions = sim.n_agents, sim.action_space[0].n
        self.obs_dim = sim.observation_space[0].shape[0]
        self.state_dim = self.n_agents * self.obs_dim
        self.episode_limit, self.metrics = max_steps, (metric,)
        super().__init__(num_envs, seed, device)
        self._env = sim  # after the base class's seeding: VMAS was seeded by make_env
        self._mask = torch.ones(num_envs, self.n_agents, self.n_actions, dtype=torch.bool,
                                device=self.device)
        self.scenario_name = scenario
        # where the prey's relative positions start in a predator's observation (simple_tag:
        # velocity, position, obstacles, then the other predators if observed, then prey)
        self._prey_at = 4 + 2 * n_obstacles + 2 * (n_agents - 1) * observe_teammates
        self._n_prey = n_prey

    @property
    def scenario(self):
        """The VMAS scenario object (its world, agents and metrics)."""
        return self._env.scenario

    def _set_seed(self, seed: int | None) -> None:
        super()._set_seed(seed)
        if getattr(self, "_env", None) is not None:
            self._env.seed(seed)

    def _reset_where(self, mask: torch.Tensor) -> None:
        if mask.all():
            self._env.reset(return_observations=False)
        else:  # VMAS 1.5 has no batched partial reset
            for i in mask.nonzero().flatten().tolist():
                self._env.reset_at(i, return_observations=False)

    def _team_view(self, obs: list[torch.Tensor], infos: list[dict], dones: torch.Tensor
                   ) -> TensorDictBase:
        """The contract keys from VMAS's per-agent lists (the state: all observations)."""
        obs = torch.stack(obs, dim=1)
        terminated = dones.reshape(self.num_envs, 1)
        truncated = (self._env.steps >= self.episode_limit).reshape(self.num_envs, 1)
        metric = self.metrics[0]
        return TensorDict({
            AGENTS: TensorDict({"observation": obs, "action_mask": self._mask.clone()},
                               batch_size=obs.shape[:2]),
            STATE: obs.flatten(-2),
            INFO: TensorDict({metric: infos[0][metric].to(torch.float32)},
                             batch_size=self.batch_size),
            "terminated": terminated, "truncated": truncated, "done": terminated | truncated,
        }, batch_size=self.batch_size)

    def _observe(self) -> TensorDictBase:
        obs, dones, infos = self._env.get_from_scenario(
            get_observations=True, get_rewards=False, get_infos=True, get_dones=True)
        td = self._team_view(obs, infos, dones)
        td["done"] = td["terminated"]  # as VMAS reports it at a reset
        return td

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs, rews, dones, infos = self._env.step(list(tensordict[ACTION].unbind(1)))
        td = self._team_view(obs, infos, dones)
        td["reward"] = torch.stack(rews, dim=1).mean(1, keepdim=True)
        return td

    def greedy_chase_policy(self, td: TensorDictBase) -> torch.Tensor:
        """simple_tag: every predator pushes toward its nearest prey (no coordination)."""
        obs = td[OBS]
        prey = obs[..., self._prey_at : self._prey_at + 2 * self._n_prey]
        prey = prey.unflatten(-1, (self._n_prey, 2))
        nearest = prey.norm(dim=-1).argmin(-1, keepdim=True)
        rel = prey.gather(-2, nearest[..., None].expand(*nearest.shape, 2)).squeeze(-2)
        # per axis VMAS maps 0 -> no force, 1 -> negative, 2 -> positive; action = 3 x + y
        axis = torch.where(rel.abs() < 0.02, 0, torch.where(rel < 0, 1, 2))
        return axis[..., 0] * 3 + axis[..., 1]

    def reference_policies(self) -> dict[str, Callable[[TensorDictBase], torch.Tensor]]:
        """Scripted policies: ``random`` everywhere, ``greedy_chase`` on simple_tag."""
        policies = {"random": random_policy}
        if self.scenario_name == "simple_tag":
            policies["greedy_chase"] = self.greedy_chase_policy
        return policies
