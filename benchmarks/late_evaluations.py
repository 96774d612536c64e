"""How much a run's final score depends on when training stopped.

The project scores a run by its final greedy evaluation (``summary.json``). Where greedy
policies swing between checkpoints, that one number moves with the stopping point. For each
group of runs this prints, per run and as the group's mean with a 95% Student-t interval: the
final evaluation, the mean of the last ``k`` logged evaluations, the largest change between
two consecutive logged evaluations in the second half of training, and the exploring
(epsilon-greedy) training metric over the last eighth of the updates.

    python benchmarks/late_evaluations.py --metric win_rate \\
        before=runs/a_s0/version_0,runs/a_s1/version_0 after=runs/b_s0/version_0
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from comm_ladder import interval  # benchmarks/ is the script's directory

from seqcomm.study.results import read_curve


def late_figures(run_dir: Path, metric: str, last: int) -> dict[str, float]:
    """``final``, ``last_mean``, ``late_swing`` and ``train_late`` of one run directory."""
    summary = json.loads((run_dir / "summary.json").read_text())
    _, evals = read_curve(run_dir, summary)
    curve = evals[metric]
    second_half = curve[len(curve) // 2:]
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    updates = summary["updates"]
    train = [float(r[f"train/{metric}"]) for r in rows
             if r.get(f"train/{metric}") and int(r["step"]) >= updates * 7 / 8]
    return {
        "final": float(summary["eval"][metric]),
        "last_mean": float(curve[-last:].mean()),
        "late_swing": float(abs(second_half[1:] - second_half[:-1]).max()),
        "train_late": statistics.fmean(train) if train else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="+", help="LABEL=RUN_DIR[,RUN_DIR...]")
    parser.add_argument("--metric", default="return", help="eval/train metric name")
    parser.add_argument("--last", type=int, default=3, help="logged evaluations averaged")
    args = parser.parse_args()
    keys = ("final", "last_mean", "late_swing", "train_late")
    groups: list[tuple[str, list[Path], list[dict[str, float]]]] = []
    for group in args.groups:  # every argument checked before anything is printed
        label, _, dirs = group.partition("=")
        if not dirs:
            parser.error(f"{group!r}: expected LABEL=RUN_DIR[,RUN_DIR...]")
        runs = [Path(d) for d in dirs.split(",")]
        missing = [str(d) for d in runs if not (d / "summary.json").is_file()]
        if missing:
            parser.error(f"no summary.json in {', '.join(missing)}: pass finished run "
                         "directories (runs/<run_name>/version_0)")
        try:
            groups.append((label, runs, [late_figures(d, args.metric, args.last) for d in runs]))
        except KeyError as missing_key:
            parser.error(f"{label}: the runs log no {missing_key} (choose --metric from the "
                         "eval/ and train/ columns of metrics.csv)")
    print(f"| group | run | {' | '.join(keys)} |")
    print("| --- | --- |" + " ---: |" * len(keys))
    for label, runs, figures in groups:
        for d, f in zip(runs, figures, strict=True):
            print(f"| {label} | {d} | " + " | ".join(f"{f[k]:.3f}" for k in keys) + " |")
        cells = [" ± ".join(f"{v:.3f}" for v in interval([f[k] for f in figures]))
                 for k in keys]
        print(f"| **{label}** | mean ± 95% t | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
