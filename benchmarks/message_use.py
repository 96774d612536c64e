"""Does a trained run's greedy policy use its messages? Evaluate it as trained, and with
every message masked (``deliver = 0``: each receiver's context is the empty one).

Works for any run whose messenger honours ``deliver`` (CommNet, TarMAC, the SeqComm-DFL
messenger, RGMComm). The oracle channel is an input (``oracle_obs``), not messages.

    python benchmarks/message_use.py RUN_DIR [RUN_DIR ...] [--episodes 128]
"""

from __future__ import annotations

import argparse
import types
from pathlib import Path

import torch
from hospital_decisions import load_run

from seqcomm.envs.reference import evaluate_policy


def silent_utilities(self, h: torch.Tensor, deliver: torch.Tensor | None = None):
    """``TeamQ.utilities`` with no sender delivered."""
    return type(self).utilities(self, h, h.new_zeros(h.shape[:-1]))


@torch.no_grad()
def greedy_metrics(model, data, episodes: int, silent: bool) -> dict[str, float]:
    if silent:
        model.net.utilities = types.MethodType(silent_utilities, model.net)
    try:  # fresh evaluation copies, the same seed for both settings
        env = data.wrap(data.make_eval_env(min(episodes, 32), data.seed() + 1_000_003, "cpu"),
                        model.policy)
        model.policy.greedy = True
        return evaluate_policy(env, model.policy, episodes)
    finally:
        model.net.__dict__.pop("utilities", None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--episodes", type=int, default=128)
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        model, data = load_run(run)
        if getattr(model.net.comm, "ctx_dim", 0) == 0:
            raise SystemExit(f"{run}: the run sends no messages (model.comm unset; the oracle "
                             "channel is an input, oracle_obs)")
        heard = greedy_metrics(model, data, args.episodes, silent=False)
        masked = greedy_metrics(model, data, args.episodes, silent=True)
        rows.append((run, heard, masked))
    keys = [k for k in rows[0][1] if k in rows[0][2]]
    print("| run | " + " | ".join(f"{k}: delivered / masked" for k in keys) + " |")
    print("| --- |" + " --- |" * len(keys))
    for run, heard, masked in rows:
        print(f"| {run} | " + " | ".join(f"{heard[k]:.3f} / {masked[k]:.3f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
