"""Run bookkeeping as Lightning callbacks (docs/method.md §7-8): the final summary, and a
checkpoint when ``fit`` is interrupted (SIGTERM, Ctrl-C)."""

from __future__ import annotations

import json
import os
import sys
import time

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException


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
