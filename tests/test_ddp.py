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
import pytest
import torch
from conftest import MATRIX_CONF, matrix_frames, read_summary

from seqcomm.envs.base import OBS

HERE = Path(__file__).resolve().parent
UPDATES = 60
#: ``seqcomm fit`` arguments of the plain (QMIX) DDP run the fixture makes and a test resumes
DDP_ARGS = ["--config", str(MATRIX_CONF), "--wandb", "false", "--trainer.enable_progress_bar",
            "false", "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
            f"--data.total_frames={matrix_frames(UPDATES)}", "--trainer.val_check_interval=25"]


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


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One ``seqcomm fit`` (the console script) of conf/matrix.yaml on 2 CPU processes with
    ``RankProbe`` and ``RngProbe``: ``(its root directory, the finished process)``."""
    root = tmp_path_factory.mktemp("ddp")
    exe = shutil.which("seqcomm") or os.path.join(os.path.dirname(sys.executable), "seqcomm")
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=os.pathsep.join(
        [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.run(
        [exe, "fit", *DDP_ARGS, "--trainer.default_root_dir", str(root),
         "--trainer.callbacks+=test_ddp.RankProbe", "--trainer.callbacks+=test_ddp.RngProbe"],
        capture_output=True, text=True, timeout=300, cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc


def test_ddp_two_cpu_processes(ddp_run):
    root, proc = ddp_run
    ranks = [json.loads((root / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:  # the same number of optimiser steps on every rank
        assert r["global_step"] == r["optimizer_steps"] == UPDATES
        assert r["frames"] == matrix_frames(UPDATES)
    assert ranks[0]["env_seed"] != ranks[1]["env_seed"]  # EpisodeData.seed offsets by rank
    assert ranks[0]["observed"] != ranks[1]["observed"]  # so the ranks saw other episodes
    # ... yet hold the same parameters: the gradients were averaged across the ranks
    torch.testing.assert_close(ranks[0]["params"], ranks[1]["params"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ranks[0]["target"], ranks[1]["target"], rtol=1e-5, atol=1e-6)

    runs = list(root.glob("matrix/version_*"))
    assert [p.name for p in runs] == ["version_0"]  # one run directory, from rank 0
    summary = read_summary(runs[0])
    assert summary["world_size"] == 2 and summary["updates"] == UPDATES
    assert summary["env_steps"] == 2 * matrix_frames(UPDATES)
    assert proc.stdout.count("seqcomm: summary") == 1  # written once


class StateProbe(L.Callback):
    """Test helper run inside the DDP processes: saves this rank's whole module state (world
    model, critic, its running statistics and the target networks included) at the start and
    the end to ``<default_root_dir>/state<k>.pt``."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_fit_end(self, trainer, pl_module) -> None:
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        torch.save({"state": state, "start": self.start, "global_step": trainer.global_step},
                   Path(trainer.default_root_dir) / f"state{trainer.global_rank}.pt")


def fit_ddp_states(tmp_path: Path, method: str, updates: int, *args: str,
                   strategy: str = "ddp") -> list[dict]:
    """``seqcomm fit`` of conf/matrix.yaml + ``conf/methods/<method>.yaml`` on 2 CPU processes
    with ``StateProbe``; asserts it succeeded and returns the ranks' saved states."""
    env = dict(os.environ, WANDB_MODE="offline",
               PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent)]))
    proc = subprocess.run(
        [sys.executable, "-m", "seqcomm.cli", "fit", "--config", str(MATRIX_CONF),
         "--config", str(HERE.parent / "conf" / "methods" / f"{method}.yaml"), *args,
         "--wandb", "false", "--trainer.enable_progress_bar", "false",
         "--trainer.default_root_dir", str(tmp_path), f"--trainer.strategy={strategy}",
         "--trainer.devices=2", "--trainer.accelerator=cpu",
         f"--data.total_frames={matrix_frames(updates)}",
         f"--trainer.val_check_interval={updates}", "--trainer.callbacks+=test_ddp.StateProbe"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"state{r}.pt") for r in (0, 1)]
    assert [r["global_step"] for r in ranks] == [updates, updates]
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
    return ranks


def assert_same_state(ranks: list[dict]) -> None:
    for key, value in ranks[0]["state"].items():
        torch.testing.assert_close(value, ranks[1]["state"][key], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, key=key: f"{key} differs across ranks: {m}")


def moved(ranks: list[dict], prefix: str) -> list[str]:
    """Rank 0's entries under ``prefix`` that training changed."""
    return [k for k, v in ranks[0]["state"].items()
            if k.startswith(prefix) and not torch.equal(v, ranks[0]["start"][k])]


def test_ddp_seqcomm_dfl_ranks_keep_the_same_parameters(tmp_path):
    """SeqCommDFL sets ``p.grad`` from ``torch.autograd.grad`` (the w step and the world
    model's implicit hypergradient), which DDP does not all-reduce: ``average_gradients``
    does (and ``average_across_ranks`` the critic's running statistics), so the ranks, each
    on its own episodes, still hold the same parameters and buffers."""
    ranks = fit_ddp_states(tmp_path, "seqcomm_dfl", 8,
                           "--model.init_args.world_model_gradient=implicit")
    assert moved(ranks, "world_model."), "the world model did not train"
    assert moved(ranks, "critic.target_mean")
    assert_same_state(ranks)


