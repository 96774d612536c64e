"""``seqcomm study`` and ``seqcomm report``: argument parsing; bad input is a ConfigError (one
line on stderr, exit status 2), a failed cell exits with status 1."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from seqcomm.errors import ConfigError


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are ConfigErrors (one line, not usage plus a message)."""

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}")


def study_main(argv: list[str]) -> None:
    """``seqcomm study studies/<name>.yaml [--workers N] [--root DIR] [--emit wandb|slurm]``."""
    parser = _Parser(prog="seqcomm study",
                     description="Run a study's cells (tasks x methods x seeds), or emit them "
                                 "for a cluster.")
    parser.add_argument("study_file")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="runs at once, one torch thread each (default: CPU cores)")
    parser.add_argument("--root", default="runs/studies",
                        help="studies go to <root>/<study file name>/")
    parser.add_argument("--emit", choices=["wandb", "slurm"],
                        help="instead of running: write a W&B sweep, or submit a SLURM array")
    parser.add_argument("--cell", help="run one cell, task/method/seed (what cluster jobs run)")
    parser.add_argument("--only", nargs="+", metavar="PATTERN",
                        help="run (or emit) only the cells whose task/method/seed id matches "
                             "one of these shell patterns, e.g. 'hospital/*/0'")
    args = parser.parse_args(argv)
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    from seqcomm.study import cell as cells
    from seqcomm.study.spec import load_study

    study = load_study(args.study_file)
    study.selected(args.only)  # a pattern that matches nothing is bad input
    study_dir = Path(args.root).resolve() / study.name
    workdir = Path.cwd()
    if args.cell is not None:
        one = study.cell(args.cell)
        cells.save_study(study, study_dir)
        state = cells.run_cell(study, one, study_dir, workdir)
        if state != "done":
            raise SystemExit(f"seqcomm study: {one.id} failed; log: "
                             f"{cells.log_path(study_dir, one)}")
        return
    if args.emit == "wandb":
        from seqcomm.study.emit import write_wandb_sweep

        path = write_wandb_sweep(study, args.study_file, args.root, study_dir, args.only)
        print(f"seqcomm study: {len(study.selected(args.only))} cells -> {path}\n"
              f"  wandb sweep {shlex.quote(str(path))}   # prints a sweep id\n"
              f"  wandb agent <entity/project/sweep id>   # on each machine, from {workdir}\n"
              f"  seqcomm report {shlex.quote(str(study_dir))}")
        return
    if args.emit == "slurm":
        from seqcomm.study.emit import slurm_executor, submit_slurm

        jobs = submit_slurm(slurm_executor(study, study_dir), study, args.study_file,
                            study_dir, workdir, args.only)
        first = jobs[0].job_id.split("_")[0] if jobs else "none (every cell is done)"
        print(f"seqcomm study: {len(jobs)} cells submitted as SLURM array {first}; logs under "
              f"{study_dir / 'slurm'}\n  seqcomm report {shlex.quote(str(study_dir))}")
        return
    from seqcomm.study.runner import run_study

    result = run_study(study, study_dir, workdir, args.workers, only=args.only)
    failed = [c for c, s in result.items() if s == "failed"]
    print(f"seqcomm study: report with: seqcomm report {shlex.quote(str(study_dir))}")
    if failed:
        raise SystemExit(f"seqcomm study: {len(failed)} of {len(result)} cells failed "
                         f"({', '.join(failed)}); their logs are next to their run directories")


def report_main(argv: list[str]) -> None:
    """``seqcomm report <study dir> [--out DIR] [--reps N] [--seed S] [--into FILE]``."""
    parser = _Parser(prog="seqcomm report",
                     description="Summarise a study directory: IQM and CIs, plots, tables.")
    parser.add_argument("study_dir")
    parser.add_argument("--out", help="default: <study dir>/report")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap replications")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap random state")
    parser.add_argument("--into", help="also write the table into this markdown file, between "
                                       "its '<!-- seqcomm report: <study> -->' markers")
    args = parser.parse_args(argv)
    if args.reps < 1:
        raise ConfigError(f"--reps must be >= 1, got {args.reps}")
    from seqcomm.study.cell import write_whole
    from seqcomm.study.report import splice, write_report

    study_dir = Path(args.study_dir)
    name = study_dir.resolve().name
    into = Path(args.into) if args.into else None
    if into is not None:  # checked before anything is written
        if not into.is_file():
            raise ConfigError(f"--into {into}: no such file")
        document = into.read_text()
        splice(document, name, "", where=f"--into {into}")
    out, table = write_report(study_dir, Path(args.out) if args.out else None,
                              args.reps, args.seed)
    sys.stdout.write(table)
    print(f"seqcomm report: -> {out}")
    if into is not None:
        write_whole(into, splice(document, name, table))
        print(f"seqcomm report: table -> {into}")
