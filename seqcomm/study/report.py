"""``seqcomm report``: a study directory's runs summarised with rliable (mean and IQM with 95%
stratified bootstrap CIs per task and method, normalised scores where a task has references,
probability of improvement for the study's ``compare`` pairs), as marl-eval JSON, a JSON of
every estimate, a markdown table and PNG plots. A missing or failed run is shown as such."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from seqcomm.errors import ConfigError
from seqcomm.study import intervals, plots
from seqcomm.study.intervals import Estimate
from seqcomm.study.results import Run, marl_eval, read_study
from seqcomm.study.spec import Stack, Study


def _scores(runs: list[Run], study: Study, task: str, method: str) -> np.ndarray:
    return np.array([r.score(study.metric_of(task)) for r in runs if r.status == "done"
                     and r.cell.task.name == task and r.cell.method.name == method])


def _normalise(values: np.ndarray, task: Stack) -> np.ndarray:
    low, high = task.reference
    return (values - low) / (high - low)


def _curve(runs: list[Run], metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The evaluations every finished run of one cell shares: (env steps, (runs, 1, points))."""
    done = [r for r in runs if r.status == "done" and metric in r.evals]
    if not done:
        return None
    common = set.intersection(*(set(np.round(r.steps).astype(int)) for r in done))
    if not common:
        return None
    steps = np.array(sorted(common))
    rows = []
    for r in done:  # two evaluations can share an env step (no collection between them): the last
        at = dict(zip(np.round(r.steps).astype(int).tolist(), r.evals[metric], strict=True))
        rows.append([[at[s] for s in steps]])
    return steps, np.array(rows)


def _copied_from(cell_runs: list[Run]) -> str | None:
    """The method whose runs a cell's finished runs all are (study/twins.py), if one is."""
    sources = {r.same_as.split("/")[1] if r.same_as else None
               for r in cell_runs if r.status == "done"}
    return sources.pop() if len(sources) == 1 else None


def _cells(runs: list[Run]) -> dict[str, float]:
    """How far the study is: cells finished (copies among them), failed, planned, and the
    hours its trained runs took (``summary.json``'s ``wall_seconds``; copies not counted)."""
    done = [r for r in runs if r.status == "done"]
    trained = [r for r in done if r.same_as is None]
    return {"done": len(done), "copied": len(done) - len(trained),
            "failed": sum(r.status == "failed" for r in runs), "planned": len(runs),
            "run_hours": sum(r.summary.get("wall_seconds", 0.0) for r in trained) / 3600}


def _verdict(e: Estimate, x: str, y: str) -> str:
    if e.low > 0.5:
        return f"{x} better"
    if e.high < 0.5:
        return f"{y} better"
    return "no clear difference"


