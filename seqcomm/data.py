"""Collection and replay (docs/method.md §7): a ``ChunkCollector`` feeds a TorchRL replay
buffer of episode chunks, and an ``IterableDataset`` hands sampled TensorDict batches to
Lightning.

Each collection resets every copy (``reset_at_each_iter``) and gathers ``episode_limit`` steps
per copy, so every stored chunk starts at an episode start and holds a whole first episode
(later episodes in the chunk start at ``is_init`` and are cut at the chunk's end, where the
learner still bootstraps from the stored next observation). Resetting at chunk boundaries also
means the whole environment state between collections is just its random generator, which is
what makes checkpoints resume exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from tensordict import TensorDictBase
from torch.utils.data import DataLoader, IterableDataset
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.data.replay_buffers import RandomSampler
from torchrl.envs import Compose, EnvBase, InitTracker, RewardSum, TensorDictPrimer, TransformedEnv

from seqcomm.collector import ChunkCollector
from seqcomm.distributed import gather_objects, own_entry
from seqcomm.envs.base import INFO, EnvInfo, env_info
from seqcomm.policy import HIDDEN, PREV_ACTION

#: An environment class configured by class_path; seqcomm supplies (num_envs, seed, device).
EnvFactory = Callable[[int, int, str], EnvBase]


class _Batches(IterableDataset):
    """Endless (until the frame budget) stream of replay samples; see ``EpisodeData.batches``."""

    def __init__(self, source: EpisodeData) -> None:
        self.source = source

    def __iter__(self) -> Iterator[TensorDictBase]:
        return self.source.batches()


class EpisodeData(L.LightningDataModule):
    """Environments, collector and replay buffer of one run.

    Args:
        env: the task, e.g. ``class_path: seqcomm.envs.MatrixGame`` plus its ``init_args``.
        eval_env: the evaluation task when it differs from ``env`` (e.g. an exhaustive
            enumeration of a one-step game); same class_path form.
        num_envs: parallel environment copies used for collection (per DDP rank).
        total_frames: environment-step budget of the run (per rank).
        buffer_size: replay capacity in episode chunks (PyMARL: 5000 episodes).
        batch_size: episode chunks per update (PyMARL: 32).
        updates_per_collect: optimiser updates after each collection.
        warmup_chunks: chunks collected before the first update.
        eval_envs: parallel copies used for greedy evaluation.
        eval_episodes: episodes per evaluation.
        device: device of the environments and of the collected data; ``"auto"``: the
            trainer's (``cuda`` under ``--trainer.accelerator=gpu``, else ``cpu``).
    """

    def __init__(
        self,
        env: EnvFactory,
        eval_env: EnvFactory | None = None,
        num_envs: int = 8,
        total_frames: int = 100_000,
        buffer_size: int = 5000,
        batch_size: int = 32,
        updates_per_collect: int = 1,
        warmup_chunks: int = 32,
        eval_envs: int = 32,
        eval_episodes: int = 64,
        device: str = "auto",
    ) -> None:
        super().__init__()
        for name in ("num_envs", "total_frames", "buffer_size", "batch_size",
                     "updates_per_collect", "eval_envs", "eval_episodes"):
            if locals()[name] < 1:
                raise ValueError(f"data.{name} must be >= 1, got {locals()[name]}")
        if batch_size > buffer_size:
            raise ValueError(f"data.batch_size ({batch_size}) exceeds data.buffer_size "
                             f"({buffer_size}); lower the batch or raise the buffer")
        self.make_env = env
        self.make_eval_env = eval_env or env
        self.num_envs, self.total_frames, self.device = num_envs, total_frames, device
        self.batch_size, self.updates_per_collect = batch_size, updates_per_collect
        self.warmup_chunks = max(warmup_chunks, batch_size)
        self.eval_envs, self.eval_episodes = eval_envs, eval_episodes
        self.info: EnvInfo = env_info(env(1, 0, "cpu"))
        if eval_env is not None and env_info(eval_env(1, 0, "cpu")) != self.info:
            raise ValueError("data.eval_env must have the same agents, observation, state and "
                             "action sizes as data.env")
        # replay sampling draws from its own generator (saved in the buffer's state_dict), so
        # other users of torch's global one cannot shift which chunks are sampled
        self.buffer_size = buffer_size
        self.buffer = self.make_buffer("cpu" if device == "auto" else device)
        self.frames = 0  # env steps collected by this rank
        self.pending = 0  # updates still owed to the last collection
        self.last_episodes: dict[str, float] = {}
        self.env = self.eval_env = self.collector = None

    # -- environments -------------------------------------------------------------------
    def seed(self) -> int:
        """Environment seed: the run's seed, offset by the DDP rank."""
        rank = self.trainer.global_rank if self.trainer is not None else 0
        return (torch.initial_seed() + 100_003 * rank) % 2**31

    def wrap(self, env: EnvBase, policy) -> TransformedEnv:
        """Episode-start flags, episode returns and the policy's recurrent state."""
        primer = TensorDictPrimer(policy.primer_spec(env.batch_size[0], env.device),
                                  expand_specs=False)
        transforms = Compose(InitTracker(), RewardSum(), primer)
        if isinstance(env, TransformedEnv):  # one transform stack, not two nested envs
            env.append_transform(transforms)
            return env
        return TransformedEnv(env, transforms)

    def make_buffer(self, device: str) -> ReplayBuffer:
        """An empty replay buffer of episode chunks stored on ``device``; its sampling
        generator (``sample_rng``) lives there too."""
        self.sample_rng = torch.Generator(device=device)
        return ReplayBuffer(storage=LazyTensorStorage(self.buffer_size, device=device),
                            sampler=RandomSampler(), batch_size=self.batch_size,
                            generator=self.sample_rng)

    def env_device(self) -> str:
        """Where the environments run: ``device``, or the trainer's under ``"auto"``."""
        if self.device != "auto":
            return self.device
        return str(self.trainer.strategy.root_device) if self.trainer is not None else "cpu"

    def setup(self, stage: str) -> None:
        policy = self.trainer.lightning_module.policy
        if self.env is None and stage == "fit":  # collection wraps nothing (ChunkCollector)
            # "auto" resolved to an accelerator: rebuilt here, not TorchRL's device="auto"
            # storage, which cannot sample after a checkpoint restores it before any write
            if len(self.buffer) == 0 and self.buffer.storage.device != torch.device(
                    self.env_device()):
                self.buffer = self.make_buffer(self.env_device())
            self.env = self.make_env(self.num_envs, self.seed(), self.env_device())
            self.sample_rng.manual_seed(self.seed() + 2_000_003)
        if self.eval_env is None:
            raw = self.make_eval_env(self.eval_envs, self.seed() + 1_000_003, self.env_device())
            self.eval_env = self.wrap(raw, policy)

    # -- collection and replay ---------------------------------------------------------
    def collect(self) -> None:
        """One collection: every copy plays ``episode_limit`` steps with the current policy."""
        policy = self.trainer.lightning_module.policy
        self.start_collector()
        policy.frames.fill_(self.frames)
        data = next(self.collector)
        self.frames += data.numel()
        done = data["next", "done"].squeeze(-1)
        episodes = {"return": data["next", "episode_reward"].squeeze(-1)[done]}
        if INFO in data["next"].keys():
            episodes.update({k: v[done] for k, v in data["next", INFO].items()})
        if done.any():
            self.last_episodes = {k: v.float().mean().item() for k, v in episodes.items()}
        self.buffer.extend(data.exclude(HIDDEN, ("next", HIDDEN), PREV_ACTION,
                                        ("next", PREV_ACTION)))

    def start_collector(self) -> None:
        """Build the collector once (its construction resets, i.e. draws from, the envs)."""
        if self.collector is None:
            self.collector = ChunkCollector(self.env, self.trainer.lightning_module.policy,
                                            self.info.episode_limit)

    def batches(self) -> Iterator[TensorDictBase]:
        """Collect, then yield ``updates_per_collect`` samples; stop at the frame budget."""
        while self.pending > 0 or self.frames < self.total_frames:
            if self.pending == 0:
                self.collect()
                if len(self.buffer) < self.warmup_chunks:
                    continue
                self.pending = self.updates_per_collect
            self.pending -= 1
            yield self.buffer.sample()

    @property
    def exhausted(self) -> bool:
        """The frame budget is collected and every update it owes has been yielded."""
        return self.pending == 0 and self.frames >= self.total_frames

    def train_dataloader(self) -> DataLoader:
        # Workers would each spawn a collector (torchrl sets the spawn start method), and the
        # default collate breaks TensorDicts: batch_size=None with an identity collate.
        return DataLoader(_Batches(self), batch_size=None, num_workers=0,
                          collate_fn=lambda td: td)

    def val_dataloader(self) -> DataLoader:
        return DataLoader([0], batch_size=None)

    test_dataloader = val_dataloader

    # -- checkpointing ------------------------------------------------------------------
    def _generators(self) -> list[torch.Generator | None]:
        """The environments' own generators (None for tasks that draw from torch's global one)."""
        return [getattr(getattr(e, "base_env", e), "rng", None) for e in (self.env, self.eval_env)]

    def generator_states(self) -> dict[str, Any]:
        """This rank's random generator states: the environments', replay sampling's and
        torch's global one."""
        return {"env_rngs": [g.get_state() if g is not None else None
                             for g in self._generators()],
                "sample_rng": self.sample_rng.get_state(), "torch_rng": torch.get_rng_state()}

    def state_dict(self) -> dict:
        # ``rngs``: every rank's generator states (a collective; rank 0 writes the checkpoint)
        return {"frames": self.frames, "pending": self.pending, "buffer": self.buffer.state_dict(),
                "rngs": gather_objects(self.generator_states()),
                "last_episodes": self.last_episodes}

    def load_state_dict(self, state: dict) -> None:
        self.frames, self.pending = state["frames"], state["pending"]
        self.last_episodes = state["last_episodes"]
        self.buffer.load_state_dict(state["buffer"])
        if state["buffer"].get("_rng") is not None:  # loaded into a new generator: keep ours
            self.sample_rng.set_state(state["buffer"]["_rng"][0])
            self.buffer.set_rng(self.sample_rng)
        # older checkpoints hold one rank's env_rngs and torch_rng at the top level; the
        # mismatch warning comes from RandomGenerators, which reads the same checkpoint
        self._restored = own_entry(state["rngs"], warn=False) if "rngs" in state else state

    def restore_generators(self) -> None:
        """Put back the random generators of a checkpoint (after Lightning's own seeding and
        after the collector's construction, so a resumed run draws what an uninterrupted one
        would); ``seqcomm.callbacks.RandomGenerators`` calls it when training starts."""
        self.start_collector()
        state = getattr(self, "_restored", None)
        if state is None:
            return
        for gen, saved in zip(self._generators(), state["env_rngs"], strict=True):
            if gen is not None and saved is not None:
                gen.set_state(saved)
        if "sample_rng" in state:  # older checkpoints: the buffer's state put back rank 0's
            self.sample_rng.set_state(state["sample_rng"])
        torch.set_rng_state(state["torch_rng"])
        self._restored = None
