"""Why a learned 1-bit labelling can miss the best one on the matrix game: the fixed points of
two exact labelling dynamics, over every starting labelling of agent 2's observations.

- ``best response`` (what the value-aware sender and the TD-trained receiver do together):
  the receiver best-responds to each (o1, label) pool, then every sender observation takes
  the label whose current receiver decision is worth most to it (Lloyd's k-means step);
- ``look-ahead`` (Hartigan's k-means step): a sender observation moves to the other label
  only if the team value rises once the receiver has re-best-responded to the new pools.

    python benchmarks/matrix_label_dynamics.py --tables rgmcomm 1 2 3
"""

from __future__ import annotations

import argparse
import itertools

import torch

from seqcomm.envs.matrix import RGMCOMM_TABLE, random_table

Labelling = tuple[int, ...]


def team_value(q: torch.Tensor, labels: Labelling) -> float:
    """Expected return when agent 2 sends ``labels[o2]`` and agent 1 best-responds to each
    (o1, label) pool; ``q [o1, a1, o2]``, observations uniform."""
    lab = torch.tensor(labels)
    pools = torch.nn.functional.one_hot(lab, 2).to(q.dtype)  # [o2, 2]
    per_pool = torch.einsum("iaj,jk->iak", q, pools)  # [o1, a1, label]: pool sums
    return float(per_pool.amax(1).sum() / q[:, 0].numel())


def best_response(q: torch.Tensor, labels: Labelling, rounds: int = 20) -> Labelling:
    for _ in range(rounds):
        pools = torch.nn.functional.one_hot(torch.tensor(labels), 2).to(q.dtype)
        act = torch.einsum("iaj,jk->iak", q, pools).argmax(1)  # [o1, label]
        worth = torch.stack([q.gather(1, act[:, k].view(-1, 1, 1).expand(-1, 1, q.shape[2]))
                             .squeeze(1).sum(0) for k in (0, 1)], -1)  # [o2, label]
        new = tuple(int(k) for k in worth.argmax(-1))
        if new == labels:
            break
        labels = new
    return labels


def look_ahead(q: torch.Tensor, labels: Labelling) -> Labelling:
    while True:
        flips = [tuple(1 - x if i == j else x for i, x in enumerate(labels))
                 for j in range(len(labels))]
        best = max(flips, key=lambda lab: team_value(q, lab))
        if team_value(q, best) <= team_value(q, labels) + 1e-12:
            return labels
        labels = best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="+", default=["rgmcomm", "1", "2", "3"])
    args = parser.parse_args()
    print("| table | best 1 bit | best-response fixed points (value) | starts reaching the best: "
          "best response | look-ahead |")
    print("| --- | ---: | --- | ---: | ---: |")
    for name in args.tables:
        values = RGMCOMM_TABLE if name == "rgmcomm" else random_table(2, 2, 4, int(name))
        q = torch.as_tensor(values, dtype=torch.float64)
        starts = list(itertools.product((0, 1), repeat=q.shape[2]))
        best = max(team_value(q, s) for s in starts)
        fixed = sorted({s for s in starts if best_response(q, s) == s and len(set(s)) > 1},
                       key=lambda s: -team_value(q, s))
        hits = [sum(abs(team_value(q, dyn(q, s)) - best) < 1e-9 for s in starts)
                for dyn in (best_response, look_ahead)]
        shown = ", ".join(f"{''.join(map(str, s))} ({team_value(q, s):.3f})" for s in fixed)
        print(f"| {name} | {best:.3f} | {shown} | {hits[0]}/{len(starts)} | "
              f"{hits[1]}/{len(starts)} |")


if __name__ == "__main__":
    main()