def analyse(study: Study, runs: list[Run], reps: int = 2000, seed: int = 0) -> dict:
    """Every estimate of the report as plain data (``Estimate`` objects inside)."""
    out: dict = {"study": study.name, "metric": study.metric, "seeds": study.seeds,
                 "metrics": {task: study.metric_of(task) for task in study.tasks},
                 "tasks": {}, "normalised": {}, "improvement": [], "curves": {},
                 "cells": _cells(runs)}
    by_cell = {(r.cell.task.name, r.cell.method.name): [] for r in runs}
    for r in runs:
        by_cell[r.cell.task.name, r.cell.method.name].append(r)
    for (task, method), cell_runs in by_cell.items():
        metric = study.metric_of(task)
        row = {"runs": {r.cell.seed: (r.score(metric) if r.status == "done" else r.status)
                        for r in cell_runs}, "same_as": _copied_from(cell_runs)}
        scores = _scores(runs, study, task, method)
        if scores.size:
            row |= intervals.aggregates({method: scores[:, None]}, reps, seed)[method]
            if study.tasks[task].reference is not None:
                norm = _normalise(scores, study.tasks[task])[:, None]
                row["normalised_iqm"] = intervals.aggregates({method: norm}, reps, seed)[
                    method]["iqm"]
            if scores.size == 1:
                row |= {k: v.alone() for k, v in row.items() if isinstance(v, Estimate)}
        out["tasks"].setdefault(task, {})[method] = row
        curve = _curve(cell_runs, metric)
        if curve is not None:
            steps, values = curve
            iqm, low, high = intervals.iqm_curves({method: values}, reps, seed)[method]
            out["curves"].setdefault(task, {})[method] = (steps, iqm, low, high)
    # normalised over the tasks with references: methods complete on all of them
    ref_tasks = [t for t in study.tasks.values() if t.reference is not None]
    planned = {(c.task.name, c.method.name) for c in study.cells()}
    for method in study.methods:
        if not all((t.name, method) in planned for t in ref_tasks):
            continue  # not run on every task with references
        cols = [_normalise(_scores(runs, study, t.name, method), t) for t in ref_tasks]
        if ref_tasks and all(c.size == len(study.seeds) for c in cols):
            out["normalised"][method] = intervals.aggregates(
                {method: np.stack(cols, axis=1)}, reps, seed, optimality_gap=True)[method]
        elif ref_tasks:
            out["normalised"][method] = "incomplete"
    for x, y in study.compare:
        for task in study.tasks:
            if (task, x) not in planned or (task, y) not in planned:
                continue
            sx, sy = _scores(runs, study, task, x), _scores(runs, study, task, y)
            entry = {"task": task, "x": x, "y": y}
            copies = {out["tasks"][task][x]["same_as"], out["tasks"][task][y]["same_as"]}
            if x in copies or y in copies:
                entry |= {"p": "the same runs", "verdict": "the same configuration"}
            elif min(sx.size, sy.size) == 1:
                entry |= {"p": "1 run: no test", "verdict": "too few runs"}
            elif sx.size and sy.size:
                p = intervals.improvement({"p": (sx[:, None], sy[:, None])}, reps, seed)["p"]
                entry |= {"p": p, "verdict": _verdict(p, x, y)}
            else:
                entry["p"] = "missing"
            out["improvement"].append(entry)
    return out


def _cell(value: object) -> str:
    return value.text() if isinstance(value, Estimate) else \
        f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown(study: Study, result: dict) -> str:
    """The report's tables."""
    seeds = study.seeds
    own = [f"{t}: eval/{study.metric_of(t)}" for t in study.tasks
           if study.metric_of(t) != study.metric]
    lines = [f"# Study {study.name}: final greedy eval/{study.metric}"
             + (f" ({', '.join(own)})" if own else ""), "",
             "Point estimates with 95% stratified bootstrap CIs (rliable). "
             "Normalised: (x - low) / (high - low) with the task's reference values. "
             "\"X (= Y)\": X resolves to Y's configuration, and its runs are Y's.", "",
             "Cells: {done} of {planned} finished ({copied} of them copied from a twin), "
             "{failed} failed; the trained runs took {run_hours:.1f} hours of wall time "
             "summed (divide by the workers for the study's).".format(**result["cells"]), "",
             "| task | method | runs | mean [95% CI] | IQM [95% CI] | normalised IQM [95% CI] | "
             + " | ".join(f"seed {s}" for s in seeds) + " |",
             "| --- | --- | ---: | --- | --- | --- |" + " ---: |" * len(seeds)]
    for task, by_method in result["tasks"].items():
        for method, row in by_method.items():
            done = sum(isinstance(v, float) for v in row["runs"].values())
            per_seed = [_cell(row["runs"].get(s, "")) for s in seeds]
            name = method + (f" (= {row['same_as']})" if row["same_as"] else "")
            lines.append(f"| {task} | {name} | {done}/{len(row['runs'])} | "
                         f"{_cell(row.get('mean', 'missing'))} | "
                         f"{_cell(row.get('iqm', 'missing'))} | "
                         f"{_cell(row.get('normalised_iqm', ''))} | " + " | ".join(per_seed)
                         + " |")
    if result["normalised"]:
        refs = ", ".join(t.name for t in study.tasks.values() if t.reference is not None)
        lines += ["", f"## Normalised over tasks with references ({refs})", "",
                  "| method | mean [95% CI] | IQM [95% CI] | optimality gap [95% CI] |",
                  "| --- | --- | --- | --- |"]
        for method, row in result["normalised"].items():
            if isinstance(row, str):
                lines.append(f"| {method} | {row} | {row} | {row} |")
            else:
                lines.append(f"| {method} | {row['mean'].text()} | {row['iqm'].text()} | "
                             f"{row['optimality_gap'].text()} |")
    if result["improvement"]:
        lines += ["", "## Probability of improvement", "",
                  "| task | X | Y | P(X > Y) [95% CI] | verdict |",
                  "| --- | --- | --- | --- | --- |"]
        for e in result["improvement"]:
            lines.append(f"| {e['task']} | {e['x']} | {e['y']} | {_cell(e['p'])} | "
                         f"{e.get('verdict', 'missing')} |")
    return "\n".join(lines) + "\n"


