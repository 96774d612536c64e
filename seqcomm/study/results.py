"""What a study directory holds: each cell's status, final score and learning curve, and the
same as marl-eval's JSON (``{env: {task: {method: {run_<seed>: {step_<k>: ..., absolute_metrics:
...}}}}}``; marl-eval wants per-episode lists, seqcomm logs episode means: one-element lists)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqcomm.errors import ConfigError
from seqcomm.study import cell as cells
from seqcomm.study.spec import Cell, Study, load_study
from seqcomm.study.twins import same_as


@dataclass(frozen=True)
class Run:
    """One cell's outcome; ``summary`` and the curve only when it is done."""

    cell: Cell
    status: cells.Status
    summary: dict | None = None
    steps: np.ndarray | None = None  # env steps of each evaluation
    evals: dict[str, np.ndarray] | None = None  # eval metric -> value at each evaluation
    same_as: str | None = None  # the cell its results were copied from (study/twins.py)

    def score(self, metric: str) -> float:
        """The final greedy evaluation of ``metric`` (summary.json)."""
        assert self.summary is not None
        found = self.summary["eval"]
        if metric not in found:
            raise ConfigError(f"{self.cell.id}: summary.json has no eval key {metric!r} "
                              f"(it has: {', '.join(found)}); set the study's or the task's "
                              "'metric'")
        return float(found[metric])


def read_curve(run_dir: Path, summary: dict) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Evaluations logged in ``metrics.csv``, at env steps interpolated from the logged
    ``perf/env_steps`` (updates -> env steps) and the summary's final count."""
    rows = list(csv.DictReader(open(run_dir / "metrics.csv"))) \
        if (run_dir / "metrics.csv").is_file() else []
    known = {0: 0.0, summary["updates"]: float(summary["env_steps"])}
    known |= {int(r["step"]): float(r["perf/env_steps"]) for r in rows
              if r.get("perf/env_steps")}
    at = sorted(known)
    evals: dict[int, dict[str, float]] = {}
    for r in rows:
        for key, value in r.items():
            if key.startswith("eval/") and value:
                evals.setdefault(int(r["step"]), {})[key[5:]] = float(value)
    updates = sorted(evals)
    steps = np.interp(updates, at, [known[a] for a in at])
    metrics = sorted({k for v in evals.values() for k in v})
    return steps, {m: np.array([evals[u].get(m, np.nan) for u in updates]) for m in metrics}


def read_run(study_dir: Path, cell: Cell) -> Run:
    state = cells.status(study_dir, cell)
    if state != "done":
        return Run(cell, state)
    run_dir = cells.run_dir(study_dir, cell)
    summary = json.loads((run_dir / "summary.json").read_text())
    steps, evals = read_curve(run_dir, summary)
    return Run(cell, state, summary, steps, evals, same_as(run_dir))


def read_study(study_dir: Path) -> tuple[Study, list[Run]]:
    """The study copied into ``study_dir`` and every cell's run; bad input is a ConfigError."""
    if not study_dir.is_dir():
        raise ConfigError(f"{study_dir}: no such study directory")
    copy = study_dir / cells.STUDY_COPY
    if not copy.is_file():
        raise ConfigError(f"{study_dir}: not a study directory (no {cells.STUDY_COPY}); "
                          "run seqcomm study first")
    study = load_study(copy, check_paths=False, name=study_dir.name)
    runs = [read_run(study_dir, c) for c in study.cells()]
    if not any(r.status == "done" for r in runs):
        raise ConfigError(f"{study_dir}: no finished runs yet (no summary.json among "
                          f"{len(runs)} cells)")
    return study, runs


def marl_eval(study: Study, runs: list[Run]) -> dict:
    """marl-eval's raw-data JSON of the finished runs (missing and failed runs left out)."""
    out: dict = {}
    for run in runs:
        if run.status != "done":
            continue
        record: dict = {}
        for k, step in enumerate(run.steps):
            record[f"step_{k}"] = {"step_count": int(step)} | {
                m: [float(v[k])] for m, v in run.evals.items() if not np.isnan(v[k])}
        record["absolute_metrics"] = {m: [float(v)] for m, v in run.summary["eval"].items()}
        out.setdefault(study.name, {}).setdefault(run.cell.task.name, {}).setdefault(
            run.cell.method.name, {})[f"run_{run.cell.seed}"] = record
    return out
