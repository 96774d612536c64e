"""Gradients computed with ``torch.autograd.grad`` and assigned to ``p.grad`` by hand bypass
DDP's all-reduce (only ``backward`` / ``manual_backward`` fire its hooks): ``average_gradients``
averages them across the ranks, as DDP would (docs/method.md §7). ``average_across_ranks``
does the same for running statistics each rank would otherwise take from its own data.
Every rank must call these at the same points (they are collectives). ``gather_objects`` and
``own_entry`` keep per-rank state (random generators) in a checkpoint that rank 0 writes."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def world_size() -> int:
    """The number of processes of the default group; 1 when ``torch.distributed`` is not
    initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    """This process's rank in the default group; 0 when ``torch.distributed`` is not
    initialised."""
    return dist.get_rank() if world_size() > 1 else 0


def gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank (a collective);
    ``[obj]`` with one process."""
    n = world_size()
    if n < 2:
        return [obj]
    out: list[T] = [obj] * n
    dist.all_gather_object(out, obj)
    return out


def own_entry(entries: Sequence[T], warn: bool = True) -> T:
    """This rank's entry of a ``gather_objects`` list read from a checkpoint: entry r on rank r,
    entry 0 where the list has none (a checkpoint of fewer ranks or of one process; rank 0 then
    warns in one line unless ``warn`` is off)."""
    n, r = world_size(), rank()
    if warn and r == 0 and len(entries) < n:
        print(f"seqcomm: warning: the checkpoint holds the random generator states of "
              f"{len(entries)} rank(s), not {n}: ranks {len(entries)}..{n - 1} resume with "
              "rank 0's", file=sys.stderr, flush=True)
    return entries[r] if r < len(entries) else entries[0]


def average_across_ranks(x: torch.Tensor) -> torch.Tensor:
    """``x`` averaged over the ranks (a new tensor); ``x`` itself with one process."""
    n = world_size()
    if n < 2:
        return x
    out = x.detach().clone()
    dist.all_reduce(out)
    return out / n


def average_gradients(grads: Sequence[torch.Tensor | None],
                      params: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
    """``grads`` (one per ``params``, ``None`` = unused) averaged over the ranks, in one
    all-reduce. A parameter unused on some ranks counts as a zero gradient there (as under
    DDP's ``find_unused_parameters``); it stays ``None`` only if no rank used it. With one
    process the gradients come back as they are (the same tensors)."""
    n = world_size()
    if n < 2:
        return list(grads)
    if len(grads) != len(params):
        raise ValueError(f"{len(grads)} gradients for {len(params)} parameters")
    ref = params[0]
    flat = [torch.zeros(p.numel(), dtype=ref.dtype, device=ref.device) if g is None
            else g.detach().reshape(-1).to(ref.dtype) for g, p in zip(grads, params, strict=True)]
    used = torch.tensor([g is not None for g in grads], dtype=ref.dtype, device=ref.device)
    buffer = torch.cat([*flat, used])
    dist.all_reduce(buffer)
    sizes = [p.numel() for p in params]
    chunks = buffer.split([*sizes, len(params)])
    out: list[torch.Tensor | None] = []
    for chunk, p, g, count in zip(chunks[:-1], params, grads, chunks[-1].tolist(), strict=True):
        if count == 0:
            out.append(None)
        else:
            dtype = p.dtype if g is None else g.dtype
            out.append((chunk / n).view_as(p).to(dtype))
    return out


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Overwrite ``module``'s parameters and buffers on every rank with rank ``src``'s (for
    state each rank fits on its own data, e.g. RGMComm's label heads); nothing with one
    process."""
    if world_size() < 2:
        return
    for tensor in module.state_dict().values():
        dist.broadcast(tensor, src)
