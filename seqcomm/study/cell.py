"""One cell of a study as a ``seqcomm fit`` subprocess, and where its files live.

Under the study directory a cell ``task/method/seed`` writes ``<task>/<method>/s<seed>/version_0/``
(the run: ``summary.json``, ``metrics.csv``, ``config.yaml``), its log
``<task>/<method>/s<seed>.log`` and, if it failed, ``<task>/<method>/s<seed>.failed.json``.
A cell is done when its ``summary.json`` exists; anything else is rerun from scratch.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import yaml

import seqcomm
from seqcomm.study.spec import Cell, Study

Status = Literal["done", "failed", "missing"]
STUDY_COPY = "study.yaml"  # the study file, copied into its directory for the report


def run_dir(study_dir: Path, cell: Cell) -> Path:
    """The run's ``version_0`` directory."""
    return study_dir / cell.run_name / "version_0"


def log_path(study_dir: Path, cell: Cell) -> Path:
    return study_dir / f"{cell.run_name}.log"


def failed_path(study_dir: Path, cell: Cell) -> Path:
    return study_dir / f"{cell.run_name}.failed.json"


def status(study_dir: Path, cell: Cell) -> Status:
    """``done`` (summary.json exists), ``failed`` (its last attempt failed) or ``missing``."""
    if (run_dir(study_dir, cell) / "summary.json").is_file():
        return "done"
    return "failed" if failed_path(study_dir, cell).is_file() else "missing"


def write_whole(path: Path, text: str) -> None:
    """Write ``text`` to a hidden file beside ``path``, then move it there: never half-written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_study(study: Study, study_dir: Path) -> None:
    """Copy the study file's mapping to ``<study dir>/study.yaml``."""
    study_dir.mkdir(parents=True, exist_ok=True)
    write_whole(study_dir / STUDY_COPY, yaml.safe_dump(study.source, sort_keys=False))


@dataclass
class Running:
    """A started cell: its process, open log and start time."""

    cell: Cell
    process: subprocess.Popen
    log: IO[str]
    started: float


def _child_env() -> dict[str, str]:
    """One CPU thread per run, and this seqcomm importable from any working directory."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    package_root = str(Path(seqcomm.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def start(study: Study, cell: Cell, study_dir: Path, workdir: Path) -> Running:
    """Start a cell afresh: its old partial run and failure record are removed first."""
    shutil.rmtree(study_dir / cell.run_name, ignore_errors=True)
    failed_path(study_dir, cell).unlink(missing_ok=True)
    cmd = study.command(cell, study_dir, sys.executable)
    log = log_path(study_dir, cell)
    log.parent.mkdir(parents=True, exist_ok=True)
    f = open(log, "w")
    f.write(f"seqcomm {shlex.join(cmd[3:])}\n")  # the run, as one would type it
    f.flush()
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=f, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=_child_env())
    return Running(cell, proc, f, time.monotonic())


def finish(running: Running, study_dir: Path) -> Status:
    """Close a finished cell: ``done``, or ``failed`` with a record next to its log."""
    running.log.close()
    code = running.process.returncode
    cell = running.cell
    if code == 0 and status(study_dir, cell) == "done":
        return "done"
    record = {"cell": cell.id, "returncode": code, "log": str(log_path(study_dir, cell)),
              "wall_seconds": round(time.monotonic() - running.started, 2)}
    failed_path(study_dir, cell).write_text(json.dumps(record, indent=2))
    return "failed"


def run_cell(study: Study, cell: Cell, study_dir: Path, workdir: Path) -> Status:
    """Run one cell to the end in the foreground (skipped when already done, copied when a
    finished cell has its configuration)."""
    from seqcomm.study.twins import Twins, copy_twin

    if status(study_dir, cell) == "done":
        return "done"
    twin = Twins(study, study_dir, workdir).of(cell) if study.dedupe else None
    if twin is not None:
        copy_twin(study_dir, cell, twin)
        return "done"
    running = start(study, cell, study_dir, workdir)
    running.process.wait()
    return finish(running, study_dir)


def run_cell_job(study_file: str, study_dir: str, cell_id: str, workdir: str) -> Status:
    """A cluster job (SLURM through submitit): one cell of a study file, by its id."""
    from seqcomm.study.spec import load_study

    os.chdir(workdir)
    study = load_study(study_file)
    return run_cell(study, study.cell(cell_id), Path(study_dir), Path(workdir))
