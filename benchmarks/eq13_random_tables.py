"""Is RGMComm's Eq. 13 minimiser the best 1-bit message on random matrix tables? Exact, no
learning.

For each seeded random table (``seqcomm.envs.matrix.random_table``) and each weight ``lambda``
of the information term, scores every labelling of agent 2's observations by Eq. 13
(``clustering_loss``) on the exact Eq. 5 vectors (one per o2, agent 1's observations uniform,
activated as the learner does) and compares the value of the lowest-scoring labelling (the
worst among ties) with the brute-force best message (``best_message_value``). A learner that
finds Eq. 13's minimum exactly reaches the best message only on the tables counted here.

    python benchmarks/eq13_random_tables.py --tables 1-40 --weights 0 0.5 1 2
"""

from __future__ import annotations

import argparse
import itertools

import torch
from torch.nn import functional as F

from seqcomm.comm.rgmcomm import activate_q, clustering_loss
from seqcomm.envs.matrix import best_message_value, message_value, random_table


def minimiser_values(table: torch.Tensor, n_labels: int, weights: list[float]) -> list[float]:
    """For each ``lambda``: the value of Eq. 13's minimising labelling (worst of ties)."""
    n_obs2 = table.shape[2]
    vectors = activate_q(table.permute(2, 0, 1).reshape(n_obs2, -1) / table.shape[0])
    labellings = list(itertools.product(range(n_labels), repeat=n_obs2))
    probs = F.one_hot(torch.tensor(labellings), n_labels).float()
    out = []
    for w in weights:
        loss = clustering_loss(probs, vectors.expand(len(labellings), *vectors.shape),
                               mi_weight=w)
        ties = (loss <= loss.min() + 1e-6).nonzero().flatten().tolist()
        out.append(min(message_value(table, labellings[i]) for i in ties))
    return out


def table_range(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=table_range, default=table_range("1-40"),
                        help="seeds of the random tables, e.g. 1-40")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0],
                        help="weights lambda of the information term (the learner's mi_weight)")
    parser.add_argument("--shape", type=int, nargs=3, default=[2, 2, 4],
                        metavar=("O1", "A", "O2"), help="table shape (the paper's: 2 2 4)")
    parser.add_argument("--labels", type=int, default=2)
    args = parser.parse_args()
    hits = {w: [] for w in args.weights}
    print("| table | best message | " + " | ".join(f"lambda {w}" for w in args.weights) + " |")
    print("| ---: | ---: |" + " ---: |" * len(args.weights))
    for seed in args.tables:
        table = random_table(*args.shape, seed)
        best, _ = best_message_value(table, args.labels)
        values = minimiser_values(table, args.labels, args.weights)
        for w, v in zip(args.weights, values, strict=True):
            hits[w].append(abs(v - best) < 1e-3)
        print(f"| {seed} | {best:.3f} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    for w in args.weights:
        print(f"lambda {w}: the minimiser is the best message on {sum(hits[w])} of "
              f"{len(hits[w])} tables")


if __name__ == "__main__":
    main()
