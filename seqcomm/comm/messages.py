"""Base messages ``m_i = phi(h_i)`` and their masked aggregation (docs/method.md §2.1).

A message is either a bounded continuous vector (``tanh``: in ``(-1, 1)^msg_dim``; ``norm``: in
the ball of radius ``sqrt(msg_dim)``) or one of ``n_labels`` discrete
labels (straight-through Gumbel-softmax, RGMComm-style few-bit messages) embedded into
``R^msg_dim`` so that both kinds feed the same code path downstream.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import nn
from torch.nn import functional as F

MessageKind = Literal["continuous", "discrete"]
MESSAGE_KINDS: tuple[str, ...] = get_args(MessageKind)
MessageBound = Literal["tanh", "norm"]
MESSAGE_BOUNDS: tuple[str, ...] = get_args(MessageBound)


def straight_through_gumbel(
    logits: torch.Tensor, tau: float = 1.0, sample: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(hard, soft)``: an exactly one-hot forward with the gradient of the softmax.

    ``sample=False`` drops the Gumbel noise (deterministic argmax, used in eval mode).
    Written by hand rather than with ``F.gumbel_softmax(hard=True)`` because the latter
    computes ``hard - soft.detach() + soft``, which is not exactly one-hot in floating point.
    """
    if sample:
        gumbels = -torch.empty_like(logits).exponential_().log()
        logits = logits + gumbels
    soft = torch.softmax(logits / tau, dim=-1)
    hard = F.one_hot(soft.argmax(dim=-1), logits.shape[-1]).to(soft.dtype)
    return hard + (soft - soft.detach()), soft


