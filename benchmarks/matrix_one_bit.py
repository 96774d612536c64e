"""A 1-bit method (SeqComm-DFL's 1-bit configuration, or RGMComm) on RGMComm's matrix game
and on seeded random tables of the same shape (2 observations x 2 actions for agent 1,
4 observations for agent 2).

The configuration must not be tuned to the paper's table: on every table it should reach the
brute-force best 1-bit value (``seqcomm.envs.matrix.best_message_value``). For RGMComm the
last column counts the runs whose final labels (``labels.json``) are the best message, whatever
the receivers made of them. Each cell is one
``seqcomm fit`` with the exact evaluation (all 8 observation pairs), model-free as in
``tests/test_matrix_comm.py``.

    python benchmarks/matrix_one_bit.py --tables rgmcomm 1 2 3 --seeds 0 1 2 --updates 600
    python benchmarks/matrix_one_bit.py --method rgmcomm --tables 1 2 3 --updates 1249
    python benchmarks/matrix_one_bit.py --root runs/x --model.init_args.label_scoring=lookahead
    python benchmarks/matrix_one_bit.py --shape 3 2 6 --tables 1 2 3   # another size
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from seqcomm.envs.matrix import (
    RGMCOMM_TABLE,
    best_message_value,
    message_value,
    no_comm_value,
    random_table,
)

REPO = Path(__file__).resolve().parents[1]
STACKS = {  # method -> (config files, extra overrides)
    "seqcomm_dfl_1bit": (["conf/matrix.yaml", "conf/methods/seqcomm_dfl.yaml",
                          "conf/methods/seqcomm_dfl_1bit.yaml"],
                         ["--model.init_args.world_model_gradient=none"]),
    "rgmcomm": (["conf/matrix.yaml", "conf/methods/rgmcomm.yaml"],
                ["--model.init_args.comm.init_args.n_labels=2"]),
}


def table_args(table: str, shape: tuple[int, int, int] = (2, 2, 4)) -> list[str]:
    if table == "rgmcomm":
        return []
    args = []
    for env in ("env", "eval_env"):
        args += [f"--data.{env}.init_args.table=random",
                 f"--data.{env}.init_args.table_seed={int(table)}",
                 f"--data.{env}.init_args.n_obs1={shape[0]}",
                 f"--data.{env}.init_args.n_actions={shape[1]}",
                 f"--data.{env}.init_args.n_obs2={shape[2]}"]
    pairs = shape[0] * shape[2]  # the exhaustive evaluation: one copy per (o1, o2) pair
    return args + [f"--data.eval_envs={pairs}", f"--data.eval_episodes={pairs}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="+", default=["rgmcomm", "1", "2", "3"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--updates", type=int, default=600)
    parser.add_argument("--method", choices=list(STACKS), default="seqcomm_dfl_1bit")
    parser.add_argument("--shape", nargs=3, type=int, default=[2, 2, 4],
                        metavar=("N_OBS1", "N_ACTIONS", "N_OBS2"),
                        help="random tables' shape (the paper's: 2 2 4)")
    parser.add_argument("--root", default=None, help="default: runs/matrix_one_bit[_<method>]")
    args, overrides = parser.parse_known_args()  # the rest goes to every `seqcomm fit`
    stack, extra = STACKS[args.method]
    extra = extra + overrides
    suffix = "" if args.method == "seqcomm_dfl_1bit" else f"_{args.method}"
    root = args.root or str(REPO / "runs" / f"matrix_one_bit{suffix}")
    frames = 64 + (args.updates - 1) * 32  # conf/matrix.yaml: 32 copies, 64 warm-up chunks
    print("| table | no comm | best 1 bit | " + " | ".join(f"seed {s}" for s in args.seeds)
          + " | reached | labels at the best message |")
    print("| --- |" + " ---: |" * (len(args.seeds) + 4))
    for table in args.tables:
        values = RGMCOMM_TABLE if table == "rgmcomm" else random_table(*args.shape, int(table))
        best, _ = best_message_value(values, 2)
        got, labelled = [], []
        for seed in args.seeds:
            name = f"table_{table}_s{seed}"
            cmd = [sys.executable, "-m", "seqcomm.cli", "fit"]
            for f in stack:
                cmd += ["--config", f]
            cmd += table_args(table, args.shape) + extra + [
                f"--seed_everything={seed}",
                f"--data.total_frames={frames}", f"--trainer.val_check_interval={args.updates}",
                f"--run_name={name}", f"--trainer.default_root_dir={root}",
                "--wandb", "false"]
            subprocess.run(cmd, cwd=REPO, capture_output=True, check=False)
            summary = Path(root) / name / "version_0" / "summary.json"
            got.append(json.loads(summary.read_text())["eval"]["return"]
                       if summary.exists() else None)
            labelled.append(labels_value(summary.parent / "labels.json", values))
        cells = ["failed" if g is None else f"{g:.3f}" for g in got]
        hits = sum(g is not None and abs(g - best) < 0.05 for g in got)
        labels = (f"{sum(abs(v - best) < 0.05 for v in labelled if v is not None)}/{len(got)}"
                  if any(v is not None for v in labelled) else "-")
        print(f"| {table} | {no_comm_value(values):.3f} | {best:.3f} | " + " | ".join(cells)
              + f" | {hits}/{len(got)} | {labels} |", flush=True)


def labels_value(path: Path, table) -> float | None:
    """The message value of agent 2's final labels in an RGMComm run's ``labels.json`` (its
    observations are named by their one-hot index, ``n_obs1 + o2``); None without one."""
    if not path.exists():
        return None
    sender = json.loads(path.read_text())[1]
    n_obs1, n_obs2 = table.shape[0], table.shape[2]
    by_obs = {int(name) - n_obs1: label for name, label in zip(sender["obs"], sender["label"],
                                                                strict=True)}
    if sorted(by_obs) != list(range(n_obs2)):
        return None
    return message_value(table, tuple(by_obs[o] for o in range(n_obs2)))


if __name__ == "__main__":
    main()
