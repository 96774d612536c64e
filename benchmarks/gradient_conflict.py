"""Whether SeqComm-DFL's message losses push against TD, batch by batch, as the w step sees it.

Loads a SeqComm-DFL run (``config.yaml``, ``checkpoints/last.ckpt`` with its replay) and, on
``--samples`` replay batches, splits the w step's gradient as ``message_gradient: project``
does: the TD losses' part (real and imagined, with the run's weights) and the message losses'
part (every other term the w step weighs). Per batch it prints their cosine and the ratio of
norms (message / TD) over all of w and per parameter group, and the share of the message
gradient's squared norm in parameter tensors where it opposes TD's (what the per-tensor
projection acts on; docs/results.md section 25).

    python benchmarks/gradient_conflict.py runs/mc_sight_early/s0 --samples 4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hospital_decisions import load_run
from message_gradients import parameter_groups

from seqcomm.seqcomm_dfl import TD_LOSSES


def split_gradients(model, batch, w: list) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The TD losses' and the message losses' gradients on ``w`` (zeros where unused)."""
    td, cache = model.td_loss(batch)
    losses = {"td": td, "model_td": td * 0, **model.message_losses(batch, cache)}
    pred = model.imagine(batch, cache)
    if pred is not None:
        losses["model_td"] = model.imagined_td_loss(batch, cache, pred)[0]
    weights = model.loss_weights(imagined=pred is not None)

    def grad(names: list[str]) -> list[torch.Tensor]:
        loss = sum(weights[n] * losses[n] for n in names)
        grads = torch.autograd.grad(loss, w, allow_unused=True, retain_graph=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(w, grads, strict=True)]

    return (grad([n for n in weights if n in TD_LOSSES]),
            grad([n for n in weights if n not in TD_LOSSES]))


def cosine_and_ratio(td: list[torch.Tensor], msg: list[torch.Tensor]) -> tuple[float, float]:
    a, b = torch.cat([g.flatten() for g in td]), torch.cat([g.flatten() for g in msg])
    return (a @ b / (a.norm() * b.norm()).clamp_min(1e-12)).item(), (
        b.norm() / a.norm().clamp_min(1e-12)).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--samples", type=int, default=4, help="replay batches per run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for run in args.runs:
        torch.manual_seed(args.seed)
        model, data = load_run(run, replay=True)
        model.train()
        w = [p for p in model.net.parameters() if p.requires_grad]
        groups = {id(p): name for name, ps in parameter_groups(model).items() for p in ps}
        print(f"\n{run}: cosine with TD / message norm over TD norm, per replay batch")
        print("| batch | all of w | messenger | agent body | receiver head | "
              "message sq-norm in conflicting tensors |")
        print("| ---: | --- | --- | --- | --- | ---: |")
        for s in range(args.samples):
            td, msg = split_gradients(model, data.buffer.sample(), w)
            cells = [cosine_and_ratio(td, msg)]
            for name in ("messenger", "agent body", "receiver head"):
                idx = [i for i, p in enumerate(w) if groups.get(id(p)) == name]
                cells.append(cosine_and_ratio([td[i] for i in idx], [msg[i] for i in idx]))
            conflict = sum(m.pow(2).sum() for t, m in zip(td, msg, strict=True)
                           if (t * m).sum() < 0) / sum(m.pow(2).sum() for m in msg)
            print(f"| {s} | " + " | ".join(f"{c:+.2f} / {r:.2f}" for c, r in cells)
                  + f" | {float(conflict):.2f} |")


if __name__ == "__main__":
    main()
