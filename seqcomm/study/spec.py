"""The study file: tasks and methods as config stacks, seeds, a budget; its grid of cells.

A study file (YAML)::

    seeds: [0, 1, 2]
    budget: 400000                 # data.total_frames of every run (a task may set its own)
    metric: return                 # summary.json ``eval`` key the report ranks by
    overrides: [--wandb=false]     # appended to every run's command
    tasks:
      hospital:
        configs: [conf/hospital.yaml]
        reference: {low: -154.4, high: -26.7}   # normalised score = (x - low) / (high - low)
      microcombat_3m:
        configs: [conf/microcombat_3m.yaml]
        metric: win_rate                        # this task's key instead of the study's
    methods:
      no_comm: [conf/methods/qmix.yaml]          # a list is short for {configs: [...]}
      tarmac: {configs: [conf/methods/tarmac.yaml], tasks: [hospital]}
    compare: [[tarmac, no_comm]]                 # probability of improvement, X over Y
    slurm: {timeout_min: 120, slurm_partition: cpu}   # submitit parameters (--emit slurm)
    dedupe: true       # a cell resolving to a finished cell's configuration copies its results
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqcomm.errors import ConfigError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
STUDY_KEYS = {"seeds", "budget", "metric", "overrides", "tasks", "methods", "compare", "slurm",
              "dedupe"}
TASK_KEYS = {"configs", "overrides", "budget", "reference", "metric"}
METHOD_KEYS = {"configs", "overrides", "tasks"}


@dataclass(frozen=True)
class Stack:
    """A task or a method: config files composed left to right, then dotted overrides."""

    name: str
    configs: list[str]
    overrides: list[str] = field(default_factory=list)
    budget: int | None = None  # tasks only: data.total_frames instead of the study's
    reference: tuple[float, float] | None = None  # tasks only: (low, high) for normalising
    tasks: list[str] | None = None  # methods only: run on these tasks (default: all)
    metric: str | None = None  # tasks only: the summary.json eval key instead of the study's


@dataclass(frozen=True)
class Cell:
    """One run: a task, a method and a seed."""

    task: Stack
    method: Stack
    seed: int

    @property
    def id(self) -> str:
        """``task/method/seed``: the cell's name on the command line and in W&B sweeps."""
        return f"{self.task.name}/{self.method.name}/{self.seed}"

    @property
    def run_name(self) -> str:
        """``--run_name`` of the run: its directory under the study directory."""
        return f"{self.task.name}/{self.method.name}/s{self.seed}"


@dataclass(frozen=True)
class Study:
    """A parsed study file."""

    name: str
    seeds: list[int]
    budget: int | None
    metric: str
    overrides: list[str]
    tasks: dict[str, Stack]
    methods: dict[str, Stack]
    compare: list[tuple[str, str]]
    slurm: dict[str, Any]
    source: dict[str, Any]  # the file's mapping, copied into the study directory
    dedupe: bool = True  # copy a finished twin's results instead of rerunning (study/twins.py)

    def metric_of(self, task: str) -> str:
        """The summary.json ``eval`` key the report ranks ``task`` by."""
        return self.tasks[task].metric or self.metric

    def cells(self) -> list[Cell]:
        """Every (task, method, seed), seeds outermost so early results cover the grid."""
        return [Cell(task, method, seed) for seed in self.seeds
                for task in self.tasks.values() for method in self.methods.values()
                if method.tasks is None or task.name in method.tasks]

    def selected(self, only: list[str] | None = None) -> list[Cell]:
        """The cells whose id matches one of the ``only`` patterns (shell-style, e.g.
        ``hospital/*/0``), in grid order; every cell without patterns."""
        grid = self.cells()
        if not only:
            return grid
        for pattern in only:
            if not any(fnmatch.fnmatchcase(c.id, pattern) for c in grid):
                raise ConfigError(f"--only {pattern!r} matches no cell of study {self.name!r}; "
                                  f"cells look like {grid[0].id!r} (task/method/seed)")
        return [c for c in grid if any(fnmatch.fnmatchcase(c.id, p) for p in only)]

    def cell(self, cell_id: str) -> Cell:
        """The cell named ``task/method/seed``."""
        for cell in self.cells():
            if cell.id == cell_id:
                return cell
        raise ConfigError(f"--cell {cell_id!r} is not in study {self.name!r}; cells look like "
                          f"{self.cells()[0].id!r}")

    def command(self, cell: Cell, study_dir: Path, python: str) -> list[str]:
        """The ``seqcomm fit`` command of a cell (run from the study file's working dir)."""
        return [python, "-m", "seqcomm.cli", *self.fit_args(cell, study_dir)]

    def fit_args(self, cell: Cell, study_dir: Path) -> list[str]:
        """``fit`` and its arguments for a cell."""
        cmd = ["fit"]
        for path in cell.task.configs + cell.method.configs:
            cmd += ["--config", path]
        budget = cell.task.budget or self.budget
        if budget is not None:
            cmd.append(f"--data.total_frames={budget}")
        cmd += self.overrides + cell.task.overrides + cell.method.overrides
        return cmd + [f"--seed_everything={cell.seed}", f"--run_name={cell.run_name}",
                      f"--trainer.default_root_dir={study_dir}", "--threads=1"]


