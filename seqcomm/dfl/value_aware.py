"""Value-aware message objectives of SeqComm-DFL (DESIGN.md section 2, stage 4).

Messages are trained for the receivers' decision quality. Shapes: ``q_with [n_send, *B,
n_recv, A]`` holds receiver j's utilities when only sender i's message is delivered (the
leading dimension is the counterfactual-mask dimension, row i = "only i delivered");
``q_empty [*B, n_recv, A]`` the utilities with every message replaced by the empty one.
Every function broadcasts over the leading batch dims ``*B``.

Which Q to pass: evaluate ``q_with`` / ``q_empty`` with a frozen evaluator (the target agent
network or the full-information critic of DESIGN.md section 3) applied to the *online*
messages, so the gradient reaches the message parameters only; with the online Q head the
loss would reward messages that merely inflate Q.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _masked_max(q: torch.Tensor, action_mask: torch.Tensor | None) -> torch.Tensor:
    if action_mask is None:
        return q.amax(dim=-1)
    # finite fill: an agent with no available action gets the same value in both terms
    return q.masked_fill(~action_mask.bool(), torch.finfo(q.dtype).min).amax(dim=-1)


def masked_log_softmax(
    q: torch.Tensor, tau: float = 1.0, action_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``log softmax(Q / tau)`` over the available actions (unavailable ones get prob 0)."""
    logits = q / tau
    if action_mask is not None:
        logits = logits.masked_fill(~action_mask.bool(), torch.finfo(q.dtype).min)
    return torch.log_softmax(logits, dim=-1)


def _off_diagonal_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x [n_send, *B, n_recv]`` over all entries with sender != receiver."""
    n_send, n_recv = x.shape[0], x.shape[-1]
    off = ~torch.eye(n_send, n_recv, dtype=torch.bool, device=x.device)
    off = off.reshape(n_send, *([1] * (x.dim() - 2)), n_recv).expand_as(x)
    if not off.any():
        raise ValueError("need at least one sender != receiver pair (n_agents >= 2)")
    return x.masked_select(off).mean()


def receiver_gain(
    q_with: torch.Tensor, q_empty: torch.Tensor, action_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``dQ_j(m_i) = max_a Q_j(m_i, a) - max_a Q_j(empty, a)``, shape ``[n_send, *B, n_recv]``.

    Args:
        q_with: ``[n_send, *B, n_recv, A]`` receiver utilities with only sender i delivered.
        q_empty: ``[*B, n_recv, A]`` receiver utilities with no message delivered.
        action_mask: ``[*B, n_recv, A]`` bool, available actions (None: all available).
    """
    return _masked_max(q_with, action_mask) - _masked_max(q_empty, action_mask)


def value_aware_loss(gain: torch.Tensor) -> torch.Tensor:
    """``L_VA = - mean_{b, i != j} dQ_j(m_i)`` over a gain ``[n_send, *B, n_recv]``."""
    return -_off_diagonal_mean(gain)


def mc_gain(
    logp_with: torch.Tensor, logp_empty: torch.Tensor, advantage: torch.Tensor
) -> torch.Tensor:
    """Score-function Monte-Carlo estimate of the gain, for the warm-up.

    Args:
        logp_with: ``[n_send, *B, n_recv]`` ``log pi_j(a_j | m_i)`` of the action taken.
        logp_empty: ``[*B, n_recv]`` ``log pi_j(a_j | empty)`` of the same action.
        advantage: broadcastable to ``[*B, n_recv]`` (e.g. ``[*B, 1]`` for the team), the
            Monte-Carlo return minus a baseline; detached here.

    Our reading: with ``pi_j = softmax(Q_j / tau)`` (``masked_log_softmax``), the return
    difference between receiver j acting on ``m_i`` and on the empty message is estimated
    at the sampled action by the log-likelihood ratio times the advantage,
    ``gain_ij = A * (log pi_j(a_j|m_i) - log pi_j(a_j|empty))``: the first-order
    (importance-weight) change of the expected return when j's policy switches from the
    empty-message policy to the one conditioned on m_i. It is unbiased only in expectation
    and has high variance, hence only a warm-up before the critic takes over.
    """
    return advantage.detach() * (logp_with - logp_empty)


def warmup_beta(step: int, warmup_steps: int) -> float:
    """``beta_t = min(t / T_w, 1)``; ``warmup_steps = 0`` gives 1 (critic only)."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if warmup_steps == 0:
        return 1.0
    return min(max(step, 0) / warmup_steps, 1.0)


def blended_gain(mc: torch.Tensor, critic: torch.Tensor, beta: float) -> torch.Tensor:
    """``dQ_hat = (1 - beta) dQ_MC + beta dQ_critic``."""
    return (1 - beta) * mc + beta * critic


def policy_kl(
    q_with: torch.Tensor,
    q_empty: torch.Tensor,
    tau: float = 1.0,
    action_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``KL[pi_j(.|m_i) || pi_j(.|empty)]``, shape ``[n_send, *B, n_recv]``."""
    logp_with = masked_log_softmax(q_with, tau, action_mask)
    logp_empty = masked_log_softmax(q_empty, tau, action_mask)
    terms = logp_with.exp() * (logp_with - logp_empty)
    if action_mask is not None:
        terms = torch.where(action_mask.bool(), terms, torch.zeros_like(terms))
    return terms.sum(-1)


def influence_loss(
    q_with: torch.Tensor,
    q_empty: torch.Tensor,
    tau: float = 1.0,
    action_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``L_inf = - mean_{i != j} KL[pi_j(.|m_i) || pi_j(.|empty)]``, ``pi = softmax(Q / tau)``."""
    return -_off_diagonal_mean(policy_kl(q_with, q_empty, tau, action_mask))


def awareness_loss(
    q_tot_msg: torch.Tensor, q_tot_zero: torch.Tensor, margin: float
) -> torch.Tensor:
    """``L_aware = mean relu(margin - |Q_tot(s, a, M) - Q_tot(s, a, 0)|)``: a hinge that keeps
    the mixer from ignoring the messages."""
    return F.relu(margin - (q_tot_msg - q_tot_zero).abs()).mean()


class ReconstructionHead(nn.Module):
    """Decodes the sender's observation from its message: the intermediate objective used
    when ``value_aware: false`` (DESIGN.md section 4).

    Args:
        msg_dim: message size.
        obs_dim: size of the sender's observation.
        hidden_dim: width of the decoder's hidden layer.
    """

    def __init__(self, msg_dim: int, obs_dim: int, hidden_dim: int = 64) -> None:
        super().__init__()
        self.decoder = nn.Sequential(
            nn.Linear(msg_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, obs_dim)
        )

    def forward(self, messages: torch.Tensor) -> torch.Tensor:
        return self.decoder(messages)

    def loss(self, messages: torch.Tensor, sender_obs: torch.Tensor) -> torch.Tensor:
        """MSE between ``decode(messages [*B, n, msg_dim])`` and ``sender_obs [*B, n, obs_dim]``."""
        return F.mse_loss(self(messages), sender_obs)
