"""One-sided gradient projection: an auxiliary loss may not push against the main one.

PCGrad (Yu et al., 2020, "Gradient Surgery for Multi-Task Learning") projects each task's
gradient off the others' where they conflict. Here the TD loss is the objective and the
message losses serve it, so only the auxiliary gradient yields (written by hand: libraries
such as TorchJD aggregate symmetrically, letting TD's gradient yield too).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Grads = Sequence[torch.Tensor | None]


def project_conflicting(aux: Grads, main: Grads) -> tuple[list[torch.Tensor | None], float]:
    """``aux`` minus its component along ``main`` where their inner product (over all the
    tensors together) is negative, else ``aux`` unchanged; also returns the cosine before the
    projection (0 where either is zero). ``None`` entries count as zero gradients."""
    pairs = [(a, m) for a, m in zip(aux, main, strict=True) if a is not None and m is not None]
    dot = sum((a * m).sum() for a, m in pairs) if pairs else torch.zeros(())
    main_sq = sum(m.pow(2).sum() for m in main if m is not None)
    aux_sq = sum(a.pow(2).sum() for a in aux if a is not None)
    denom = (torch.as_tensor(main_sq) * torch.as_tensor(aux_sq)).sqrt()
    cosine = float(dot / denom) if denom > 0 else 0.0
    if dot >= 0:
        return list(aux), cosine
    scale = dot / main_sq
    out = []
    for a, m in zip(aux, main, strict=True):
        if m is None:
            out.append(a)
        else:
            out.append(-scale * m if a is None else a - scale * m)
    return out, cosine


def add_gradients(*grads: Grads) -> list[torch.Tensor | None]:
    """Element-wise sum of gradient lists (``None`` = zero; ``None`` where all are)."""
    out = []
    for parts in zip(*grads, strict=True):
        present = [g for g in parts if g is not None]
        out.append(sum(present[1:], present[0]) if present else None)
    return out
