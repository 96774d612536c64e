"""Run bookkeeping as Lightning callbacks (docs/method.md §7-8), each installed by ``seqcomm
fit``: the collection statistics, the throughput clock, the random generators' seeding and
restore, the final summary, the periodic checkpoints (also one where ``max_steps`` stops a
run) and a checkpoint when ``fit`` is interrupted (SIGTERM, Ctrl-C)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from seqcomm.distributed import gather_objects, own_entry
from seqcomm.envs.base import metric_name


def _log_due(trainer: L.Trainer) -> bool:
    """Whether this update logs: every ``trainer.log_every_n_steps`` updates, as the learner's
    losses (the loggers write no more often than that)."""
    return trainer.global_step % trainer.log_every_n_steps == 0


class CollectionStatistics(L.Callback):
    """The training episodes' mean return and task metrics of the latest collection that ended
    an episode (``train/return``, ``train/<metric>``; ``EpisodeData.last_episodes``) and the
    exploration rate ``train/epsilon``, every ``trainer.log_every_n_steps`` updates."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if not _log_due(trainer):
            return
        for key, value in trainer.datamodule.last_episodes.items():
            pl_module.log(f"train/{metric_name(key)}", value, prog_bar=key == "return",
                          batch_size=1)
        pl_module.log("train/epsilon", pl_module.policy.epsilon, batch_size=1)


