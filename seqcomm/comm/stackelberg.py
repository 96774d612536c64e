"""SeqComm-DFL's Stackelberg sequential messenger (docs/method.md §2.1-2.3).

Per step: base messages ``m_i = phi(h_i)`` broadcast to every other agent, the leader
included (stage 1); a speaking order ``pi`` (stage 2); each agent refines its message from its
own and its predecessors' base messages, ``m'_{pi_k} = rho(m_{pi_k}, attend(h_{pi_k},
M_{pi_1..pi_k}))``, and each follower also attends to its predecessors' refined messages
(stage 3). A receiver's context is ``[attend(others' base messages), attend(predecessors'
refined messages)]``. Every attention is one batched pass with a mask permuted by ``pi`` (no
loop over agents).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from seqcomm.comm.base import Communication, MessageOutput
from seqcomm.comm.messages import (
    MessageBound,
    MessageEncoder,
    MessageKind,
    expand_to_deliver,
    masked_attention,
    masked_mean,
    others_mask,
)
from seqcomm.comm.ordering import Ordering, OrderingMode

BaseMessage = Literal["encoded", "hidden"]
BASE_MESSAGES: tuple[str, ...] = get_args(BaseMessage)
BasePool = Literal["mean", "concat", "both"]
BASE_POOLS: tuple[str, ...] = get_args(BasePool)


class SeqCommMessenger(Communication):
    """Sequential (leader-follower) messages; ``ctx_dim = 2 msg_dim`` (``msg_dim`` without
    the base round, ``hidden_dim + msg_dim`` with ``base_message: hidden``, ``n`` times the
    base part under ``base_pool: concat``, the base round's part alone without the
    refinement). With no message
    delivered every attention is fully masked, so the context is zero and no gradient reaches
    the messenger (``zero_when_silent``).

    Args:
        hidden_dim: size of the agent's recurrent state ``h_i``.
        n_agents: number of agents.
        message: ``"continuous"`` or ``"discrete"`` (see ``MessageEncoder``).
        msg_dim: message size ``d_m``.
        bound: ``"tanh"`` or ``"norm"``, how continuous messages are bounded (see
            ``MessageEncoder``).
        n_labels: alphabet size ``|M|`` of discrete messages.
        ordering: ``"prosocial"``, ``"fixed"`` or ``"random"`` (see ``Ordering``).
        fixed_order: leader-first agent order of ``"fixed"`` (default: index order).
        gumbel_noise: sample discrete labels with Gumbel noise in training.
        logit_bound: bound of the label logits (see ``MessageEncoder``).
        straight_through: labels pass the straight-through gradient (see ``MessageEncoder``).
        tau: temperature of the Gumbel-softmax and of the soft sort.
        attn_dim: size of the attention queries and keys.
        base_round: every receiver also hears the others' base messages (stage 1; the
            context doubles to ``2 msg_dim``). ``false``: only followers hear anything, the
            leaders' refined messages (RGMComm's one-way few-bit setting on the matrix game).
        base_message: what the base round broadcasts: ``"encoded"``, the bounded message
            ``phi(h_i)``; ``"hidden"``, the recurrent state ``h_i`` itself, as SeqComm's
            negotiation and CommNet share it (the base round's context is then ``hidden_dim``
            wide; the refinement still reads ``phi(h_i)``).
        refinement: followers also hear the leaders' refined messages (stage 3). ``false``
            (an ablation; needs ``base_round: true``): receivers hear the base round only, the
            messages are the base messages and the order is unused.
        base_attention: the base round attends over the senders (``true``); ``false``: each
            receiver gets the delivered others' values pooled by ``base_pool`` (the base
            query and key are then unused).
        base_attention_detach: the base round's query and key read detached states, so TD
            trains the attention's own weights but reaches the bodies only through the
            values, as under the mean (its query and key otherwise pass gradient into every
            agent's body).
        base_query_zero_init: the base round's query starts at zero (weights and bias), so
            its weights start uniform, the plain mean of ``base_pool: mean``, and TD moves
            them off the mean as far as selecting a sender pays (the other parameters are
            drawn as without it, so a seed's runs differ only there).
        base_pool: without base attention, ``"mean"``: the plain mean of the delivered
            others' values, CommNet's channel under ``base_message: hidden``; ``"concat"``:
            every sender's value in a slot of its own (sender index order, the receiver's own
            and undelivered senders' slots zero), so the base context is ``n`` times wider
            and says who sent what, as SeqComm's negotiation hands every agent each other
            agent's hidden state. The mean superposes what the senders' states encode alike
            (hospital's "a risk I see", whoever sees it): with 4 specialists the leader's
            context read the bit it needs at 0.74-0.85, with slots at 1.00 (docs/results.md,
            section 42).
            CommNet's ``sender_slots`` is the same remedy for CommNet's mean (section 34).
            ``"both"``: the mean followed by the slots (``n + 1`` values wide): one set of
            receiver weights for what a state says whoever sends it, learned from every
            sender, beside the slots' weights per sender. With 4 hospital specialists it
            routes as the slots do; on 3m sight neither wins as the mean does (section 43).
        refinement_gate: followers add the leaders' refined messages through a learned scalar
            gate that starts at zero (with the base round): a receiver starts from the base
            round's context alone and TD opens the refinement as far as it pays (on 3m sight
            the ungated refinement cost under plain TD: docs/results.md, section 34).
        refinement_detach: the messages ``phi(h_i)``, the refinement and the receivers'
            attention to the refined messages read detached states, so neither TD nor a message
            loss reaches the agents' bodies through them (only a ``base_message: hidden`` base
            round reads ``h_i`` with its gradient); their own weights still learn. On 3m
            sight the refinement cost under plain TD (docs/results.md, section 35).
        refinement_dropout: message dropout (Kim et al., 2019) on the followers' refinement
            context: in training mode each receiver's refinement part is zeroed with this
            probability (the rest scaled by ``1 / (1 - p)``, so evaluation reads it unscaled),
            so receivers cannot come to rest on it alone; the base part is untouched. On 3m
            sight the policies read the refinement against their interest late in training
            (docs/results.md, sections 34 and 37).
    """

    zero_when_silent = True

    def __init__(
        self,
        hidden_dim: int = 64,
        n_agents: int = 2,
        message: MessageKind = "continuous",
        msg_dim: int = 16,
        n_labels: int = 2,
        ordering: OrderingMode = "prosocial",
        fixed_order: list[int] | None = None,
        tau: float = 1.0,
        attn_dim: int = 32,
        gumbel_noise: bool = True,
        logit_bound: float = 0.0,
        straight_through: bool = True,
        base_round: bool = True,
        bound: MessageBound = "tanh",
        base_message: BaseMessage = "encoded",
        refinement: bool = True,
        base_attention: bool = True,
        refinement_gate: bool = False,
        refinement_detach: bool = False,
        refinement_dropout: float = 0.0,
        base_pool: BasePool = "mean",
        base_attention_detach: bool = False,
        base_query_zero_init: bool = False,
    ) -> None:
        super().__init__(hidden_dim, n_agents)
        if base_message not in BASE_MESSAGES:
            raise ValueError(f"base_message={base_message!r}; choose one of {BASE_MESSAGES}")
        if base_message == "hidden" and not base_round:
            raise ValueError("base_message: hidden is what the base round broadcasts; it needs "
                             "base_round: true")
        if not refinement and not base_round:
            raise ValueError("refinement: false leaves only the base round; it needs "
                             "base_round: true")
        if base_pool not in BASE_POOLS:
            raise ValueError(f"base_pool={base_pool!r}; choose one of {BASE_POOLS}")
        if base_pool != "mean" and (base_attention or not base_round):
            raise ValueError(f"base_pool={base_pool!r} pools the base round without attention; "
                             "it needs base_round: true and base_attention: false")
        for name, on in (("base_attention_detach", base_attention_detach),
                         ("base_query_zero_init", base_query_zero_init)):
            if on and not (base_attention and base_round):
                raise ValueError(f"{name} changes the base round's attention; it needs "
                                 "base_round: true and base_attention: true")
        if not 0.0 <= refinement_dropout < 1.0:
            raise ValueError(f"refinement_dropout={refinement_dropout}; a probability in [0, 1)")
        if message == "discrete" and not straight_through and base_round:
            raise ValueError("discrete labels without straight_through learn only from the "
                             "exact label scoring, which needs base_round: false; set "
                             "straight_through: true or base_round: false")
        self.encoder = MessageEncoder(hidden_dim, message, msg_dim, n_labels, tau, gumbel_noise,
                                      logit_bound, straight_through, bound)
        self.ordering = Ordering(hidden_dim, ordering, tau, fixed_order)
        self.base_round = base_round
        self.base_message = base_message
        self.refinement = refinement
        self.base_attention = base_attention
        self.base_pool = base_pool
        self.base_attention_detach = base_attention_detach
        self.refinement_detach = refinement_detach
        self.refinement_dropout = refinement_dropout
        # the base round's keys and values read phi(h_i), or h_i itself under "hidden"
        base_in = hidden_dim if base_message == "hidden" else msg_dim
        heard = base_in * {"mean": 1, "concat": n_agents, "both": n_agents + 1}[base_pool]
        self.ctx_dim = (heard + msg_dim if refinement else heard) if base_round else msg_dim
        self.base_ctx_dim = heard if base_round else 0  # the context's leading base part
        self.discrete = self.encoder.discrete
        self.scores_labels = self.discrete and not base_round
        raw_dim = self.encoder.raw_dim
        # stage 1 context: attend from h_j to the others' base messages
        attends = base_round and base_attention
        self.base_query = nn.Linear(hidden_dim, attn_dim) if attends else None
        self.base_key = nn.Linear(base_in, attn_dim) if attends else None
        self.base_value = nn.Linear(base_in, base_in) if base_round else None
        if base_query_zero_init:  # after every draw, so the other parameters are unchanged
            nn.init.zeros_(self.base_query.weight)
            nn.init.zeros_(self.base_query.bias)
        # refinement rho: attend from h_{pi_k} to its own and its predecessors' base messages;
        # receiver context: attend from h_j to predecessors' refined messages
        self.refine_query = self.refine_key = self.refine_value = self.rho = None
        self.ctx_query = self.ctx_key = self.ctx_value = None
        if refinement:
            self.refine_query = nn.Linear(hidden_dim, attn_dim)
            self.refine_key = nn.Linear(msg_dim, attn_dim)
            self.refine_value = nn.Linear(msg_dim, msg_dim)
            self.rho = nn.Sequential(nn.Linear(raw_dim + msg_dim, hidden_dim), nn.ReLU(),
                                     nn.Linear(hidden_dim, raw_dim))
            self.ctx_query = nn.Linear(hidden_dim, attn_dim)
            self.ctx_key = nn.Linear(msg_dim, attn_dim)
            self.ctx_value = nn.Linear(msg_dim, msg_dim)
        gated = refinement and base_round and refinement_gate
        self.refinement_gate = nn.Parameter(torch.zeros(())) if gated else None

    def forward(
        self,
        h: torch.Tensor,
        deliver: torch.Tensor | None = None,
        scores: torch.Tensor | None = None,
        draw: bool = True,
    ) -> tuple[torch.Tensor, MessageOutput]:
        """Return ``(ctx [*B, n, ctx_dim], out)``; ``draw=False`` skips the refinement's
        dropout (``redraw``).

        ``out``: ``messages`` (refined, ``[*B, n, msg_dim]``), ``base_messages``, ``gp_pred``
        ``[*B, n]``, ``precedence`` ``[*B, n, n]`` (``[..., j, i] = 1`` iff i speaks before
        j), ``order`` ``[*B, n]`` and, for discrete messages only, ``labels`` (one-hot
        ``[*B, n, n_labels]`` of the refined messages) and ``label_probs``. ``scores``
        overrides the ordering keys (see ``Ordering.forward``).
        """
        h, deliver = expand_to_deliver(h, deliver)
        h_msg = h.detach() if self.refinement_detach else h  # what the messages read
        raw = self.encoder.raw(h_msg)
        base, base_labels = self.encoder.emit(raw)
        gp_pred, precedence, order = self.ordering(h, scores)
        if self.refinement:
            # mask[..., j, i]: i speaks before j and i's message is delivered
            mask = precedence * deliver.unsqueeze(-2)
            eye = torch.eye(h.shape[-2], device=h.device, dtype=h.dtype)
            # refinement sees the sender's own base message too (never an empty attention)
            attended = masked_attention(
                self.refine_query(h_msg), self.refine_key(base), self.refine_value(base),
                mask + eye
            )
            refined = raw + self.rho(torch.cat([raw, attended], -1))
            messages, labels = self.encoder.emit(refined)
            ctx = masked_attention(
                self.ctx_query(h_msg), self.ctx_key(messages), self.ctx_value(messages), mask
            )
            if self.refinement_gate is not None:
                ctx = self.refinement_gate * ctx
        else:
            refined, messages, labels, ctx = raw, base, base_labels, None
        if self.base_round:
            others = others_mask(h, deliver)
            sent = h if self.base_message == "hidden" else base
            if self.base_attention:
                detach = self.base_attention_detach
                q_in, k_in = (h.detach(), sent.detach()) if detach else (h, sent)
                heard = masked_attention(
                    self.base_query(q_in), self.base_key(k_in), self.base_value(sent), others
                )
            else:
                values = self.base_value(sent)
                pooled = [masked_mean(others, values)] if self.base_pool != "concat" else []
                if self.base_pool != "mean":  # [*B, n_recv, n_send * d]: one slot per sender
                    pooled.append((others.unsqueeze(-1) * values.unsqueeze(-3)).flatten(-2))
                heard = torch.cat(pooled, -1)
            ctx = heard if ctx is None else torch.cat([heard, ctx], dim=-1)
        probs = None
        if labels is not None:
            probs = torch.softmax(self.encoder.logits(refined), dim=-1)
        undropped = ctx
        if draw and self.drops():
            ctx = self.redraw(ctx)
        return ctx, MessageOutput(messages=messages, base_messages=base, labels=labels,
                                  label_probs=probs, gp_pred=gp_pred, precedence=precedence,
                                  order=order, undropped_ctx=undropped)

    def drops(self) -> bool:
        """Whether the refinement's dropout is on (``refinement_dropout > 0``, training)."""
        return self.refinement and self.refinement_dropout > 0 and self.training

    def redraw(self, ctx: torch.Tensor) -> torch.Tensor:
        """The refinement's dropout on an undropped context ``[*B, n, ctx_dim]``: one draw
        per receiver zeroes its trailing refinement part (``msg_dim`` wide) or scales it by
        ``1 / (1 - p)``; the base part is untouched."""
        p, d = self.refinement_dropout, self.encoder.msg_dim
        keep = torch.rand_like(ctx[..., :1]) >= p
        heard, refined = ctx.split([ctx.shape[-1] - d, d], dim=-1)
        return torch.cat([heard, refined * keep / (1.0 - p)], dim=-1)

    def redraws(self) -> bool:
        """The refinement's dropout is this messenger's only draw unless labels are sampled
        or the order is random."""
        gumbel = self.encoder.discrete and self.encoder.gumbel_noise and self.training
        return not gumbel and self.ordering.mode != "random"

    def samples(self) -> bool:
        """Gumbel labels and the refinement's dropout in training mode, and random orders, draw
        random numbers."""
        return self.drops() or not self.redraws()

    @property
    def message_dim(self) -> int:
        """``msg_dim``."""
        return self.encoder.msg_dim

    def label_contexts(self) -> torch.Tensor:
        """``[|M|, msg_dim]``: the context a receiver gets when its only delivered predecessor
        sends label k (attention over one message puts all weight on it), so a learner can
        score every label exactly instead of through a straight-through sample. Defined
        without the base round only (the one-way few-bit setting)."""
        if not self.discrete or self.base_round:
            raise ValueError("label_contexts needs discrete messages and base_round: false")
        eye = torch.eye(self.encoder.n_labels, device=self.ctx_value.weight.device)
        return self.ctx_value(self.encoder.embed(eye))

    def bits_per_step(self) -> float:
        """Bits per agent and step of the messages someone reads: the base message (stage 1),
        the refined message of every agent but the last speaker, and the 32-bit
        guidance-potential scalar when the order is prosocial (under ``base_message: hidden``
        the base round's 32-bit ``h_i`` too). Without the refinement: the base round only."""
        n = self.n_agents
        if not self.refinement:
            if self.base_message == "hidden":
                return 32.0 * self.hidden_dim
            return self.encoder.bits_per_step()
        heard_refined = (n - 1) / n
        scalar = 32.0 if self.ordering.mode == "prosocial" else 0.0
        if self.base_message == "hidden":
            scalar += 32.0 * self.hidden_dim
        # without the base round (or with h_i in it), a base message phi(h_i) is still read by
        # the refinement of every follower whose refined message someone hears (all but the
        # last two speakers')
        base = 1.0 if self.base_round and self.base_message == "encoded" else (n - 2) / n
        return (base + heard_refined) * self.encoder.bits_per_step() + scalar
