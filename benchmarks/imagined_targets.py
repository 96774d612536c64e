"""How far SeqComm-DFL's imagined TD targets sit from the real ones, on a trained run's replay.

Loads a finished run with a world model (``config.yaml``, ``checkpoints/last.ckpt`` with its
replay buffer) and, on ``--samples`` replay batches, compares the targets the imagined TD term
regresses on (``SeqCommDFL.imagined_td_loss``: bootstrapped from the model's predicted
``(s', o', r, terminated)`` at the real ``(s, o, a, M)``) with the real TD targets: their mean
signed and absolute difference before and after the trust region, in reward units and in
units of the RMS real TD residual. The same path fed the real next step instead of the
model's prediction (``perfect``) shows what the bootstrap rule itself adds (the imagined path
takes the target network's own argmax; the real targets follow ``double_q``).

    python benchmarks/imagined_targets.py runs/ladder/seqcomm_dfl_s0/version_0 [RUN ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hospital_decisions import load_run  # benchmarks/ is the script's directory

from seqcomm.dfl.world_model import WorldModelPrediction
from seqcomm.envs.base import OBS, STATE
from seqcomm.learner import NEXT


def real_step(batch) -> WorldModelPrediction:
    """The batch's own next step as a prediction (termination as a saturated logit)."""
    reward = batch[NEXT, "reward"].to(batch[NEXT, STATE].dtype)
    terminated = batch[NEXT, "terminated"].to(reward.dtype)
    return WorldModelPrediction(next_state=batch[NEXT, STATE], next_obs=batch[NEXT, *OBS],
                                reward=reward, terminated_logit=(2 * terminated - 1) * 50)


@torch.no_grad()
def target_gaps(model, batch) -> dict[str, float]:
    """Mean signed / absolute gap of the imagined targets to the real ones (``model``: the
    world model's prediction; ``perfect``: the real next step), raw and after the trust
    region, and the RMS real TD residual."""
    _, cache = model.td_loss(batch)
    real = cache["target"]
    out = {"rms_residual": (cache["q_tot"] - real).pow(2).mean().sqrt().item()}
    for name, pred in (("model", model.imagine(batch, cache)), ("perfect", real_step(batch))):
        imagined = model.imagined_td_loss(batch, cache, pred)[1]
        for kind, target in (("raw", imagined), ("clipped", model.trust_region(imagined, cache))):
            gap = target - real
            out[f"{name}_{kind}_signed"] = gap.mean().item()
            out[f"{name}_{kind}_abs"] = gap.abs().mean().item()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--samples", type=int, default=8, help="replay batches per run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| run | RMS residual | model: signed / abs | clipped: signed / abs "
          "| perfect: signed / abs |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for run in args.runs:
        torch.manual_seed(args.seed)
        model, data = load_run(run, replay=True)
        if getattr(model, "world_model", None) is None:
            raise SystemExit(f"{run}: no world model in this run (world_model_gradient none?)")
        model.train()  # the training step's messenger (its dropout included)
        rows = [target_gaps(model, data.buffer.sample()) for _ in range(args.samples)]
        m = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
        print(f"| {run} | {m['rms_residual']:.3f} | {m['model_raw_signed']:+.3f} / "
              f"{m['model_raw_abs']:.3f} | {m['model_clipped_signed']:+.3f} / "
              f"{m['model_clipped_abs']:.3f} | {m['perfect_raw_signed']:+.3f} / "
              f"{m['perfect_raw_abs']:.3f} |")


if __name__ == "__main__":
    main()
