"""Does a trained run's base round select senders? Greedy play as trained and with the base
round's attention weights made uniform (its query zeroed: every delivered other weighs the
same, so the context is the attended values' plain mean), and how sharp the weights are in
greedy play as trained.

For SeqComm-DFL runs with ``base_attention: true`` (e.g. ``ablations/base_pool/attention.yaml``).

    python benchmarks/base_attention_use.py RUN_DIR [RUN_DIR ...] [--episodes 128]

Columns: the task's metric (``won`` on microcombat, else the return) as trained and with uniform
weights; the weights' entropy over the other agents divided by its maximum ``log(n - 1)`` (1:
uniform, 0: one sender), the mean largest weight, and the share of receivers whose largest
weight is above 0.9 (time steps, episodes and receivers pooled).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from hospital_decisions import load_run
from message_use import greedy_metrics

from seqcomm.comm.messages import masked_attention


def base_weights(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """The base round's weights ``[..., n_recv, n_send]`` over the other agents, everyone
    delivered (greedy play): the messenger's own attention with the identity as values."""
    eye = torch.eye(query.shape[-2], dtype=query.dtype, device=query.device)
    return masked_attention(query, key, eye.expand(*query.shape[:-1], -1), 1 - eye)


def sharpness(weights: torch.Tensor) -> tuple[float, float, float]:
    """Normalised entropy, mean largest weight, share of rows with a weight above 0.9."""
    n_other = weights.shape[-1] - 1
    entropy = -(weights * weights.clamp_min(1e-12).log()).sum(-1) / math.log(n_other)
    largest = weights.amax(-1)
    return entropy.mean().item(), largest.mean().item(), (largest > 0.9).float().mean().item()


def probe(run: Path, episodes: int) -> tuple[float, float, tuple[float, float, float]]:
    model, data = load_run(run)
    comm = model.net.comm
    if not getattr(comm, "base_attention", False) or not getattr(comm, "base_round", False):
        raise SystemExit(f"{run}: the run's messenger has no base-round attention "
                         "(model.comm.init_args.base_attention: true)")
    seen: dict[str, list[torch.Tensor]] = {"query": [], "key": []}
    hooks = [module.register_forward_hook(
        lambda _m, _i, out, name=name: seen[name].append(out.flatten(0, -3)))
        for name, module in (("query", comm.base_query), ("key", comm.base_key))]
    as_trained = greedy_metrics(model, data, episodes, silent=False)
    for hook in hooks:
        hook.remove()
    weights = base_weights(torch.cat(seen["query"]), torch.cat(seen["key"]))
    zero_query = comm.base_query.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out))
    uniform = greedy_metrics(model, data, episodes, silent=False)
    zero_query.remove()
    metric = "won" if "won" in as_trained else "return"
    return as_trained[metric], uniform[metric], sharpness(weights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--episodes", type=int, default=128)
    args = parser.parse_args()
    print("| run | as trained | uniform weights | entropy / log(n - 1) | largest weight "
          "| largest > 0.9 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for run in args.runs:
        trained, uniform, (entropy, largest, sharp) = probe(run, args.episodes)
        print(f"| {run} | {trained:.3f} | {uniform:.3f} | {entropy:.3f} | {largest:.3f} "
              f"| {sharp:.3f} |", flush=True)


if __name__ == "__main__":
    main()
