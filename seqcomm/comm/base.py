"""The interface every message generator implements (docs/method.md §2 and §5).

A ``Communication`` turns the agents' recurrent states ``h`` of shape ``[*B, n, H]`` into the
context each receiver conditions its utility on, ``ctx`` of shape ``[*B, n, ctx_dim]``.
``deliver`` (broadcastable to ``[*B, n]``, 1 = the sender's message is delivered, 0 = it is
replaced by the empty message) lets the learner evaluate counterfactuals (guidance potential,
receiver gains) for many masks in one batched pass by adding a leading mask dimension.
Besides ``ctx`` a messenger returns a ``MessageOutput``: the tensors it produces, ``None``
for the ones it does not.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class MessageOutput(NamedTuple):
    """What a messenger's pass gives besides the context (``None``: not produced by it).

    Attributes:
        messages: the messages sent ``[*B, n, d]`` (SeqComm-DFL: the refined ones; CommNet:
            the hidden states; TarMAC: the values).
        base_messages: SeqComm-DFL's stage-1 messages ``[*B, n, msg_dim]``.
        labels: one-hot discrete labels ``[*B, n, |M|]`` of discrete messengers.
        label_probs: the label probabilities ``[*B, n, |M|]`` of discrete messengers.
        gp_pred: the ordering head's guidance-potential prediction ``[*B, n]``.
        precedence: ``[*B, n, n]``, ``[..., j, i] = 1`` iff i speaks before j.
        order: the speaking (or deciding) order ``[*B, n]``, first to last.
        signatures: TarMAC's keys ``[*B, n, key_dim]``.
        ctx: the receivers' context ``[*B, n, ctx_dim]``; set by ``TeamQ.utilities`` (for
            losses that reuse it), never by a messenger.
        undropped_ctx: the context before the messenger's dropout draw (``Communication.
            redraw``), where it has one.
    """

    messages: torch.Tensor | None = None
    base_messages: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    label_probs: torch.Tensor | None = None
    gp_pred: torch.Tensor | None = None
    precedence: torch.Tensor | None = None
    order: torch.Tensor | None = None
    signatures: torch.Tensor | None = None
    ctx: torch.Tensor | None = None
    undropped_ctx: torch.Tensor | None = None


class Communication(nn.Module):
    """Base class: subclasses set ``ctx_dim`` and implement ``forward``.

    Args:
        hidden_dim: size H of an agent's recurrent state (linked from the agent).
        n_agents: number of agents (linked from the environment's specs).
    """

    ctx_dim: int = 0
    #: size of the context a messenger appends to the receivers' recurrent input
    #: (``input_context``, from the senders' observations); 0: all it says is in ``ctx``
    input_dim: int = 0
    #: True when the messages are discrete labels (``MessageOutput.labels`` and
    #: ``label_probs`` are set; bits per step are then log2 |M|).
    discrete: bool = False
    #: True when ``label_contexts`` gives the context of every label, so a learner can score
    #: each label exactly (SeqComm-DFL's one-way discrete messenger).
    scores_labels: bool = False
    #: True when with no message delivered the context is exactly zero and no gradient
    #: reaches the messenger, so a learner may skip the silent pass (when it draws nothing).
    zero_when_silent: bool = False

    def __init__(self, hidden_dim: int = 64, n_agents: int = 2) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.n_agents = n_agents

    def forward(
        self, h: torch.Tensor, deliver: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, MessageOutput]:
        """Return ``(ctx [*B, n, ctx_dim], out)``; ``out`` holds the extra tensors for the
        losses and logs (messages, order, guidance potential, ...) that this messenger
        produces."""
        raise NotImplementedError

    def observe(self, obs_dim: int) -> None:
        """Told the size of one agent's observation by ``TeamQ`` (for senders that read it)."""

    def input_context(self, obs: torch.Tensor) -> torch.Tensor:
        """``[*B, n, input_dim]``: what each receiver hears at this step, from the senders'
        observations ``obs [*B, n, D]``, appended to its recurrent input (where
        ``input_dim > 0``)."""
        raise NotImplementedError(f"{type(self).__name__} speaks to the utility head")

    @property
    def message_dim(self) -> int:
        """Size of one sent message, ``MessageOutput.messages``' last dimension (default
        ``ctx_dim``)."""
        return self.ctx_dim

    def label_contexts(self) -> torch.Tensor:
        """``[|M|, ctx_dim]``: the context a receiver gets from each label (only where
        ``scores_labels``)."""
        raise NotImplementedError(f"{type(self).__name__} does not score labels")

    def bits_per_step(self) -> float:
        """Bits every agent broadcasts per step (logged as ``comm/bits_per_step``)."""
        return 0.0

    def samples(self) -> bool:
        """Whether a forward pass draws random numbers (so two passes on the same states may
        differ and must not be shared by the learner); subclasses that never do say so."""
        return True

    def redraws(self) -> bool:
        """Whether a pass's only random draw is a dropout on the context it returns: a learner
        may then take a pass's ``MessageOutput.undropped_ctx`` (or a pass with ``draw=False``)
        and ``redraw`` it instead of running a new pass."""
        return False

    def redraw(self, ctx: torch.Tensor) -> torch.Tensor:
        """A fresh dropout draw on an undropped context (where ``redraws``)."""
        raise NotImplementedError(f"{type(self).__name__} has no context dropout")


class NoComm(Communication):
    """No communication: receivers get an empty context (QMIX baseline)."""

    def samples(self) -> bool:
        return False

    def forward(
        self, h: torch.Tensor, deliver: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, MessageOutput]:
        return h.new_zeros(*h.shape[:-1], 0), MessageOutput()
