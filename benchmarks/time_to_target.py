"""Wall time and env steps until a run's greedy evaluation first reaches a target.

Reads each run directory's ``metrics.csv``: the evaluations (``eval/<metric>``), the seconds
since training started at each (``eval/wall_seconds``, logged by the ``Throughput``
callback) and the env steps logged nearest before it (``perf/env_steps``).

    seqcomm fit --config conf/microcombat_3m.yaml --seed_everything=0 --wandb false
    python benchmarks/time_to_target.py runs/microcombat_3m/version_0 --target 0.95
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def first_reach(run_dir: Path, metric: str, target: float) -> dict[str, float | None]:
    """``{update, env_steps, wall_seconds, value}`` of the first evaluation at or above
    ``target`` (``None`` entries if none; ``value`` is then the best evaluation)."""
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    steps, best = 0.0, None
    for row in rows:
        if row.get("perf/env_steps"):
            steps = float(row["perf/env_steps"])
        if not row.get(f"eval/{metric}"):
            continue
        value = float(row[f"eval/{metric}"])
        best = value if best is None else max(best, value)
        if value >= target:
            wall = row.get("eval/wall_seconds")
            return {"update": float(row["step"]), "env_steps": steps,
                    "wall_seconds": float(wall) if wall else None, "value": value}
    return {"update": None, "env_steps": None, "wall_seconds": None, "value": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (with metrics.csv)")
    parser.add_argument("--metric", default="win_rate")
    parser.add_argument("--target", type=float, default=0.95)
    args = parser.parse_args()
    print(f"| run | first eval/{args.metric} >= {args.target} | update | env steps | wall s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for run in args.runs:
        if not (run / "metrics.csv").exists():
            raise SystemExit(f"{run}: no metrics.csv; pass a run directory (runs/<name>/version_N)")
        r = first_reach(run, args.metric, args.target)
        if r["update"] is None:
            best = "no evaluation" if r["value"] is None else f"best {r['value']:.3f}"
            print(f"| {run} | not reached ({best}) | | | |")
            continue
        wall = "n/a" if r["wall_seconds"] is None else f"{r['wall_seconds']:.0f}"
        print(f"| {run} | {r['value']:.3f} | {r['update']:.0f} | {r['env_steps']:.0f} | {wall} |")


if __name__ == "__main__":
    main()
