"""Data-parallel training (docs/method.md §7): ``seqcomm fit`` with DDP on 2 CPU processes
(gloo). Each rank collects from its own environment seeds, the ranks take the same number
of optimiser steps on all-reduced gradients, and rank 0 alone writes the summary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
from conftest import MATRIX_CONF, matrix_frames, read_summary

from seqcomm.envs.base import OBS

HERE = Path(__file__).resolve().parent


class RankProbe(L.Callback):
    """Test helper run inside the DDP processes: at the end, writes what this rank did to
    ``<default_root_dir>/rank<k>.json``."""

    def on_fit_end(self, trainer, pl_module) -> None:
        data = trainer.datamodule
        stored = data.buffer[: len(data.buffer)]
        report = {
            "rank": trainer.global_rank,
            "global_step": trainer.global_step,
            "optimizer_steps": int(max(s["step"] for s in
                                       pl_module.optimizers().optimizer.state.values())),
            "env_seed": data.seed(),
            "frames": data.frames,
            # which observation each agent got, in the first 100 stored steps
            "observed": (stored[OBS] * torch.arange(stored[OBS].shape[-1])).sum(-1)[:100]
            .flatten().tolist(),
            "params": [p.detach().double().sum().item() for p in pl_module.net.parameters()],
            "target": [p.detach().double().sum().item() for p in pl_module.target.parameters()],
        }
        path = Path(trainer.default_root_dir) / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(report))


def test_ddp_two_cpu_processes(tmp_path):
    updates = 60
    exe = shutil.which("seqcomm") or os.path.join(os.path.dirname(sys.executable), "seqcomm")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.run(
        [exe, "fit", "--config", str(MATRIX_CONF), "--wandb", "false",
         "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
         "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
         f"--data.total_frames={matrix_frames(updates)}", "--trainer.val_check_interval=25",
         "--trainer.callbacks+=test_ddp.RankProbe"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:  # the same number of optimiser steps on every rank
        assert r["global_step"] == r["optimizer_steps"] == updates
        assert r["frames"] == matrix_frames(updates)
    assert ranks[0]["env_seed"] != ranks[1]["env_seed"]  # EpisodeData.seed offsets by rank
    assert ranks[0]["observed"] != ranks[1]["observed"]  # so the ranks saw other episodes
    # ... yet hold the same parameters: the gradients were averaged across the ranks
    torch.testing.assert_close(ranks[0]["params"], ranks[1]["params"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ranks[0]["target"], ranks[1]["target"], rtol=1e-5, atol=1e-6)

    runs = list(tmp_path.glob("matrix/version_*"))
    assert [p.name for p in runs] == ["version_0"]  # one run directory, from rank 0
    summary = read_summary(runs[0])
    assert summary["world_size"] == 2 and summary["updates"] == updates
    assert summary["env_steps"] == 2 * matrix_frames(updates)
    assert proc.stdout.count("seqcomm: summary") == 1  # written once