def markers(study_name: str) -> tuple[str, str]:
    """The two lines between which ``seqcomm report --into FILE`` keeps a study's table."""
    return f"<!-- seqcomm report: {study_name} -->", f"<!-- /seqcomm report: {study_name} -->"


def splice(document: str, study_name: str, table: str, where: str = "the document") -> str:
    """``document`` with the text between the study's markers replaced by ``table``, its
    headings one level down (so the table nests under the document's own section)."""
    begin, end = markers(study_name)
    lines = document.splitlines(keepends=True)
    stripped = [line.strip() for line in lines]
    if stripped.count(begin) != 1 or stripped.count(end) != 1 \
            or stripped.index(begin) > stripped.index(end):
        raise ConfigError(f"{where} needs one line '{begin}' and, after it, one line '{end}' "
                          "where the report's table goes")
    i, j = stripped.index(begin), stripped.index(end)
    body = "".join("#" + line if line.startswith("#") else line
                   for line in table.splitlines(keepends=True))
    return "".join(lines[:i + 1]) + "\n" + body + "\n" + "".join(lines[j:])


def _plain(value: object) -> object:
    """JSON-able copy of ``analyse``'s result."""
    if isinstance(value, Estimate):
        return value.as_dict()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def write_report(study_dir: Path, out_dir: Path | None = None, reps: int = 2000,
                 seed: int = 0) -> tuple[Path, str]:
    """Write ``marl_eval.json``, ``stats.json``, ``table.md``, ``curves.png`` and
    ``aggregate.png`` to ``out_dir`` (default ``<study dir>/report``), all or nothing."""
    study, runs = read_study(study_dir)
    result = analyse(study, runs, reps, seed)
    table = markdown(study, result)
    out_dir = out_dir or study_dir / "report"
    tmp = out_dir.parent / f".{out_dir.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        methods = list(study.methods)
        (tmp / "marl_eval.json").write_text(json.dumps(marl_eval(study, runs), indent=1))
        (tmp / "stats.json").write_text(json.dumps(_plain(result), indent=1))
        (tmp / "table.md").write_text(table)
        own = {task: {m: curve for m, curve in by.items()  # a twin's curve is its source's
                      if not result["tasks"][task][m]["same_as"]}
               for task, by in result["curves"].items()}
        plots.curves_png(own, methods, result["metrics"], tmp / "curves.png")
        panels = {task: {m: row["iqm"] for m, row in by.items() if "iqm" in row}
                  for task, by in result["tasks"].items()}
        norm = {m: row["iqm"] for m, row in result["normalised"].items() if isinstance(row, dict)}
        if norm:
            panels["normalised, all reference tasks"] = norm
        plots.aggregate_png(panels, methods, tmp / "aggregate.png")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir, table
