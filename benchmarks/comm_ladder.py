"""The communication diagnostic ladder: every rung on one task, backbone, budget and evaluation.

Each (rung, seed) cell is one ``seqcomm fit`` subprocess (one torch thread) with the task file,
the rung's method files and overrides, and ``--seed_everything=S``; cells whose
``summary.json`` exists are skipped, so an interrupted ladder resumes. The table gives the final
greedy evaluation per seed, the mean with a 95% Student-t interval, and the share of the
no-comm -> full_obs gap each rung closes (both measured in the same set of runs).

    python benchmarks/comm_ladder.py --task conf/hospital.yaml --seeds 0 1 2 --workers 2
    python benchmarks/comm_ladder.py --rungs tarmac seqcomm_dfl --seeds 3   # any seed
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scipy import stats

REPO = Path(__file__).resolve().parents[1]
M = "conf/methods/"
NO_WM = "ablations/gradient/none.yaml"
TD_ONLY = ["--model.init_args.lambda_va=0", "--model.init_args.lambda_inf=0"]

#: rung -> (method files, overrides); the order of the ladder
RUNGS: dict[str, tuple[list[str], list[str]]] = {
    "no_comm": ([M + "qmix.yaml"], []),
    "full_obs": ([M + "full_obs.yaml"], []),
    "oracle": ([M + "oracle.yaml"], []),
    "commnet": ([M + "commnet.yaml"], []),
    "tarmac": ([M + "tarmac.yaml"], []),
    "rgmcomm": ([M + "rgmcomm.yaml"], []),
    "seqcomm": ([M + "seqcomm.yaml"], []),
    "seqcomm_td": ([M + "seqcomm_dfl.yaml", NO_WM], TD_ONLY),
    "seqcomm_va": ([M + "seqcomm_dfl.yaml", NO_WM], []),
    "seqcomm_dfl": ([M + "seqcomm_dfl.yaml"], []),
}


def run_cell(task: str, rung: str, seed: int, root: Path, extra: list[str]) -> Path:
    """Run one cell (unless its summary exists); return its run directory."""
    run_dir = root / f"{rung}_s{seed}"
    summary = run_dir / "version_0" / "summary.json"
    if summary.exists():
        return run_dir
    files, overrides = RUNGS[rung]
    cmd = [sys.executable, "-m", "seqcomm.cli", "fit", "--config", task]
    for f in files:
        cmd += ["--config", f]
    cmd += overrides + extra + [f"--seed_everything={seed}", f"--run_name={rung}_s{seed}",
                                f"--trainer.default_root_dir={root}", "--wandb", "false"]
    log = root / f"{rung}_s{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        f.write(" ".join(cmd[2:]) + "\n")
        f.flush()
        subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, check=False)
    print(f"done {rung} seed {seed}: {read_return(run_dir)}", flush=True)
    return run_dir


def read_return(run_dir: Path, metric: str = "return") -> float | None:
    path = run_dir / "version_0" / "summary.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["eval"].get(metric)


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t interval."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, half


def table(root: Path, rungs: list[str], seeds: list[int], metric: str = "return") -> str:
    """Markdown table of the ladder; a missing or failed cell shows as missing."""
    results = {r: [read_return(root / f"{r}_s{s}", metric) for s in seeds] for r in rungs}
    means = {r: interval([v for v in vals if v is not None])[0]
             for r, vals in results.items() if any(v is not None for v in vals)}
    lo, hi = means.get("no_comm"), means.get("full_obs")
    head = "| rung | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± 95% CI | gap closed |"
    lines = [head, "| --- |" + " ---: |" * (len(seeds) + 2)]
    for r, vals in results.items():
        cells = ["missing" if v is None else f"{v:.4g}" for v in vals]
        done = [v for v in vals if v is not None]
        if done:
            mean, half = interval(done)
            ci = f"{mean:.4g} ± {half:.2g}" if len(done) > 1 else f"{mean:.4g}"
            known = lo is not None and hi not in (None, lo)
            gap = f"{(mean - lo) / (hi - lo):.0%}" if known else ""
        else:
            ci, gap = "missing", ""
        lines.append(f"| {r} | " + " | ".join(cells) + f" | {ci} | {gap} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="conf/hospital.yaml")
    parser.add_argument("--rungs", nargs="+", default=list(RUNGS), choices=list(RUNGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--root", default=None, help="default: runs/ladder_<task name>")
    parser.add_argument("--table-only", action="store_true", help="print the table, run nothing")
    parser.add_argument("--metric", default="return",
                        help="summary.json eval key of the table, e.g. battle_won on microcombat")
    args, extra = parser.parse_known_args()
    root = Path(args.root or REPO / "runs" / f"ladder_{Path(args.task).stem}").resolve()
    if not args.table_only:
        cells = [(r, s) for s in args.seeds for r in args.rungs]
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(lambda c: run_cell(args.task, c[0], c[1], root, extra), cells))
    print(table(root, args.rungs, args.seeds, args.metric))


if __name__ == "__main__":
    main()
