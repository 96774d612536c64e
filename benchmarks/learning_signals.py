"""A run's learning signals over training, side by side with other runs.

When one seed never learns while others do, the question is which signal parts first: the
exploring win rate, the TD loss, the value-aware losses, the critic's confidence, the
messages at their bound. This splits each run's ``metrics.csv`` into ``--windows`` equal
spans of updates and prints each column's mean per span, one row per (column, run), so a dead
seed's row sits under a learning seed's.

    python benchmarks/learning_signals.py runs/dfl_s4/version_0 runs/dfl_s5/version_0 \\
        --columns train/win_rate loss/td loss/va comm/va_confidence
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from pathlib import Path

DEFAULT_COLUMNS = (
    "train/win_rate", "train/return", "eval/win_rate", "loss/td", "loss/va", "loss/inf",
    "loss/critic", "comm/va_confidence", "comm/messages_at_bound", "dfl/cg_iters",
    "dfl/target_error",
)


def windowed(run_dir: Path, columns: list[str], windows: int) -> dict[str, list[float]]:
    """Per column, the mean of its logged values in each of ``windows`` spans of updates."""
    updates = json.loads((run_dir / "summary.json").read_text())["updates"]
    sums = {c: [[] for _ in range(windows)] for c in columns}
    with (run_dir / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            # steps count updates from 1: update u falls in span (u - 1) * windows // updates
            span = min(max(int(row["step"]) - 1, 0) * windows // max(updates, 1), windows - 1)
            for c in columns:
                if row.get(c):
                    sums[c][span].append(float(row[c]))
    return {c: [statistics.fmean(v) if v else math.nan for v in spans]
            for c, spans in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    parser.add_argument("--columns", nargs="+", default=list(DEFAULT_COLUMNS),
                        help="metrics.csv columns")
    parser.add_argument("--windows", type=int, default=8, help="equal spans of updates")
    args = parser.parse_args()
    if args.windows < 1:
        parser.error(f"--windows {args.windows}: pass a positive number of spans")
    missing = [str(d) for d in args.runs if not (d / "summary.json").is_file()]
    if missing:
        parser.error(f"no summary.json in {', '.join(missing)}: pass finished run "
                     "directories (runs/<run_name>/version_0)")
    signals = {d: windowed(d, args.columns, args.windows) for d in args.runs}
    unlogged = [c for c in args.columns
                if all(all(math.isnan(v) for v in s[c]) for s in signals.values())]
    if unlogged:
        parser.error(f"no run logs {', '.join(unlogged)} (choose --columns from the header "
                     "of metrics.csv)")
    spans = " | ".join(f"{w + 1}/{args.windows}" for w in range(args.windows))
    print(f"| column | run | {spans} |")
    print("| --- | --- |" + " ---: |" * args.windows)
    for c in args.columns:
        for d, s in signals.items():
            print(f"| {c} | {d} | " + " | ".join(f"{v:.3g}" for v in s[c]) + " |")


if __name__ == "__main__":
    main()
