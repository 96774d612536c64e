"""Does a trained run's greedy policy use its messages? Evaluate it as trained, and with
every message masked (``deliver = 0``: each receiver's context is the empty one).

Works for any run whose messenger honours ``deliver`` (CommNet, TarMAC, the SeqComm-DFL
messenger, RGMComm). The oracle channel is an input (``oracle_obs``), not messages.

    python benchmarks/message_use.py RUN_DIR [RUN_DIR ...] [--episodes 128] [--zero A:B]

``--zero A:B`` adds a third setting: every message delivered and context columns A..B-1 set to
zero (e.g. a ``SeqCommMessenger``'s refinement part, ``hidden_dim:`` with ``base_message:
hidden``, or its base round's, ``:hidden_dim``): which part of the context the policy rests on.
"""

from __future__ import annotations

import argparse
import types
from pathlib import Path

import torch
from hospital_decisions import load_run, require_head_messages

from seqcomm.envs.reference import evaluate_policy


def silent_utilities(self, h: torch.Tensor, deliver: torch.Tensor | None = None):
    """``TeamQ.utilities`` with no sender delivered."""
    return type(self).utilities(self, h, h.new_zeros(h.shape[:-1]))


def zeroing_utilities(columns: slice):
    """``TeamQ.utilities`` with every message delivered and context ``columns`` zeroed."""
    def utilities(self, h: torch.Tensor, deliver: torch.Tensor | None = None):
        ctx, out = self.comm(h, deliver)
        ctx = ctx.clone()
        ctx[..., columns] = 0
        return self.agent.q(h, ctx), out._replace(ctx=ctx)
    return utilities


@torch.no_grad()
def greedy_metrics(model, data, episodes: int, silent: bool,
                   zero: slice | None = None) -> dict[str, float]:
    if silent:
        model.net.utilities = types.MethodType(silent_utilities, model.net)
    elif zero is not None:
        model.net.utilities = types.MethodType(zeroing_utilities(zero), model.net)
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
    parser.add_argument("--zero", metavar="A:B", default=None,
                        help="also evaluate with context columns A..B-1 zeroed")
    args = parser.parse_args()
    zero = None
    if args.zero is not None:
        lo, _, hi = args.zero.partition(":")
        zero = slice(int(lo) if lo else None, int(hi) if hi else None)
    rows = []
    for run in args.runs:
        model, data = load_run(run)
        require_head_messages(run, model)
        if getattr(model.net.comm, "ctx_dim", 0) == 0:
            raise SystemExit(f"{run}: the run sends no messages (model.comm unset; the oracle "
                             "channel is an input, oracle_obs)")
        heard = greedy_metrics(model, data, args.episodes, silent=False)
        masked = greedy_metrics(model, data, args.episodes, silent=True)
        part = None if zero is None else greedy_metrics(model, data, args.episodes, False, zero)
        rows.append((run, heard, masked, part))
    keys = [k for k in rows[0][1] if k in rows[0][2]]
    third = "" if zero is None else f" / columns {args.zero} zeroed"
    print("| run | " + " | ".join(f"{k}: delivered / masked{third}" for k in keys) + " |")
    print("| --- |" + " --- |" * len(keys))
    for run, heard, masked, part in rows:
        cells = [f"{heard[k]:.3f} / {masked[k]:.3f}" + ("" if part is None else
                                                         f" / {part[k]:.3f}") for k in keys]
        print(f"| {run} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
