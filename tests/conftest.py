"""Shared fixtures: one torch thread (the test machine is small and shared), and helpers that
run ``seqcomm fit`` on the matrix game in-process and read its run directory."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
MATRIX_CONF = ROOT / "conf" / "matrix.yaml"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def matrix_frames(updates: int) -> int:
    """The ``data.total_frames`` that makes conf/matrix.yaml stop after ``updates`` updates.

    The matrix game lasts one step, so a collection adds ``num_envs`` chunks and frames; one
    update follows each collection once the buffer holds ``max(warmup_chunks, batch_size)``.
    """
    data = OmegaConf.load(MATRIX_CONF).data
    per_collect = data.num_envs
    warmup = math.ceil(max(data.warmup_chunks, data.batch_size) / per_collect) * per_collect
    return warmup + (updates - 1) * per_collect


def matrix_dfl_step(**kw):
    """A small ``SeqCommDFL`` (fixed-order messenger, world model) on the 8-copy matrix game
    and one real step of it as a ``[8, 1]`` replay batch; ``kw``: the learner's settings."""
    import functools

    from seqcomm.comm.stackelberg import SeqCommMessenger
    from seqcomm.envs.base import ACTION, env_info
    from seqcomm.envs.matrix import MatrixGame
    from seqcomm.seqcomm_dfl import SeqCommDFL

    torch.manual_seed(0)
    env = MatrixGame(8, seed=1)
    model = SeqCommDFL(env_info(env), comm=functools.partial(SeqCommMessenger, ordering="fixed"),
                       hidden_dim=8, **kw)
    td = env.reset()
    td[ACTION] = torch.randint(0, 2, (8, 2))
    td["next"] = env.step(td)["next"]
    td["is_init"] = torch.ones(8, 1, dtype=torch.bool)
    return model, td.unsqueeze(1)


def read_metrics(run_dir: Path) -> dict[str, dict[int, float]]:
    """``metrics.csv`` as ``{column: {step: value}}`` (empty cells left out)."""
    out: dict[str, dict[int, float]] = {}
    with open(run_dir / "metrics.csv") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key != "step" and value != "":
                    out.setdefault(key, {})[int(row["step"])] = float(value)
    return out


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def latest_version(root: Path, run_name: str) -> Path:
    versions = sorted((root / run_name).glob("version_*"),
                      key=lambda p: int(p.name.split("_")[1]))
    assert versions, f"no run directory under {root / run_name}"
    return versions[-1]


@pytest.fixture
def fit_matrix(tmp_path: Path) -> Callable[..., Path]:
    """``fit_matrix(*overrides, run_name="run")``: ``seqcomm fit`` on conf/matrix.yaml in this
    process, under ``tmp_path``; returns the run's version directory."""
    from seqcomm.cli import main

    def run(*overrides: str, run_name: str = "run") -> Path:
        main(["fit", "--config", str(MATRIX_CONF), "--wandb", "false",
              "--trainer.enable_progress_bar", "false",
              "--trainer.default_root_dir", str(tmp_path), "--run_name", run_name,
              *overrides])
        return latest_version(tmp_path, run_name)

    return run
