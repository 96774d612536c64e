"""How far SeqComm-DFL's imagined TD targets sit from the real ones, on a trained run's replay.

Loads a finished run with a world model (``config.yaml``, ``checkpoints/last.ckpt`` with its
replay buffer) and, on ``--samples`` replay batches, compares the targets the imagined TD term
regresses on (``SeqCommDFL.imagined_td_loss``: bootstrapped from the model's predicted
``(s', o', r, terminated)`` at the real ``(s, o, a, M)``) with the real TD targets: their mean
signed and absolute difference before and after the trust region, in reward units and in
units of the RMS real TD residual. The same path fed the real next step instead of the
model's prediction (``perfect``) shows what the bootstrap rule itself adds (the imagined path
takes the target network's own argmax; the real targets follow ``double_q``); the model's
prediction with the real next *state* in place of its own (``real s'``) shows how much of the
gap enters through the mixer's reading of the predicted state. Runs trained with
``imagined_actions`` other than ``taken`` are read (and continued) at the replay's joint
actions, the only ones with a real target.

``--tensors`` prints, per world-model tensor, the hypergradient's norm (after the run's own
cap) over the weighted prediction anchor's, and how well the hypergradient agrees between
batches. ``--steps K`` then asks which part of the world model's update moves its targets: from the
run's final model, ``K`` more model steps (a fresh Adam at ``model_lr``, the value networks
fixed) by each of ``--rules``: ``run`` (the run's own rule: the clipped hypergradient plus
``mle_weight`` x the prediction loss's gradient), ``mle`` (the prediction loss alone),
``hypergradient`` (the hypergradient alone) and ``per_tensor`` (the run's rule with each
tensor's hypergradient capped at ``--ratio`` x its anchor), each followed on ``--samples``
held-out replay batches: the imagined targets' mean absolute gap to the real ones in RMS
real residuals, and the prediction loss (the messenger in eval mode: both deterministic).

    python benchmarks/imagined_targets.py runs/ladder/seqcomm_dfl_s0/version_0 [RUN ...]
    python benchmarks/imagined_targets.py RUN --steps 200 --rules run mle per_tensor --ratio 0.1
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from hospital_decisions import load_run  # benchmarks/ is the script's directory

from seqcomm.dfl.world_model import WorldModelPrediction
from seqcomm.envs.base import OBS, STATE
from seqcomm.learner import NEXT

#: rule -> the learner's settings it runs under (``run``: as configured; ``per_tensor``: the
#: hypergradient capped in each tensor at ``--ratio`` x that tensor's anchor)
RULES = {"run": {}, "mle": {"world_model_gradient": "mle"}, "hypergradient": {"mle_weight": 0.0},
         "per_tensor": {"hypergradient_per_tensor": True}}


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
    own = model.imagine(batch, cache)
    for name, pred in (("model", own), ("perfect", real_step(batch)),
                       ("state", own._replace(next_state=batch[NEXT, STATE]))):
        imagined = model.imagined_td_loss(batch, cache, pred)[1]
        for kind, target in (("raw", imagined), ("clipped", model.trust_region(imagined, cache))):
            gap = target - real
            out[f"{name}_{kind}_signed"] = gap.mean().item()
            out[f"{name}_{kind}_abs"] = gap.abs().mean().item()
    return out


@torch.no_grad()
def held_out_gap(model, batches) -> tuple[float, float]:
    """Mean absolute imagined-minus-real target gap in RMS real residuals, and the prediction
    loss, over ``batches`` (the messenger in eval mode: no dropout draws)."""
    model.eval()
    gaps, losses = [], []
    for batch in batches:
        _, cache = model.td_loss(batch)
        pred = model.imagine(batch, cache)
        gap = model.imagined_td_loss(batch, cache, pred)[1] - cache["target"]
        gaps.append(gap.abs().mean() / (cache["q_tot"] - cache["target"]).pow(2).mean().sqrt())
        losses.append(model.world_model.prediction_loss(
            pred, batch[NEXT, STATE], batch[NEXT, *OBS], batch[NEXT, "reward"],
            batch[NEXT, "terminated"]))
    model.train()
    return torch.stack(gaps).mean().item(), torch.stack(losses).mean().item()


def continue_world_model(model, rule: str, batches, ratio: float = 0.1) -> None:
    """One world-model step per batch by ``rule`` (``RULES``; ``per_tensor`` at ``ratio``),
    from a fresh Adam at the run's ``model_lr``; the value networks are not stepped. The inner
    objective is the training step's (``L_model + lambda_aware L_aware``)."""
    settings = dict(RULES[rule], **({"hypergradient_ratio": ratio} if rule == "per_tensor"
                                    else {}))
    saved = {k: model.hparams[k] for k in settings}
    model.hparams.update(settings)
    opt = torch.optim.Adam(model.world_model.parameters(), lr=model.hparams.model_lr)
    try:
        for batch in batches:
            grads, _ = model.world_model_gradients(batch, *outer_step_inputs(model, batch))
            model.hand_step(opt, list(model.world_model.parameters()), grads, counted=True)
    finally:
        model.hparams.update(saved)


