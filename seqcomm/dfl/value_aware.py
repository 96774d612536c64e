"""Value-aware message objectives of SeqComm-DFL (docs/method.md §2.4).

Messages are trained for the receivers' decision quality. Shapes: the counterfactual pass
has a leading mask dimension; ``q_masked [n_send, *B, n_recv, A]`` holds receiver j's
utilities when sender i's message is masked (every other message delivered), ``q_all [*B,
n_recv, A]`` when every message is delivered. A gain ``[n_send, *B, n_recv]`` is the change
in the value of receiver j's decision that sender i's message causes, scored by an evaluator
the message cannot move (the full-information critic, or target networks on target states),
so messages cannot win by inflating the receivers' utilities.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def masked_log_softmax(
    q: torch.Tensor, tau: float = 1.0, action_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``log softmax(Q / tau)`` over the available actions (unavailable ones get prob 0)."""
    logits = q / tau
    if action_mask is not None:
        logits = logits.masked_fill(~action_mask.bool(), torch.finfo(q.dtype).min)
    return torch.log_softmax(logits, dim=-1)


def action_spread(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The standard deviation of ``values [..., A]`` between the available actions of each
    state (centred per state, over the batch): a reward-scale unit for decision gains."""
    mean = (values * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp_min(1)
    return (values - mean)[mask].std().clamp_min(1e-6)


def _off_diagonal_mean(x: torch.Tensor, senders: torch.Tensor | None = None,
                       receivers: torch.Tensor | None = None,
                       n_agents: int | None = None) -> torch.Tensor:
    """Mean of ``x [n_send, *B, n_recv]`` over all entries with sender != receiver; row r
    is sender ``senders[r]`` (default: row i is sender i), column c receiver
    ``receivers[c]`` (default: column j is receiver j).

    With a uniformly drawn sender subset and all receivers, every sender has the same
    number of off-diagonal entries, so the mean is unbiased for the all-senders mean. With a
    receiver subset (drawn independently of the senders, out of ``n_agents``) the count of
    off-diagonal pairs varies, so the sum is divided by its expectation
    ``n_send n_recv (n - 1) / n`` instead (unbiased)."""
    n_send, n_recv = x.shape[0], x.shape[-1]
    if receivers is not None:
        if n_agents is None or n_agents < 2:
            raise ValueError("a receiver subset needs n_agents >= 2")
        rows = (torch.arange(n_agents, device=x.device) if senders is None
                else senders.to(x.device))
        off = rows.unsqueeze(-1) != receivers.to(x.device)
        off = off.reshape(n_send, *([1] * (x.dim() - 2)), n_recv)
        pairs = n_send * n_recv * (n_agents - 1) / n_agents
        return (x * off).sum() / (pairs * x[0, ..., 0].numel())
    if senders is None:
        off = ~torch.eye(n_send, n_recv, dtype=torch.bool, device=x.device)
    else:
        off = senders.to(x.device).unsqueeze(-1) != torch.arange(n_recv, device=x.device)
    off = off.reshape(n_send, *([1] * (x.dim() - 2)), n_recv).expand_as(x)
    if not off.any():
        raise ValueError("need at least one sender != receiver pair (n_agents >= 2)")
    return x.masked_select(off).mean()


def decision_value(
    q: torch.Tensor, values: torch.Tensor, tau: float, action_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``E_{a ~ pi_j} values_j(a)`` with ``pi_j = softmax(Q_j / tau)`` over available actions:
    the value of receiver j's (softened) decision, ``[*B, n_recv]``."""
    return (masked_log_softmax(q, tau, action_mask).exp() * values).sum(-1)


def normalised_advantage(returns: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """``(G - b)`` centred by its batch mean and scaled to unit batch spread (detached): the
    Monte-Carlo advantage of the warm-up, on the same scale as a normalised critic gain."""
    adv = (returns - baseline).detach()
    adv = adv - adv.mean()
    return adv / adv.std().clamp_min(1e-6) if adv.numel() > 1 else adv


def value_aware_loss(gain: torch.Tensor, senders: torch.Tensor | None = None,
                     receivers: torch.Tensor | None = None,
                     n_agents: int | None = None) -> torch.Tensor:
    """``L_VA = - mean_{b, i != j} gain_ij`` over a gain ``[n_send, *B, n_recv]``; with
    subsets, row r is sender ``senders[r]`` and column c receiver ``receivers[c]`` of
    ``n_agents`` (an unbiased estimate, see ``_off_diagonal_mean``)."""
    return -_off_diagonal_mean(gain, senders, receivers, n_agents)


def mc_gain(
    logp_all: torch.Tensor, logp_masked: torch.Tensor, advantage: torch.Tensor
) -> torch.Tensor:
    """Score-function Monte-Carlo estimate of the gain, for the warm-up.

    Args:
        logp_all: ``[*B, n_recv]`` ``log pi_j(a_j | all messages)`` of the action taken.
        logp_masked: ``[n_send, *B, n_recv]`` ``log pi_j(a_j | sender i masked)``.
        advantage: broadcastable to ``[*B, n_recv]`` (e.g. ``[*B, 1]`` for the team): a
            centred, normalised Monte-Carlo advantage (``normalised_advantage``); detached.

    ``gain_ij = A * (log pi_j(a_j | all) - log pi_j(a_j | i masked))``: the first-order change
    of the expected return when j's policy switches from ignoring i's message to hearing it,
    estimated at the sampled action. The masked term is a baseline (detached): its gradient
    would push the *other* senders' messages to be less useful on their own.
    """
    return advantage.detach() * (logp_all - logp_masked.detach())


def warmup_beta(progress: float, warmup_fraction: float) -> float:
    """``beta_t = min(t / T_w, 1)`` with ``t`` and ``T_w`` as fractions of the run
    (``progress`` in [0, 1]); ``warmup_fraction = 0`` gives 1 (critic only)."""
    if not 0.0 <= warmup_fraction <= 1.0:
        raise ValueError(f"warmup_fraction must lie in [0, 1], got {warmup_fraction}")
    if warmup_fraction == 0:
        return 1.0
    return min(max(progress, 0.0) / warmup_fraction, 1.0)


def blended_gain(mc: torch.Tensor, critic: torch.Tensor, beta: float) -> torch.Tensor:
    """``dQ_hat = (1 - beta) dQ_MC + beta dQ_critic``."""
    return (1 - beta) * mc + beta * critic


def policy_kl(
    q_all: torch.Tensor,
    q_masked: torch.Tensor,
    tau: float = 1.0,
    action_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``KL[pi_j(.|all) || pi_j(.|i masked)]``, shape ``[n_send, *B, n_recv]``."""
    logp_all = masked_log_softmax(q_all, tau, action_mask)
    logp_masked = masked_log_softmax(q_masked, tau, action_mask)
    terms = logp_all.exp() * (logp_all - logp_masked)
    if action_mask is not None:
        terms = torch.where(action_mask.bool(), terms, torch.zeros_like(terms))
    return terms.sum(-1)


def influence_loss(
    q_all: torch.Tensor,
    q_masked: torch.Tensor,
    tau: float = 1.0,
    action_mask: torch.Tensor | None = None,
    senders: torch.Tensor | None = None,
) -> torch.Tensor:
    """``L_inf = - mean_{i != j} KL[pi_j(.|all) || pi_j(.|i masked)]``, ``pi = softmax(Q /
    tau)``; the masked policy is a detached reference (row r of ``q_masked`` masks sender
    ``senders[r]`` when given)."""
    return -_off_diagonal_mean(policy_kl(q_all, q_masked.detach(), tau, action_mask), senders)


def awareness_loss(
    q_tot_msg: torch.Tensor, q_tot_zero: torch.Tensor, margin: float
) -> torch.Tensor:
    """``L_aware = mean relu(margin - |Q_tot(s, a, M) - Q_tot(s, a, 0)|)``: a hinge that keeps
    the mixer from ignoring the messages."""
    return F.relu(margin - (q_tot_msg - q_tot_zero).abs()).mean()


class ReconstructionHead(nn.Module):
    """Decodes the sender's observation from its message: the intermediate objective used
    when ``value_aware: false`` (docs/method.md §4).

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
