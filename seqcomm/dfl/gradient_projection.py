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
    """``aux`` with, in every tensor where it opposes ``main`` (negative inner product), its
    component along ``main`` removed; elsewhere unchanged. Per tensor, not over all of them
    at once: the message losses and TD meet on a few modules (the recurrent body, the
    messenger) while most of TD's gradient lies elsewhere (the mixer), where a global inner
    product would hide the conflict. Also returns the global cosine before the projection
    (0 where either is zero). ``None`` entries count as zero gradients."""
    out, dot, aux_sq, main_sq = [], 0.0, 0.0, 0.0
    for a, m in zip(aux, main, strict=True):
        aa = 0.0 if a is None else a.pow(2).sum()
        mm = 0.0 if m is None else m.pow(2).sum()
        aux_sq, main_sq = aux_sq + aa, main_sq + mm
        if a is None or m is None:
            out.append(a)
            continue
        am = (a * m).sum()
        dot = dot + am
        out.append(a - am.clamp(max=0) / mm.clamp_min(1e-30) * m)
    denom = float(aux_sq * main_sq) ** 0.5
    return out, float(dot) / denom if denom > 0 else 0.0


def add_gradients(*grads: Grads) -> list[torch.Tensor | None]:
    """Element-wise sum of gradient lists (``None`` = zero; ``None`` where all are)."""
    out = []
    for parts in zip(*grads, strict=True):
        present = [g for g in parts if g is not None]
        out.append(sum(present[1:], present[0]) if present else None)
    return out