class Throughput(L.Callback):
    """Every ``trainer.log_every_n_steps`` updates: the env steps this rank has collected
    (``perf/env_steps``) and, since the previous such update of this ``fit``, env steps and
    updates per wall-clock second (``perf/env_steps_per_s``, ``perf/updates_per_s``; not at a
    run's first logging update, a resumed run's included). At each evaluation, the seconds
    since this ``fit``'s training started, evaluations included (``eval/wall_seconds``: the
    wall time to a target, ``benchmarks/time_to_target.py``).

    Args:
        clock: seconds of a monotonic clock (``time.perf_counter``; tests pass a fake one).
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.last: tuple[float, int, int] | None = None  # (time, env steps, updates)
        self.start: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.last, self.start = None, self.clock()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.start is not None:
            pl_module.log("eval/wall_seconds", self.clock() - self.start, batch_size=1)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if not _log_due(trainer):
            return
        frames, step = trainer.datamodule.frames, trainer.global_step
        pl_module.log("perf/env_steps", float(frames), prog_bar=True, batch_size=1)
        now = self.clock()
        if self.last is not None and now > self.last[0]:
            dt = now - self.last[0]
            pl_module.log("perf/env_steps_per_s", (frames - self.last[1]) / dt, batch_size=1)
            pl_module.log("perf/updates_per_s", (step - self.last[2]) / dt, batch_size=1)
        self.last = (now, frames, step)


class RandomGenerators(L.Callback):
    """The run's random generators, so that a seed fixes a run and a resumed one draws what an
    uninterrupted one would (docs/method.md §7). At setup, the exploration policy's generator
    is seeded from the run's seed (offset by the DDP rank); checkpoints hold its state on every
    rank (this callback's ``state_dict``: ``policy_rngs``, one entry per rank). When training
    starts, a checkpoint's generators are put back, each rank its own: the data module's
    (``EpisodeData.restore_generators``: environments, replay sampling, torch's global one)
    and the policy's."""

    def __init__(self) -> None:
        self.policy: torch.nn.Module | None = None  # the module's, from setup
        self.saved: torch.Tensor | None = None  # a checkpoint's policy generator state

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.policy = pl_module.policy
        self.policy.generator.manual_seed(torch.initial_seed() + 7919 * trainer.global_rank)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the collector's construction, which runs the policy (and its generator) once
        trainer.datamodule.restore_generators()
        if self.saved is not None:
            pl_module.policy.generator.set_state(self.saved)
            self.saved = None

    def state_dict(self) -> dict[str, Any]:
        # every rank's (a collective: Lightning builds the checkpoint on every rank)
        if self.policy is None:
            return {}
        return {"policy_rngs": gather_objects(self.policy.generator.get_state())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # older checkpoints hold one state (``policy_rng``), rank 0's
        self.saved = own_entry(state_dict.get("policy_rngs") or [state_dict["policy_rng"]])

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # checkpoints written before this callback hold the policy's state at the top level
        # (load_state_dict, called after this, reads newer ones)
        if "policy_rng" in checkpoint:
            self.saved = own_entry([checkpoint["policy_rng"]])


class RunSummary(L.Callback):
    """At the end of ``fit``, a final greedy evaluation written to ``<run dir>/summary.json``
    (mean return and every task metric, env steps, wall seconds, seed), on rank 0 only.

    Args:
        eval_episodes: episodes of the final evaluation (default: data.eval_episodes).
    """

    def __init__(self, eval_episodes: int | None = None) -> None:
        self.eval_episodes = eval_episodes
        self.start = time.perf_counter()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run_dir = trainer.log_dir or trainer.default_root_dir  # a collective: every rank
        if not trainer.is_global_zero:
            return
        data = trainer.datamodule
        episodes = self.eval_episodes or data.eval_episodes
        result = pl_module.evaluate(episodes)
        summary = {
            "eval": result,
            "episodes": episodes,
            "env_steps": data.frames * trainer.world_size,
            "updates": trainer.global_step,
            "wall_seconds": round(time.perf_counter() - self.start, 2),
            "seed": torch.initial_seed(),
            "world_size": trainer.world_size,
        }
        path = os.path.join(run_dir, "summary.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(summary, f, indent=2)
        print(f"seqcomm: summary {json.dumps(result)} -> {path}")


class SaveOnInterrupt(L.Callback):
    """On SIGTERM or Ctrl-C during ``fit``, save ``<run dir>/checkpoints/last.ckpt`` at that
    update, so ``--ckpt_path last`` continues from it. (Lightning raises on SIGTERM only
    between updates; a Ctrl-C may land inside one, and that update is saved as it stands.)"""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return  # a failed run (e.g. a non-finite loss) keeps its last good checkpoint
        ckpt = trainer.checkpoint_callback
        if trainer.state.fn != "fit" or ckpt is None or getattr(ckpt, "dirpath", None) is None:
            return
        path = os.path.join(ckpt.dirpath, "last.ckpt")
        trainer.save_checkpoint(path, weights_only=False)  # full state: resumable
        if trainer.is_global_zero:
            what = "SIGTERM" if isinstance(exception, SIGTERMException) else "Ctrl-C"
            print(f"seqcomm: {what} at update {trainer.global_step}: saved {path}; continue "
                  "with --ckpt_path last", file=sys.stderr, flush=True)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` that also saves ``last.ckpt`` at the update where
    ``--trainer.max_steps`` or the frame budget stops training, so ``--ckpt_path last`` goes
    on from there and ``last.ckpt`` holds the policy ``summary.json`` scores (with periodic
    checkpoints alone it held the last multiple of ``every_n_train_steps``).

    A run is one Lightning epoch over ``EpisodeData.batches``. Without this, a run stopped by
    ``max_steps`` before any periodic checkpoint gets its ``last.ckpt`` from Lightning's
    ``on_train_end``, after the fit loop has counted that epoch finished: resuming it, fit
    stops at once (``max_epochs=1`` reached) although frames of the budget remain. Saved at
    the batch's end, as the periodic ones are, the checkpoint is mid-epoch and resumes.
    (It calls ``ModelCheckpoint``'s own save path, underscore methods included, so that its
    ``on_train_end`` sees the step saved and does not overwrite the file.)
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        stops = (0 <= trainer.max_steps <= trainer.global_step
                 or getattr(trainer.datamodule, "exhausted", False))
        if stops and self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