def expand_to_deliver(
    h: torch.Tensor, deliver: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast ``h [*B, n, H]`` against ``deliver`` (broadcastable to ``[*B, n]``).

    Returns ``h`` expanded to the joint batch shape (a view) and ``deliver`` as a float
    tensor of shape ``[*B, n]``; ``deliver=None`` means every message is delivered.
    """
    n = h.shape[-2]
    if deliver is None:
        return h, h.new_ones(h.shape[:-1])
    if deliver.dim() == 0 or deliver.shape[-1] not in (1, n):
        raise ValueError(
            f"deliver must broadcast to [*B, n_agents={n}], got shape {tuple(deliver.shape)}; "
            "pass one 0/1 entry per sender in the last dimension"
        )
    shape = torch.broadcast_shapes(h.shape[:-1], deliver.shape)
    return h.expand(*shape, h.shape[-1]), deliver.to(h.dtype).expand(shape)


def others_mask(h: torch.Tensor, deliver: torch.Tensor) -> torch.Tensor:
    """Who hears whom: ``[*B, n, n]`` with ``[..., j, i] = deliver[..., i]`` for ``i != j`` and
    0 on the diagonal (no agent hears itself). ``h [*B, n, H]`` and ``deliver [*B, n]`` as
    ``expand_to_deliver`` returns them; the mask has ``h``'s dtype and device."""
    n = h.shape[-2]
    return (1 - torch.eye(n, device=h.device, dtype=h.dtype)) * deliver.unsqueeze(-2)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of distributions ``p [*, K]`` over the last dimension (``0 log 0 = 0``)."""
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def masked_mean(mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``[*B, n_recv, d]``: each receiver's plain mean of the senders' ``values [*B, n_send,
    d]`` it may hear (``mask [*B, n_recv, n_send]``); a receiver hearing none gets zero."""
    count = mask.sum(dim=-1, keepdim=True)
    return (mask @ values) / torch.where(count > 0, count, torch.ones_like(count))


def masked_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Scaled dot-product attention of receivers over senders with an exact 0/1 mask.

    Args:
        query: ``[*B, n_recv, d]``; key: ``[*B, n_send, d]``; value: ``[*B, n_send, d_v]``.
        mask: ``[*B, n_recv, n_send]``, 1 = receiver j may attend to sender i, 0 = never.
            It may carry a straight-through gradient (soft precedence).

    A masked entry contributes exactly nothing (zero value and zero gradient w.r.t. that
    sender's key/value) and a row with nothing to attend returns the zero (empty) context.
    Written by hand because ``F.scaled_dot_product_attention`` returns NaN for fully masked
    rows and cannot multiply the weights by a differentiable mask.
    """
    logits = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
    active = mask != 0
    any_active = active.any(dim=-1, keepdim=True)
    # shift by the (detached) max over the active entries; the ratio below is shift-invariant
    neg = torch.finfo(logits.dtype).min
    shift = torch.where(
        any_active,
        logits.masked_fill(~active, neg).amax(dim=-1, keepdim=True),
        logits.amax(dim=-1, keepdim=True),
    ).detach()
    # active entries are <= 0 after the shift; the clamp only keeps inactive ones finite
    weights = mask * torch.exp((logits - shift).clamp(max=20.0))
    total = weights.sum(dim=-1, keepdim=True)
    weights = weights / torch.where(total > 0, total, torch.ones_like(total))
    return weights @ value


class MessageEncoder(nn.Module):
    """Base message generator ``phi`` (docs/method.md §2.1).

    Args:
        hidden_dim: size of the agent's recurrent state ``h_i``.
        kind: ``"continuous"`` (a bounded vector) or ``"discrete"`` (one of
            ``n_labels`` labels, straight-through Gumbel-softmax, embedded to ``msg_dim``).
        msg_dim: size of the message vector (both kinds).
        bound: how a continuous message is bounded: ``"tanh"`` per coordinate, or ``"norm"``,
            scaled into the ball of radius ``sqrt(msg_dim)`` (root-mean-square at most 1, the
            tanh's scale); linear inside the ball, so no coordinate saturates.
        n_labels: alphabet size ``|M|`` of discrete messages.
        tau: Gumbel-softmax temperature of discrete messages.
        gumbel_noise: sample labels with Gumbel noise in training; ``False`` uses the
            deterministic straight-through argmax in training too.
        logit_bound: label logits are squashed to ``(-bound, bound)`` by a scaled tanh; 0
            (the default) disables it. The tanh saturates as the softmax does, so it does not
            stop labels from collapsing; ``SeqCommDFL``'s ``lambda_entropy`` does.
        straight_through: the sampled label passes the softmax gradient to the logits;
            ``False`` makes the sample a constant, so the logits learn only from losses on
            the label probabilities (a TD gradient through the sample rewards whichever label
            raises Q everywhere early on, and the labels collapse onto it).
    """

    def __init__(
        self,
        hidden_dim: int,
        kind: MessageKind = "continuous",
        msg_dim: int = 16,
        n_labels: int = 2,
        tau: float = 1.0,
        gumbel_noise: bool = True,
        logit_bound: float = 0.0,
        straight_through: bool = True,
        bound: MessageBound = "tanh",
    ) -> None:
        super().__init__()
        if kind not in MESSAGE_KINDS:
            raise ValueError(f"message kind must be one of {MESSAGE_KINDS}, got {kind!r}")
        if bound not in MESSAGE_BOUNDS:
            raise ValueError(f"message bound must be one of {MESSAGE_BOUNDS}, got {bound!r}")
        if msg_dim < 1:
            raise ValueError(f"model.comm msg_dim must be >= 1, got {msg_dim}; for no messages "
                             "leave model.comm unset (QMIX)")
        if kind == "discrete" and n_labels < 2:
            raise ValueError(f"discrete messages need n_labels >= 2, got {n_labels}")
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.kind, self.msg_dim, self.n_labels, self.tau = kind, msg_dim, n_labels, tau
        self.gumbel_noise, self.logit_bound = gumbel_noise, logit_bound
        self.straight_through, self.bound = straight_through, bound
        #: size of the pre-message (the vector itself, or the label logits)
        self.raw_dim = msg_dim if kind == "continuous" else n_labels
        self.head = nn.Linear(hidden_dim, self.raw_dim)
        self.embed = nn.Linear(n_labels, msg_dim, bias=False) if kind == "discrete" else None

    @property
    def discrete(self) -> bool:
        return self.kind == "discrete"

    def raw(self, h: torch.Tensor) -> torch.Tensor:
        """Pre-message ``[*B, n, raw_dim]``: the vector (continuous) or label logits."""
        return self.head(h)

    def emit(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Turn a pre-message into ``(message [*B, n, msg_dim], one-hot labels or None)``.

        Discrete labels are sampled with Gumbel noise in training mode and are the
        deterministic argmax in eval mode; the forward is exactly one-hot either way.
        """
        # bounded (docs/method.md §2.1): no loss can win by inflating the scale
        if self.embed is None:
            if self.bound == "tanh":
                return torch.tanh(raw), None
            # the norm's gradient is 0 at 0 (a sqrt of the mean square would give NaN there)
            rms = torch.linalg.vector_norm(raw, dim=-1, keepdim=True) / math.sqrt(raw.shape[-1])
            return raw / rms.clamp(min=1.0), None
        labels, _ = straight_through_gumbel(self.logits(raw), self.tau,
                                            sample=self.training and self.gumbel_noise)
        if not self.straight_through:
            labels = labels.detach()
        return self.embed(labels), labels

    @torch.no_grad()
    def at_bound(self, messages: torch.Tensor) -> torch.Tensor:
        """Share of continuous messages at their bound, where their gradient fades: ``tanh``,
        coordinates beyond 0.95; ``norm``, messages on the sphere (RMS above 0.99)."""
        if self.bound == "tanh":
            return (messages.abs() > 0.95).float().mean()
        return (messages.pow(2).mean(-1) > 0.99).float().mean()

    def logits(self, raw: torch.Tensor) -> torch.Tensor:
        """Label logits of a discrete pre-message, squashed to ``(-logit_bound, logit_bound)``."""
        if self.logit_bound <= 0:
            return raw
        return self.logit_bound * torch.tanh(raw / self.logit_bound)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.emit(self.raw(h))

    def bits_per_step(self) -> float:
        """log2 |M| per agent for discrete labels, 32 bits per float for vectors."""
        return math.log2(self.n_labels) if self.discrete else 32.0 * self.msg_dim