def outer_step_inputs(model, batch) -> tuple:
    """``(cache, L_true, L_model + lambda_aware L_aware, prediction)`` as the training step
    builds them for ``SeqCommDFL.world_model_gradients``."""
    td, cache = model.td_loss(batch)
    pred = model.imagine(batch, cache)
    inner = model.imagined_td_loss(batch, cache, pred)[0]
    if model.hparams.lambda_aware and model.net.comm.ctx_dim:
        inner = inner + model.hparams.lambda_aware * model.awareness_loss(batch, cache)
    return cache, td, inner, pred


def tensor_ratios(model, batches) -> tuple[dict[str, float], float]:
    """Per world-model tensor, the hypergradient's norm after the run's own cap (the run's
    gradient minus its weighted anchor) over the weighted anchor's, averaged over
    ``batches``; and the mean cosine of that hypergradient between batches."""
    theta = list(model.world_model.parameters())
    ratios, flat = [], []
    for batch in batches:
        cache, td, inner, pred = outer_step_inputs(model, batch)
        grads, _ = model.world_model_gradients(batch, cache, td, inner, pred)
        mle = model.world_model.prediction_loss(pred, batch[NEXT, STATE], batch[NEXT, *OBS],
                                                batch[NEXT, "reward"], batch[NEXT, "terminated"])
        anchor = [model.hparams.mle_weight * a for a in torch.autograd.grad(mle, theta)]
        hyper = [g - a for g, a in zip(grads, anchor, strict=True)]
        ratios.append([(h.norm() / (a.norm() + 1e-12)).item()
                       for h, a in zip(hyper, anchor, strict=True)])
        flat.append(torch.cat([h.flatten() for h in hyper]))
    names = [n for n, _ in model.world_model.named_parameters()]
    cosines = [torch.nn.functional.cosine_similarity(flat[i], flat[j], 0).item()
               for i in range(len(flat)) for j in range(i + 1, len(flat))]
    return ({n: sum(r[k] for r in ratios) / len(ratios) for k, n in enumerate(names)},
            sum(cosines) / max(len(cosines), 1))


def rule_table(model, data, steps: int, rules: list[str], samples: int,
               ratio: float) -> list[str]:
    """Rows ``| rule | steps | gap | prediction loss |`` from the run's final world model."""
    held = [data.buffer.sample() for _ in range(samples)]
    batches = [data.buffer.sample() for _ in range(steps)]
    start = copy.deepcopy(model.world_model.state_dict())
    def row(rule: str, k: int) -> str:
        gap, loss = held_out_gap(model, held)
        return f"| {rule} | {k} | {gap:.2f} | {loss:.3f} |"
    rows = [row("final model", 0)]
    for rule in rules:
        model.world_model.load_state_dict(start)
        continue_world_model(model, rule, batches, ratio)
        rows.append(row(rule, steps))
    model.world_model.load_state_dict(start)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--samples", type=int, default=8, help="replay batches per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=0,
                        help="world-model steps per rule from the final model (0: none)")
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    parser.add_argument("--ratio", type=float, default=0.1, help="the per_tensor rule's cap")
    parser.add_argument("--tensors", action="store_true",
                        help="per world-model tensor: the hypergradient over its anchor")
    args = parser.parse_args()
    if args.steps < 0 or args.samples < 1 or args.ratio <= 0:
        parser.error(f"--steps {args.steps} must be >= 0, --samples {args.samples} >= 1 and "
                     f"--ratio {args.ratio} > 0")
    print("| run | RMS residual | model: signed / abs | clipped: signed / abs "
          "| perfect: signed / abs | real s': abs |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for run in args.runs:
        torch.manual_seed(args.seed)
        model, data = load_run(run, replay=True)
        if getattr(model, "world_model", None) is None:
            raise SystemExit(f"{run}: no world model in this run (world_model_gradient none?)")
        model.train()  # the training step's messenger (its dropout included)
        model.hparams.imagined_actions = "taken"  # real targets exist at the replay's actions
        rows = [target_gaps(model, data.buffer.sample()) for _ in range(args.samples)]
        m = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
        print(f"| {run} | {m['rms_residual']:.3f} | {m['model_raw_signed']:+.3f} / "
              f"{m['model_raw_abs']:.3f} | {m['model_clipped_signed']:+.3f} / "
              f"{m['model_clipped_abs']:.3f} | {m['perfect_raw_signed']:+.3f} / "
              f"{m['perfect_raw_abs']:.3f} | {m['state_raw_abs']:.3f} |")
        if args.tensors:
            if model.hparams.world_model_gradient == "mle" or model.hparams.mle_weight <= 0:
                raise SystemExit(f"{run}: --tensors compares a hypergradient with its anchor; "
                                 "this run has no hypergradient or no anchor (mle_weight 0)")
            ratios, cosine = tensor_ratios(model, [data.buffer.sample()
                                                   for _ in range(args.samples)])
            print(f"\n{run}: the hypergradient over the weighted anchor, per tensor (its "
                  f"cosine between batches: {cosine:+.2f})\n\n| tensor | ratio |\n| --- | ---: |")
            print("\n".join(f"| {n} | {r:.3f} |" for n, r in ratios.items()) + "\n")
        if args.steps:
            print(f"\n{run}: the world model's targets after more steps by each rule "
                  f"(held-out batches)\n\n| rule | steps | abs gap / RMS residual "
                  f"| prediction loss |\n| --- | ---: | ---: | ---: |")
            print("\n".join(rule_table(model, data, args.steps, args.rules, args.samples,
                                        args.ratio)) + "\n")


if __name__ == "__main__":
    main()
