"""Message-label maps: the label each sender emits per observation (RGMComm figs. 6 and 8),
as a table and a PNG heatmap written into the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def label_table(obs: torch.Tensor, labels: torch.Tensor, max_obs: int = 48) -> list[dict]:
    """Per sender, its distinct observations (the ``max_obs`` most frequent), the
    majority label of each and how often it is seen. ``obs [n, N, D]``, ``labels [n, N]``.

    Observations are named by their non-zero entries (one-hot parts of the tasks' encodings);
    an observation history can give one observation several labels: the majority is kept
    and its share reported.
    """
    tables = []
    n_labels = int(labels.max()) + 1
    for i in range(obs.shape[0]):  # once per run: not a hot path
        rows, inverse, counts = torch.unique(obs[i], dim=0, return_inverse=True,
                                             return_counts=True)
        votes = torch.zeros(len(rows), n_labels).index_put_(
            (inverse, labels[i].long()), torch.ones(len(inverse)), accumulate=True)
        order = counts.argsort(descending=True)[:max_obs]  # the most frequent, then
        order = order[torch.tensor(sorted(range(len(order)),  # in observation order
                                          key=lambda k: rows[order[k]].tolist()[::-1]))]
        tables.append({
            "sender": i,
            "obs": [_name(rows[k]) for k in order.tolist()],
            "label": votes[order].argmax(-1).tolist(),
            "share": (votes[order].amax(-1) / counts[order]).tolist(),
            "count": counts[order].tolist(),
        })
    return tables


def _name(row: torch.Tensor) -> str:
    nz = row.nonzero().flatten().tolist()
    return "+".join(map(str, nz)) if 0 < len(nz) <= 4 else f"#{hash(tuple(row.tolist())) % 997}"


def write_label_map(run_dir: str | Path, tables: list[dict], n_labels: int) -> Path:
    """``labels.json`` and ``labels.png`` (rows: senders; columns: observations; colour and
    text: the label) in ``run_dir``; returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "labels.json").write_text(json.dumps(tables, indent=1))
    width = max(len(t["obs"]) for t in tables)
    grid = torch.full((len(tables), width), float("nan"))
    for r, t in enumerate(tables):
        grid[r, : len(t["label"])] = torch.tensor(t["label"], dtype=torch.float)
    fig, axes = plt.subplots(len(tables), 1, squeeze=False,
                             figsize=(max(4.0, 0.45 * width + 1.5), 1.1 * len(tables) + 0.6))
    for r, t in enumerate(tables):
        ax = axes[r, 0]
        ax.imshow(grid[r : r + 1].numpy(), cmap="tab10", vmin=0, vmax=9, aspect="auto")
        for c, lab in enumerate(t["label"]):
            ax.text(c, 0, str(lab), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(t["obs"])), t["obs"], rotation=90, fontsize=7)
        ax.set_yticks([0], [f"sender {t['sender']}"])
    fig.suptitle(f"message label per observation (|M| = {n_labels})", fontsize=9)
    fig.tight_layout()
    path = run_dir / "labels.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