def _strings(where: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    return value


def _positive_int(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: expected a positive integer, got {value!r}")
    return value


def _mapping(where: str, value: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed: "
                          f"{', '.join(sorted(allowed))}")
    return value


def _stack(kind: str, name: Any, value: Any, check_paths: bool) -> Stack:
    where = f"{kind} {name!r}"
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"{where}: names use letters, digits, '_', '.', '-' only")
    if isinstance(value, list):
        value = {"configs": value}
    value = _mapping(where, value, TASK_KEYS if kind == "task" else METHOD_KEYS)
    if "configs" not in value:
        raise ConfigError(f"{where}: needs 'configs', a list of config files")
    configs = _strings(f"{where} configs", value["configs"])
    if check_paths:
        for path in configs:
            if not os.path.isfile(path):
                raise ConfigError(f"{where}: config {path!r} does not exist (paths are relative "
                                  f"to the directory seqcomm runs in, {os.getcwd()})")
    reference = value.get("reference")
    if reference is not None:
        reference = _mapping(f"{where} reference", reference, {"low", "high"})
        if not all(isinstance(reference.get(k), int | float) for k in ("low", "high")) \
                or reference["low"] == reference["high"]:
            raise ConfigError(f"{where} reference: needs numbers 'low' and 'high' that differ")
        reference = (float(reference["low"]), float(reference["high"]))
    tasks, metric = value.get("tasks"), value.get("metric")
    if metric is not None and not isinstance(metric, str):
        raise ConfigError(f"{where} metric: must be a summary.json eval key, e.g. win_rate")
    return Stack(
        name=name, configs=configs,
        overrides=_strings(f"{where} overrides", value.get("overrides", [])),
        budget=None if value.get("budget") is None
        else _positive_int(f"{where} budget", value["budget"]),
        reference=reference,
        tasks=None if tasks is None else _strings(f"{where} tasks", tasks), metric=metric)


def parse_study(data: Any, name: str, check_paths: bool = True) -> Study:
    """Validate a study file's mapping; ``check_paths`` checks that config files exist."""
    data = _mapping(f"study {name!r}", data, STUDY_KEYS)
    for key in ("seeds", "tasks", "methods"):
        if not data.get(key):
            raise ConfigError(f"study {name!r}: '{key}' is missing or empty")
    seeds = data["seeds"]
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool)
                                              and s >= 0 for s in seeds):
        raise ConfigError(f"study {name!r}: 'seeds' must be a list of integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"study {name!r}: 'seeds' repeats a seed")
    tasks = {k: _stack("task", k, v, check_paths)
             for k, v in _mapping("tasks", data["tasks"], set(data["tasks"])).items()}
    methods = {k: _stack("method", k, v, check_paths)
               for k, v in _mapping("methods", data["methods"], set(data["methods"])).items()}
    for method in methods.values():
        for task in method.tasks or []:
            if task not in tasks:
                raise ConfigError(f"method {method.name!r}: unknown task {task!r} in 'tasks'")
    compare = []
    for pair in data.get("compare") or []:
        if not (isinstance(pair, list) and len(pair) == 2 and all(p in methods for p in pair)):
            raise ConfigError(f"study {name!r}: compare entry {pair!r} must be a pair of "
                              f"method names from: {', '.join(methods)}")
        compare.append((pair[0], pair[1]))
    metric = data.get("metric", "return")
    if not isinstance(metric, str):
        raise ConfigError(f"study {name!r}: 'metric' must be a summary.json eval key")
    slurm = data.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise ConfigError(f"study {name!r}: 'slurm' must be a mapping of submitit parameters")
    dedupe = data.get("dedupe", True)
    if not isinstance(dedupe, bool):
        raise ConfigError(f"study {name!r}: 'dedupe' must be true or false")
    return Study(
        name=name, seeds=seeds,
        budget=None if data.get("budget") is None
        else _positive_int(f"study {name!r} budget", data["budget"]),
        metric=metric, overrides=_strings(f"study {name!r} overrides", data.get("overrides", [])),
        tasks=tasks, methods=methods, compare=compare, slurm=slurm, source=data,
        dedupe=dedupe)


def load_study(path: str | Path, check_paths: bool = True, name: str | None = None) -> Study:
    """Read and validate a study file; its name is the file's stem unless given."""
    from seqcomm.commands import _load_yaml

    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such study file (see studies/smoke.yaml for the format)")
    return parse_study(_load_yaml(str(path)), name or Path(path).stem, check_paths)