@pytest.mark.slow  # ~33 s; DDP training, resume and SeqComm-DFL stay in the default suite
def test_ddp_rgmcomm_ranks_keep_the_same_labels(tmp_path):
    """RGMComm clusters each rank's own replay sample (plain ``backward`` on the label heads,
    outside DDP): the ranks take rank 0's heads, and the label map (written by rank 0 after a
    collective ``log_dir``) ends the run cleanly. Its TD and critic backward passes leave
    parameters unused: plain ``ddp`` works because ``seqcomm fit`` then finds them."""
    ranks = fit_ddp_states(tmp_path, "rgmcomm", 8, "--model.init_args.cluster_every=4")
    assert moved(ranks, "net.comm.label_head."), "the label heads did not train"
    assert_same_state(ranks)
    assert (tmp_path / "matrix" / "version_0" / "labels.json").is_file()


def _average_on_rank(rank: int, init_file: str, out_dir: str) -> None:
    """One gloo rank of ``test_average_gradients_across_two_processes``."""
    import torch.distributed as dist

    from seqcomm.distributed import average_gradients

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        params = [torch.zeros(2, 3), torch.zeros(4), torch.zeros(())]
        grads = [torch.full((2, 3), float(rank + 1)),  # 1 and 2
                 None if rank == 0 else torch.arange(4.0),  # used on rank 1 only
                 None]  # used nowhere
        torch.save(average_gradients(grads, params), Path(out_dir) / f"avg{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_average_gradients_across_two_processes(tmp_path):
    """Means over the ranks, a gradient missing on one rank counts as zeros there, one
    missing everywhere stays ``None``; with one process the gradients come back unchanged."""
    from seqcomm.distributed import average_gradients

    single = [torch.ones(2), None]
    assert all(a is b for a, b in zip(average_gradients(single, [torch.zeros(2)] * 2),
                                      single, strict=True))
    torch.multiprocessing.spawn(_average_on_rank, args=(str(tmp_path / "init"), str(tmp_path)),
                                nprocs=2)
    for rank in (0, 1):
        full, half, unused = torch.load(tmp_path / f"avg{rank}.pt")
        torch.testing.assert_close(full, torch.full((2, 3), 1.5))
        torch.testing.assert_close(half, torch.arange(4.0) / 2)
        assert unused is None


class RngProbe(L.Callback):
    """Test helper run inside the DDP processes. A fresh run: at update 3, saves a checkpoint
    to ``<default_root_dir>/probe.ckpt`` and this rank's generator states (the exploration
    policy's, the environments', replay sampling's, torch's) to ``saved<k>.pt``. A run resumed
    from it: the states once they are put back (when training starts) to ``restored<k>.pt``."""

    @staticmethod
    def states(trainer, pl_module) -> dict:
        data = trainer.datamodule
        return {"policy": pl_module.policy.generator.get_state(),
                "envs": [g.get_state() for g in data._generators()],
                "sample": data.buffer._rng.get_state(),  # what replay sampling draws from
                "torch": torch.get_rng_state()}

    def setup(self, trainer, pl_module, stage) -> None:
        # config callbacks come before seqcomm's own: run after RandomGenerators' hooks (a new
        # list: Lightning is iterating over the current one)
        trainer.callbacks = [c for c in trainer.callbacks if c is not self] + [self]

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.ckpt_path is not None:
            torch.save(self.states(trainer, pl_module),
                       Path(trainer.default_root_dir) / f"restored{trainer.global_rank}.pt")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.ckpt_path is None and trainer.global_step == 3:
            root = Path(trainer.default_root_dir)
            trainer.save_checkpoint(root / "probe.ckpt", weights_only=False)  # every rank
            torch.save(self.states(trainer, pl_module), root / f"saved{trainer.global_rank}.pt")


def test_ddp_resume_restores_each_ranks_generators(ddp_run, tmp_path):
    """Lightning writes a DDP checkpoint on rank 0 only, yet a run resumed from the fixture's
    checkpoint at update 3 puts back each rank's own generators (not rank 0's on every
    rank)."""
    shutil.copytree(ddp_run[0], tmp_path, dirs_exist_ok=True)  # the fixture's run stays as is
    env = dict(os.environ, WANDB_MODE="offline",
               PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent)]))
    proc = subprocess.run(
        [sys.executable, "-m", "seqcomm.cli", "fit", *DDP_ARGS,
         "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps=4",
         "--trainer.callbacks+=test_ddp.RngProbe", "--ckpt_path", str(tmp_path / "probe.ckpt")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = [torch.load(tmp_path / f"saved{r}.pt") for r in (0, 1)]
    restored = [torch.load(tmp_path / f"restored{r}.pt") for r in (0, 1)]
    for rank in (0, 1):
        for key in ("policy", "sample", "torch"):
            assert torch.equal(restored[rank][key], saved[rank][key]), (rank, key)
        for got, want in zip(restored[rank]["envs"], saved[rank]["envs"], strict=True):
            assert torch.equal(got, want), (rank, "envs")
    for key in ("policy", "sample"):  # the ranks' own streams, not one copied
        assert not torch.equal(saved[0][key], saved[1][key]), key
    assert not torch.equal(saved[0]["envs"][0], saved[1]["envs"][0])
