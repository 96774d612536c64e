"""VMAS tasks through ``torchrl.envs.VmasEnv`` with discrete actions (docs/method.md §6.6).

``VmasTask`` is a ``TransformedEnv`` over ``VmasEnv`` whose transforms turn VMAS's group
keys into the seqcomm key contract (``seqcomm.envs.base``):

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
Resetting only some copies (navigation, whose episodes end early) goes through
``VmasEnv``, which calls VMAS's one-copy ``reset_at`` in a Python loop: VMAS 1.5 offers no
batched partial reset. simple_spread and simple_tag only end by truncation, all copies at
once, and reset in one batched call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch
from tensordict import TensorDictBase
from torchrl.data import Binary, Composite, Unbounded
from torchrl.envs import Transform, TransformedEnv, VmasEnv
from torchrl.envs.utils import MarlGroupMapType
from vmas.scenarios import navigation
from vmas.scenarios.mpe import simple_spread, simple_tag

from seqcomm.envs.base import AGENTS, INFO, MASK, OBS, STATE, ConfigurableEnv
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


class TeamView(Transform):
    """Adds the contract keys (state, action mask, team reward, truncated, info) to VmasEnv.

    TorchRL has no transform for an agent-to-team reduction or an all-true action mask,
    hence this one small transform. The group's reward and info are moved to the root
    (not copied), so only the contract keys remain.

    Args:
        max_steps: steps after which an episode is truncated.
        n_actions: discrete actions per agent (size of the action mask).
        metrics: names of the scenario's team metrics in ``("agents", "info")``.
    """

    def __init__(self, max_steps: int, n_actions: int, metrics: tuple[str, ...]) -> None:
        super().__init__()
        self.max_steps = max_steps
        self.n_actions = n_actions
        self.metrics = metrics

    def _contract(self, td: TensorDictBase) -> TensorDictBase:
        obs = td[OBS]
        td[STATE] = obs.flatten(-2)
        td[MASK] = torch.ones(*obs.shape[:-1], self.n_actions, dtype=torch.bool,
                              device=obs.device)
        group_info = td[AGENTS].pop("info")
        for m in self.metrics:
            td[INFO, m] = group_info[m][..., 0, 0]  # the same team value for all agents
        return td

    def _truncated(self, shape: torch.Size) -> torch.Tensor:
        # VMAS's own per-copy step counter, reset with the copy, reached through the
        # wrapper's attribute forwarding (VMAS runs without max_steps, so done = terminated).
        if getattr(self, "_sim", None) is None:  # attribute forwarding costs ~0.1 ms a call
            self._sim = self.parent.base_env._env
        steps = self._sim.steps  # read each time: VMAS reassigns it on a full reset
        return (steps >= self.max_steps).reshape(shape)

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase
               ) -> TensorDictBase:
        done = tensordict_reset["done"]
        tensordict_reset["truncated"] = self._truncated(done.shape)
        return self._contract(tensordict_reset)

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase
              ) -> TensorDictBase:
        next_tensordict["reward"] = next_tensordict[AGENTS].pop("reward").mean(-2)
        truncated = self._truncated(next_tensordict["done"].shape)
        next_tensordict["truncated"] = truncated
        next_tensordict["done"] = next_tensordict["done"] | truncated
        return self._contract(next_tensordict)

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        agents = observation_spec[AGENTS]
        E, n, obs_dim = agents["observation"].shape
        dev = agents["observation"].device
        del agents["info"]
        A = self.n_actions
        agents["action_mask"] = Binary(n=A, shape=(E, n, A), dtype=torch.bool, device=dev)
        observation_spec[STATE] = Unbounded((E, n * obs_dim), device=dev)
        observation_spec[INFO] = Composite(
            {m: Unbounded((E,), device=dev) for m in self.metrics}, shape=(E,))
        return observation_spec

    def transform_reward_spec(self, reward_spec: Composite) -> Composite:
        E = reward_spec.shape[0]
        return Composite(reward=Unbounded((E, 1), device=reward_spec[AGENTS, "reward"].device),
                         shape=(E,))

    def transform_done_spec(self, done_spec: Composite) -> Composite:
        done_spec["truncated"] = done_spec["done"].clone()
        return done_spec


class VmasTask(ConfigurableEnv, TransformedEnv):
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
        base = VmasEnv(world, num_envs=num_envs, continuous_actions=False,
                       categorical_actions=True, max_steps=None, seed=seed, device=device,
                       group_map=MarlGroupMapType.ALL_IN_ONE_GROUP, **kwargs)
        n_actions = base.full_action_spec[AGENTS, "action"].n
        super().__init__(base, TeamView(max_steps, n_actions, (metric,)))
        self.scenario_name = scenario
        self.episode_limit = max_steps
        # where the prey's relative positions start in a predator's observation (simple_tag:
        # velocity, position, obstacles, then the other predators if observed, then prey)
        self._prey_at = 4 + 2 * n_obstacles + 2 * (n_agents - 1) * observe_teammates
        self._n_prey = n_prey

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
