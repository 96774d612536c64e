"""SeqComm's two communication phases on the QMIX backbone (Ding et al., "Multi-Agent
Sequential Decision-Making via Communication"; the baseline of docs/method.md §5).

Negotiation: every agent broadcasts an encoding ``m_i = W h_i`` of its hidden state; each
receiver attends over the others' (TarMAC-style, one round). Launching: agents decide in an
order (``seqcomm.comm.intention`` picks it); each follower j also reads the actions of the
agents ranked above it, ``sum_i above(i, j) embed(a_i)``. The utilities ``Q_j(h_j, ctx_j)``
read ``ctx_j = [negotiation context, leaders' actions]``.

Training uses teacher forcing: the leaders' actions are the *taken* ones of the replay batch,
so one masked pass gives every agent's utility. Actions are discrete indices (or one-hots
without gradient), so a follower's TD loss trains the action embedding and its own head but
never reaches a leader's network through the action path.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from seqcomm.comm.base import Communication, MessageOutput
from seqcomm.comm.messages import expand_to_deliver, masked_attention, others_mask
from seqcomm.comm.ordering import precedence_from_order
from seqcomm.team_q import masked_argmax


class LaunchingMessenger(Communication):
    """Negotiation-phase hidden-state attention plus the launching phase's leaders' actions;
    ``ctx_dim = msg_dim + action_dim``. ``bind_actions`` (called by ``SeqCommLearner``) sets
    the action count, which the environment's specs give.

    Args:
        hidden_dim: size of the agent's recurrent state ``h_i``.
        n_agents: number of agents.
        msg_dim: size of the broadcast hidden-state encoding ``m_i`` (and of its context).
        attn_dim: size of the attention queries and keys.
        action_dim: size of a leader's action embedding.
    """

    def __init__(self, hidden_dim: int = 64, n_agents: int = 2, msg_dim: int = 16,
                 attn_dim: int = 16, action_dim: int = 16) -> None:
        super().__init__(hidden_dim, n_agents)
        if min(msg_dim, attn_dim, action_dim) < 1:
            raise ValueError("LaunchingMessenger: msg_dim, attn_dim and action_dim must be >= 1")
        self.msg_dim, self.action_dim = msg_dim, action_dim
        self.ctx_dim = msg_dim + action_dim
        self.message = nn.Linear(hidden_dim, msg_dim)
        self.query = nn.Linear(hidden_dim, attn_dim)
        self.key = nn.Linear(msg_dim, attn_dim)
        self.value = nn.Linear(msg_dim, msg_dim)
        self.n_actions = 0
        self.action_embed: nn.Linear | None = None

    def bind_actions(self, n_actions: int) -> None:
        """Create the action embedding for ``n_actions`` discrete actions."""
        self.n_actions = n_actions
        self.action_embed = nn.Linear(n_actions, self.action_dim, bias=False)

    def forward(
        self,
        h: torch.Tensor,
        deliver: torch.Tensor | None = None,
        order: torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, MessageOutput]:
        """``(ctx [*B, n, ctx_dim], out)``, ``out.order`` the given order. ``order [*B, n]``
        lists agents first to last; ``actions`` are indices ``[*B, n]`` or one-hots
        ``[*B, n, A]``. Without an order (or actions) nobody has heard an action yet: the
        action part is zero."""
        heard = self.negotiation(h, deliver)
        return self.launching(heard, order, actions, deliver), MessageOutput(order=order)

    def negotiation(self, h: torch.Tensor, deliver: torch.Tensor | None = None) -> torch.Tensor:
        """``[*B, n, msg_dim]``: each receiver's attention over the others' ``m_i = W h_i``
        (computed once per step: the launching sweeps reuse it)."""
        h, deliver = expand_to_deliver(h, deliver)
        others = others_mask(h, deliver)
        m = self.message(h)
        return masked_attention(self.query(h), self.key(m), self.value(m), others)

    def launching(self, heard: torch.Tensor, order: torch.Tensor | None,
                  actions: torch.Tensor | None, deliver: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """The context ``[heard, sum_i above(i, j) embed(a_i)]`` of every receiver j."""
        if order is None or actions is None:
            return torch.cat([heard, heard.new_zeros(*heard.shape[:-1], self.action_dim)], -1)
        if self.action_embed is None:
            raise ValueError("LaunchingMessenger.bind_actions(n_actions) was not called; "
                             "use it through seqcomm.seqcomm_learner.SeqCommLearner")
        if not actions.is_floating_point():
            actions = F.one_hot(actions, self.n_actions).to(heard.dtype)
        # above[..., j, i] = 1 iff i decides before j (and i's action is delivered)
        above = precedence_from_order(order).to(heard.dtype)
        if deliver is not None:
            above = above * deliver.to(heard.dtype).unsqueeze(-2)
        acted = above @ self.action_embed(actions)
        if acted.shape[:-1] != heard.shape[:-1]:
            shape = torch.broadcast_shapes(acted.shape[:-1], heard.shape[:-1])
            heard, acted = heard.expand(*shape, -1), acted.expand(*shape, -1)
        return torch.cat([heard, acted], -1)

    def bits_per_step(self) -> float:
        """Per agent and step: the negotiation message and the intention value (32-bit
        floats), and its action for every agent but the last to decide."""
        n = self.n_agents
        action_bits = math.log2(self.n_actions) if self.n_actions > 1 else 0.0
        return 32.0 * (self.msg_dim + 1) + (n - 1) / n * action_bits


def launch(
    utilities: Callable[[torch.Tensor], torch.Tensor],
    mask: torch.Tensor,
    n_agents: int,
    override: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The launching phase: every agent's greedy action given its leaders' actions.

    ``utilities(actions [*B, n]) -> q [*B, n, A]`` reads each agent's leaders' actions only
    (``LaunchingMessenger``); ``mask [*B, n, A]`` marks available actions; ``override =
    (explore [*B, n] bool, random [*B, n])`` replaces explorers' actions (their followers
    then hear the random action, as they would when acting). Returns ``(actions, q)``.

    Deciding in order is a chain ``n`` deep: a follower needs its leaders' final actions.
    Each of the ``n`` sweeps below is one batched pass over all agents and environments;
    after sweep k the first k ranks are exact (rank k reads only ranks < k), so after ``n``
    sweeps every action and every utility is what the sequential protocol gives.
    """
    actions = mask.new_zeros(mask.shape[:-1], dtype=torch.long)
    q = None
    for _ in range(n_agents):  # sweeps over rank depth, each batched over all agents
        q = utilities(actions)
        actions = masked_argmax(q, mask)
        if override is not None:
            actions = torch.where(override[0], override[1], actions)
    return actions, q
