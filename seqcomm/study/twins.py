"""Cells that are the same run. An ablation file that restates what the method file already
sets (``ablations/value_aware/on.yaml`` under ``seqcomm_dfl.yaml``) resolves to the same
configuration, and a run is deterministic given its configuration and seed, so a study copies
the finished twin's results instead of training again; ``same_as.json`` in the run directory
names the cell they came from. Configurations are compared as ``seqcomm fit --print_config``
resolves both cells' stacks with the code at hand (every default filled in; a finished run's
saved config.yaml may predate an option), less the keys that only say where a run is written.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import warnings
from pathlib import Path

import yaml

from seqcomm.study import cell as cells
from seqcomm.study.spec import Cell, Study

SAME_AS = "same_as.json"
WHERE_ONLY = (("run_name",), ("trainer", "default_root_dir"))  # not part of what a run computes


def _comparable(config: dict) -> dict:
    config = json.loads(json.dumps(config))  # a deep copy
    for *parents, key in WHERE_ONLY:
        node = config
        for p in parents:
            node = node.get(p) or {}
        node.pop(key, None)
    return config


class Twins:
    """Resolved configurations of a study's cells (in this process: about a second each after
    Lightning's import), and which finished or running cell a cell would repeat."""

    def __init__(self, study: Study, study_dir: Path, workdir: Path) -> None:
        self.study, self.study_dir, self.workdir = study, study_dir, workdir
        self._resolved: dict[str, dict | None] = {}

    def resolved(self, cell: Cell) -> dict | None:
        """The cell's configuration as its run would resolve it; None if it does not parse
        (the run itself then fails and says why)."""
        if cell.id not in self._resolved:
            from seqcomm.cli import lightning_main

            args = self.study.fit_args(cell, self.study_dir) + ["--print_config"]
            out = io.StringIO()
            try:
                with contextlib.chdir(self.workdir), contextlib.redirect_stdout(out), \
                        warnings.catch_warnings():
                    # LightningCLI warns when given args while the study's own are in sys.argv
                    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
                    lightning_main(args)
                config = None  # print_config always exits
            except SystemExit as done:
                config = None if done.code else yaml.safe_load(out.getvalue())
            except Exception:  # noqa: BLE001 - a bad stack: the run reports it
                config = None
            self._resolved[cell.id] = None if config is None else _comparable(config)
        return self._resolved[cell.id]

    def of(self, cell: Cell, running: list[Cell] = ()) -> Cell | None:
        """A finished cell, or one of ``running``, with the same seed, task and resolved
        configuration as ``cell`` (finished ones first); None if there is none."""
        peers = [c for c in self.study.cells() if c.id != cell.id and c.seed == cell.seed
                 and c.task.name == cell.task.name]
        done = [c for c in peers if cells.status(self.study_dir, c) == "done"
                and not (cells.run_dir(self.study_dir, c) / SAME_AS).is_file()]
        busy = [c for c in peers if c.id in {r.id for r in running}]
        if not done and not busy:
            return None
        mine = self.resolved(cell)
        if mine is None:
            return None
        return next((c for c in done + busy if self.resolved(c) == mine), None)


def copy_twin(study_dir: Path, cell: Cell, twin: Cell) -> None:
    """Give ``cell`` the finished ``twin``'s results (its checkpoints and logger files stay
    with the twin); summary.json, which marks a cell done, is written last."""
    src, dst = cells.run_dir(study_dir, twin), cells.run_dir(study_dir, cell)
    shutil.rmtree(study_dir / cell.run_name, ignore_errors=True)
    cells.failed_path(study_dir, cell).unlink(missing_ok=True)
    dst.mkdir(parents=True)
    files = sorted(p for p in src.iterdir() if p.is_file() and p.name != "summary.json")
    for path in files:
        shutil.copy2(path, dst / path.name)
    (dst / SAME_AS).write_text(json.dumps({"cell": twin.id}) + "\n")
    tmp = dst / f".summary.json.{os.getpid()}"
    shutil.copy2(src / "summary.json", tmp)
    os.replace(tmp, dst / "summary.json")


def same_as(run_dir: Path) -> str | None:
    """The cell id a run's results were copied from, if they were."""
    path = run_dir / SAME_AS
    return json.loads(path.read_text())["cell"] if path.is_file() else None
