"""SeqComm-DFL's Stackelberg sequential messenger (DESIGN.md section 2, stages 1-3).

Per step: base messages ``m_i = phi(h_i)``; a speaking order ``pi``; each agent refines its
message from its predecessors' base messages, ``m_{pi_k} = rho(m_{pi_k}, attend(h_{pi_k},
M_{pi_1..pi_{k-1}}))``; each receiver attends to its predecessors' refined messages. Both
attentions are one batched pass with the causal mask permuted by ``pi`` (no loop over agents).
"""

from __future__ import annotations

import torch
from torch import nn

from seqcomm.comm.base import Communication
from seqcomm.comm.messages import MessageEncoder, expand_to_deliver, masked_attention
from seqcomm.comm.ordering import Ordering


class SeqCommMessenger(Communication):
    """Sequential (leader-follower) messages; ``ctx_dim = msg_dim``.

    Args:
        hidden_dim: size of the agent's recurrent state ``h_i``.
        n_agents: number of agents.
        message: ``"continuous"`` or ``"discrete"`` (see ``MessageEncoder``).
        msg_dim: message size ``d_m``.
        n_labels: alphabet size ``|M|`` of discrete messages.
        ordering: ``"prosocial"``, ``"fixed"`` or ``"random"`` (see ``Ordering``).
        fixed_order: leader-first agent order of ``"fixed"`` (default: index order).
        gumbel_noise: sample discrete labels with Gumbel noise in training.
        logit_bound: bound of the label logits (see ``MessageEncoder``).
        straight_through: labels pass the straight-through gradient (see ``MessageEncoder``).
        tau: temperature of the Gumbel-softmax and of the soft sort.
        attn_dim: size of the attention queries and keys.
    """

    def __init__(
        self,
        hidden_dim: int = 64,
        n_agents: int = 2,
        message: str = "continuous",
        msg_dim: int = 16,
        n_labels: int = 2,
        ordering: str = "prosocial",
        fixed_order: list[int] | None = None,
        tau: float = 1.0,
        attn_dim: int = 32,
        gumbel_noise: bool = True,
        logit_bound: float = 0.0,
        straight_through: bool = True,
    ) -> None:
        super().__init__(hidden_dim, n_agents)
        self.encoder = MessageEncoder(hidden_dim, message, msg_dim, n_labels, tau, gumbel_noise,
                                      logit_bound, straight_through)
        self.ordering = Ordering(hidden_dim, ordering, tau, fixed_order)
        self.ctx_dim = msg_dim
        self.discrete = self.encoder.discrete
        raw_dim = self.encoder.raw_dim
        # refinement rho: attend from h_{pi_k} to predecessors' base messages
        self.refine_query = nn.Linear(hidden_dim, attn_dim)
        self.refine_key = nn.Linear(msg_dim, attn_dim)
        self.refine_value = nn.Linear(msg_dim, msg_dim)
        self.rho = nn.Sequential(
            nn.Linear(raw_dim + msg_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, raw_dim)
        )
        # receiver context: attend from h_j to predecessors' refined messages
        self.ctx_query = nn.Linear(hidden_dim, attn_dim)
        self.ctx_key = nn.Linear(msg_dim, attn_dim)
        self.ctx_value = nn.Linear(msg_dim, msg_dim)

    def forward(
        self,
        h: torch.Tensor,
        deliver: torch.Tensor | None = None,
        scores: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return ``(ctx [*B, n, msg_dim], aux)``.

        ``aux``: ``messages`` (refined, ``[*B, n, msg_dim]``), ``base_messages``, ``gp_pred``
        ``[*B, n]``, ``precedence`` ``[*B, n, n]`` (``[..., j, i] = 1`` iff i speaks before
        j), ``order`` ``[*B, n]`` and, for discrete messages only, ``labels`` (one-hot
        ``[*B, n, n_labels]`` of the refined messages). ``scores`` overrides the ordering
        keys (see ``Ordering.forward``).
        """
        h, deliver = expand_to_deliver(h, deliver)
        raw = self.encoder.raw(h)
        base, _ = self.encoder.emit(raw)
        gp_pred, precedence, order = self.ordering(h, scores)
        # mask[..., j, i]: i speaks before j and i's message is delivered
        mask = precedence * deliver.unsqueeze(-2)

        attended = masked_attention(
            self.refine_query(h), self.refine_key(base), self.refine_value(base), mask
        )
        refined = raw + self.rho(torch.cat([raw, attended], -1))
        messages, labels = self.encoder.emit(refined)
        ctx = masked_attention(
            self.ctx_query(h), self.ctx_key(messages), self.ctx_value(messages), mask
        )
        aux = {
            "messages": messages,
            "base_messages": base,
            "gp_pred": gp_pred,
            "precedence": precedence,
            "order": order,
        }
        if labels is not None:
            aux["labels"] = labels
            aux["label_probs"] = torch.softmax(self.encoder.logits(refined), dim=-1)
        return ctx, aux

    def label_contexts(self) -> torch.Tensor:
        """``[|M|, msg_dim]``: the context a receiver gets when its only delivered predecessor
        sends label k (attention over one message puts all weight on it), so a learner can
        score every label exactly instead of through a straight-through sample."""
        if not self.discrete:
            raise ValueError("label_contexts needs discrete messages")
        eye = torch.eye(self.encoder.n_labels, device=self.ctx_value.weight.device)
        return self.ctx_value(self.encoder.embed(eye))

    def bits_per_step(self) -> float:
        """Base and refined message per agent (the refinement needs the predecessors' base
        messages), plus the 32-bit guidance-potential scalar when the order is prosocial."""
        scalar = 32.0 if self.ordering.mode == "prosocial" else 0.0
        return 2 * self.encoder.bits_per_step() + scalar
