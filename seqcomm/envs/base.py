"""Shared contract of every seqcomm task (docs/method.md §6).

Every built-in environment is a batched ``EnvBase`` of ``num_envs`` copies with the keys
below; ``env_info`` reads the sizes the model needs from the specs alone, so wrapped
third-party environments (VMAS, SMACv2) only have to produce the same keys.

=========================== =========================== ==========================
key                         shape                       dtype
=========================== =========================== ==========================
("agents", "observation")   [E, n_agents, obs_dim]      float32
("agents", "action_mask")   [E, n_agents, n_actions]    bool
"state"                     [E, state_dim]              float32
("info", <metric>)          [E]                         float32, read at episode end
("agents", "action")        [E, n_agents]               int64 (categorical)
"reward"                    [E, 1]                      float32 (shared team reward)
"done", "terminated",       [E, 1]                      bool
"truncated"
=========================== =========================== ==========================
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tensordict import TensorDictBase
from torchrl.data import Binary, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

AGENTS = "agents"
OBS = (AGENTS, "observation")
MASK = (AGENTS, "action_mask")
ACTION = (AGENTS, "action")
STATE = "state"
INFO = "info"


def metric_name(key: str) -> str:
    """An ``info`` key's logged name (docs/method.md §8): ``won`` is logged as ``win_rate``."""
    return {"won": "win_rate"}.get(key, key)


@dataclass
class EnvInfo:
    """Sizes a model needs, read from an environment's specs (never typed in a config)."""

    n_agents: int
    obs_dim: int
    state_dim: int
    n_actions: int
    episode_limit: int
    metrics: tuple[str, ...] = field(default_factory=tuple)


def env_info(env: EnvBase) -> EnvInfo:
    """Read an ``EnvInfo`` from any environment that follows this module's key contract."""
    obs = env.observation_spec[OBS].shape
    metrics = ()
    if INFO in env.observation_spec.keys():
        metrics = tuple(sorted(env.observation_spec[INFO].keys()))
    return EnvInfo(
        n_agents=int(obs[-2]),
        obs_dim=int(obs[-1]),
        state_dim=int(env.observation_spec[STATE].shape[-1]),
        n_actions=int(env.full_action_spec[ACTION].n),
        episode_limit=int(env.episode_limit),
        metrics=metrics,
    )


class ConfigurableEnv:
    """Mixin that lets LightningCLI / jsonargparse read a TorchRL env's ``__init__`` signature.

    ``EnvBase.__new__`` is re-bound per class, which makes jsonargparse document ``__new__``'s
    private arguments instead of ``__init__``'s; a plain ``__new__`` defined once here is the
    same object in every subclass, so ``__init__`` is used. Put it first in the bases.
    """

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls, *args, **kwargs)


class MultiAgentEnv(ConfigurableEnv, EnvBase):
    """Base class of the pure-torch batched tasks: specs, seeding and reset plumbing.

    Subclasses set ``n_agents``, ``obs_dim``, ``state_dim``, ``n_actions``,
    ``episode_limit`` and ``metrics`` before calling ``super().__init__``, and implement
    ``_reset_where(mask)`` (re-initialise the copies where ``mask`` is true) and
    ``_step``. Randomness comes only from ``self.rng`` so a seed fixes everything.

    Args:
        num_envs: number of parallel copies (the batch size).
        seed: seed of the copies' random generator.
        device: torch device the copies live on.
    """

    n_agents: int
    obs_dim: int
    state_dim: int
    n_actions: int
    episode_limit: int
    metrics: tuple[str, ...] = ()

    def __init__(self, num_envs: int = 1, seed: int = 0, device: str = "cpu") -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        super().__init__(device=torch.device(device), batch_size=torch.Size([num_envs]))
        self.num_envs = num_envs
        self._make_specs()
        self.rng = torch.Generator(device=self.device)
        self.set_seed(seed)

    def _make_specs(self) -> None:
        E, n, dev = self.num_envs, self.n_agents, self.device
        obs = {
            AGENTS: Composite(
                observation=Unbounded((E, n, self.obs_dim), device=dev),
                action_mask=Binary(n=self.n_actions, shape=(E, n, self.n_actions),
                                   dtype=torch.bool, device=dev),
                shape=(E, n),
            ),
            STATE: Unbounded((E, self.state_dim), device=dev),
        }
        if self.metrics:
            obs[INFO] = Composite({m: Unbounded((E,), device=dev) for m in self.metrics},
                                  shape=(E,))
        self.observation_spec = Composite(obs, shape=(E,))
        self.action_spec = Composite(
            {AGENTS: Composite(action=Categorical(self.n_actions, shape=(E, n), device=dev),
                               shape=(E, n))},
            shape=(E,),
        )
        self.reward_spec = Unbounded((E, 1), device=dev)
        flag = Categorical(2, shape=(E, 1), dtype=torch.bool, device=dev)
        self.done_spec = Composite(done=flag, terminated=flag.clone(), truncated=flag.clone(),
                                   shape=(E,))

    def _set_seed(self, seed: int | None) -> None:
        self.rng.manual_seed(int(seed) if seed is not None else 0)

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) numbers from the copies' generator."""
        return torch.rand(*shape, generator=self.rng, device=self.device)

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        """Integers in [0, high) from the copies' generator."""
        return torch.randint(high, shape, generator=self.rng, device=self.device)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        mask = None
        if tensordict is not None and "_reset" in tensordict.keys():
            mask = tensordict["_reset"].reshape(self.num_envs)
        if mask is None:
            mask = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        self._reset_where(mask)
        return self._observe()

    def _reset_where(self, mask: torch.Tensor) -> None:
        raise NotImplementedError

    def _observe(self) -> TensorDictBase:
        """The observation TensorDict (observation, action_mask, state, info) of all copies."""
        raise NotImplementedError
