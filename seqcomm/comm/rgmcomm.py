"""RGMComm's messenger and clustering objective (RGMComm Eq. 6, Eq. 13, Theorem 4.3).

RGMComm (return-gap-minimising communication) bounds the return gap to the full-observability
policy by ``O(sqrt(eps) n Q_max)`` (its Theorem 4.3), where ``eps`` is the average cosine
distance between the action-value vectors (its Eq. 5, ``seqcomm.comm.q_vectors``) of the
observations that share a label and their cluster centre (its Eq. 6). A sender's label
function is trained by online clustering with the Regularized Information Maximization loss of
its Eq. 13 and by nothing else (``seqcomm.rgmcomm_learner.RGMCommLearner``); at execution the
label is the deterministic argmax.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import nn
from torch.nn import functional as F

from seqcomm.comm.base import Communication, MessageOutput
from seqcomm.comm.messages import entropy, expand_to_deliver, others_mask

Into = Literal["head", "input"]
INTO: tuple[str, ...] = get_args(Into)


def cosine_distance_matrix(x: torch.Tensor) -> torch.Tensor:
    """Pairwise ``D_cos(a, b) = 1 - a.b / (|a| |b|)`` of the rows of ``x [*, N, D]``."""
    unit = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return 1 - unit @ unit.transpose(-1, -2)


def activate_q(q: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's ``f((Q - alpha) / beta)``, ``f = tanh``, ``alpha = (max + min) / 2``,
    ``beta = max`` over each vector's entries (RGMComm Appendix F; the official code does
    the same per vector). ``beta`` is ``max |Q|`` so that negative rewards keep their sign
    (identical for the non-negative tables of the paper). Invalid entries (``valid`` False:
    unavailable actions, missing pairs) are left out of max/min and set to 0.
    """
    if valid is None:
        valid = torch.ones_like(q, dtype=torch.bool)
    big = torch.finfo(q.dtype).max
    hi = q.masked_fill(~valid, -big).amax(-1, keepdim=True)
    lo = q.masked_fill(~valid, big).amin(-1, keepdim=True)
    scale = q.abs().masked_fill(~valid, 0).amax(-1, keepdim=True).clamp_min(1e-8)
    out = torch.tanh((q - (hi + lo) / 2) / scale)
    return out.masked_fill(~valid, 0.0)


def label_information(probs: torch.Tensor, weight: torch.Tensor | None = None,
                      given: torch.Tensor | None = None) -> torch.Tensor:
    """RIM's ``I(o; m) = H(E_p m^p) - E_p H(m^p)`` of label distributions ``[*, N, M]``
    (Krause et al. 2010), expectations under sample weights ``[*, N]`` (default uniform).

    ``given [*, S, N]`` (rows summing to 1, ``q_vectors.receiver_conditional``; one row per
    replay sample, equally weighted) makes it the information the labels add to what the
    receivers observe, ``I(o; m | o_-i) = E_s H(m | o_-i^s) - E_p H(m^p)``, with
    ``p(m | o_-i^s) = sum_p given[s, p] m^p``: labels that only repeat what the receivers see
    (a shared step counter) earn nothing."""
    if weight is None:
        weight = probs.new_full(probs.shape[:-1], 1.0 / probs.shape[-2])
    if given is None:
        heard = entropy((weight.unsqueeze(-1) * probs).sum(-2))
    else:
        heard = entropy(given @ probs).mean(-1)
    return heard - (weight * entropy(probs)).sum(-1)


def clustering_loss(
    probs: torch.Tensor,
    q_vectors: torch.Tensor,
    weight: torch.Tensor | None = None,
    mi_weight: float = 1.0,
    given: torch.Tensor | None = None,
) -> torch.Tensor:
    """RGMComm's Eq. 13, ``L = L_CD - lambda L_MI``, for one sender (or a batch of senders).

    Args:
        probs: ``[*, N, M]`` label distributions ``g(o^p)`` of N observations (softmax
            probabilities; hard one-hots score a labelling); the gradient flows here.
        q_vectors: ``[*, N, D]`` activated action-value vectors (``activate_q`` of Eq. 5);
            treated as constants.
        weight: ``[*, N]`` visitation probabilities of the observations (default uniform:
            N replay samples, duplicates included, are already visitation-weighted; the
            learner passes distinct observations weighted by their counts).
        mi_weight: ``lambda``. With the kernel below ``L_CD`` lies in ``[-2, 2]`` and
            ``L_MI`` in ``[0, log M]``; ``lambda = 1`` makes a balanced split of
            dissimilar vectors (similarity < ``log 2 / 2``) beat one label.
        given: ``[*, S, N]``: ``L_MI`` conditioned on the receivers' observations
            (``label_information``); None: the paper's ``I(o; m)``.

    Our reading: an all-pairs locality-preserving loss over distinct observations,
    ``L_CD = sum_{p,q} d(o^p) d(o^q) S_pq ||m^p - m^q||^2`` with ``S = 1 - D_cos``, the
    cosine similarity. The paper writes ``D_cos`` as the weight but names the
    locality-preserving loss (its ref. [48]), whose weight is a similarity; its official code
    weights neighbours by ``1 - D_cos`` too. Taking all pairs instead of ``j`` nearest
    neighbours avoids neighbour sets made of duplicates of one observation.
    """
    if probs.shape[:-1] != q_vectors.shape[:-1]:
        raise ValueError(f"probs [*, N, M] and q_vectors [*, N, D] disagree: "
                         f"{tuple(probs.shape)} vs {tuple(q_vectors.shape)}")
    if weight is None:
        weight = probs.new_full(probs.shape[:-1], 1.0 / probs.shape[-2])
    sim = 1 - cosine_distance_matrix(q_vectors.detach())
    norm = probs.pow(2).sum(-1)  # ||m^p - m^q||^2 without cdist's square root, whose
    sq = norm.unsqueeze(-1) + norm.unsqueeze(-2) - 2 * probs @ probs.transpose(-1, -2)  # grad
    pair = weight.unsqueeze(-1) * weight.unsqueeze(-2)
    l_cd = (pair * sim * sq).sum((-1, -2))
    return l_cd - mi_weight * label_information(probs, weight, given)


def refine_labelling(labels: torch.Tensor, q_vectors: torch.Tensor, groups: torch.Tensor,
                     n_labels: int, mi_weight: float = 1.0, max_moves: int = 64,
                     given: torch.Tensor | None = None,
                     weight: torch.Tensor | None = None) -> torch.Tensor:
    """Hartigan's local search on Eq. 13 with hard labels, per sender (batched over senders).

    Gradient descent on soft labels stops at saddles of Eq. 13 (e.g. two confident clusters
    when four labels would score lower); this moves one group of samples (``groups``: ids of
    identical sender inputs, which the label function cannot tell apart) at a time to the
    label that lowers the hard-label loss most, until no move does (or ``max_moves``). The
    loss change of every (group, label) move is exact and costs ``O(G N + G M)``: moving
    group g from label a to b changes ``L_CD`` by ``4 (A[g, a] - A[g, b])``, ``A[g, k]`` the
    similarity mass between g and the other samples labelled k, and the information term by
    the change of the label marginal's entropy (hard labels have no conditional entropy).

    Args:
        labels: ``[n, N]`` current hard labels (constant within a group).
        q_vectors: ``[n, N, D]`` activated Eq. 5 vectors.
        groups: ``[n, N]`` group ids (``0 .. G-1``).
        n_labels: ``M``.
        mi_weight: ``lambda`` of Eq. 13.
        max_moves: most moves per sender.
        given: ``[n, S, N]``, the information term conditioned on the receivers'
            observations (``label_information``); a move of g from a to b shifts each
            sample's conditional label distribution by g's weight in it, from a to b.
        weight: ``[n, N]`` as in ``clustering_loss`` (default uniform).
    Returns the refined labels ``[n, N]``.
    """
    N = labels.shape[-1]
    G = int(groups.max()) + 1
    if weight is None:
        weight = q_vectors.new_full(labels.shape, 1.0 / N)
    member = F.one_hot(groups, G).to(q_vectors.dtype)  # [n, N, G]
    sim = (1 - cosine_distance_matrix(q_vectors)) * weight.unsqueeze(-1) * weight.unsqueeze(-2)
    s_group = member.transpose(-1, -2) @ sim @ member  # [n, G, G]
    mass_g = (member * weight.unsqueeze(-1)).sum(-2)  # [n, G]
    present = mass_g > 0
    glab = (member * labels.unsqueeze(-1)).sum(-2).div(member.sum(-2).clamp_min(1)).round().long()
    idx = torch.arange(labels.shape[0], device=labels.device)
    for _ in range(max_moves):  # a loop over moves, once per clustering
        own = F.one_hot(glab, n_labels).to(sim.dtype)  # [n, G, M]
        a_mass = s_group @ own - torch.diagonal(s_group, dim1=-2, dim2=-1).unsqueeze(-1) * own
        d_cd = 4 * ((a_mass * own).sum(-1, keepdim=True) - a_mass)  # [n, G, M]
        if given is None:
            marginal = (mass_g.unsqueeze(-1) * own).sum(-2)  # [n, M]
            moved = (marginal[:, None, None, :] - (mass_g.unsqueeze(-1) * own).unsqueeze(-2)
                     + mass_g[..., None, None] * torch.eye(n_labels, device=sim.device))
            d_mi = entropy(moved) - entropy(marginal).view(-1, 1, 1)
        else:
            d_mi = conditional_information_change(given, member, own, glab)
        delta = d_cd - mi_weight * d_mi
        delta = delta.masked_fill((own > 0) | ~present.unsqueeze(-1), float("inf"))
        best = delta.flatten(1).min(-1)
        improve = best.values < -1e-9
        if not improve.any():
            break
        g, k = best.indices // n_labels, best.indices % n_labels
        glab[idx[improve], g[improve]] = k[improve]
    return glab.gather(-1, groups)


class Eq13Objective:
    """Eq. 13 (``clustering_loss``) and its Hartigan refinement (``refine_labelling``) over
    fixed activated vectors ``x [n, G, D]`` of ``G`` inputs with ``weight [n, G]``, ``groups
    [n, G]`` of identical inputs, ``mi_weight`` and ``given`` as in ``clustering_loss``."""

    def __init__(self, x: torch.Tensor, weight: torch.Tensor, groups: torch.Tensor,
                 mi_weight: float = 1.0, given: torch.Tensor | None = None) -> None:
        self.x, self.weight, self.groups = x, weight, groups
        self.mi_weight, self.given = mi_weight, given

    def loss(self, probs: torch.Tensor) -> torch.Tensor:
        """``[n]`` Eq. 13 of label distributions ``probs [n, G, M]``."""
        return clustering_loss(probs, self.x, self.weight, self.mi_weight, self.given)

    def refine(self, labels: torch.Tensor, n_labels: int) -> torch.Tensor:
        """Hartigan's local search from hard labels ``[n, G]``."""
        return refine_labelling(labels, self.x, self.groups, n_labels, self.mi_weight,
                                given=self.given, weight=self.weight)


def conditional_information_change(given: torch.Tensor, member: torch.Tensor,
                                   own: torch.Tensor, glab: torch.Tensor) -> torch.Tensor:
    """``[n, G, M]``: the change of ``I(o; m | o_-i)`` (hard labels; ``given [n, S, N]``'s rows
    are equally weighted samples) when group g moves from its label to label b: each sample's
    conditional distribution ``given @ labels`` loses g's weight in it at the old label and
    gains it at b."""
    def plogp(p: torch.Tensor) -> torch.Tensor:
        return -(p * p.clamp_min(1e-12).log())

    labels = member @ own  # [n, N, M]: each sample's one-hot label
    cond = given @ labels  # [n, N, M]
    share = given @ member  # [n, N, G]: g's weight in each sample's distribution
    at_old = cond.gather(-1, glab.unsqueeze(1).expand_as(share))  # [n, N, G]
    old = plogp(at_old - share) - plogp(at_old)  # [n, N, G]
    new = plogp(cond.unsqueeze(-2) + share.unsqueeze(-1)) - plogp(cond).unsqueeze(-2)
    return (old.unsqueeze(-1) + new).mean(1)  # [n, G, M]; b = a is masked by the caller


def average_cosine_distance(q_vectors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """RGMComm's ``epsilon`` (Eq. 6): mean cosine distance of each Q-vector to its cluster centre.

    Args:
        q_vectors: ``[N, D]`` action-value vectors, one per sample (samples are drawn from
            the visitation distribution, so they carry equal weight).
        labels: ``[N]`` integer labels, or ``[N, |M|]`` one-hot / soft label assignments.
    """
    if labels.dim() == 1:
        labels = torch.nn.functional.one_hot(labels.long()).to(q_vectors.dtype)
    labels = labels.to(q_vectors.dtype)
    mass = labels.sum(0)  # [M]
    centres = (labels.T @ q_vectors) / mass.clamp_min(1e-12).unsqueeze(-1)  # H(m), [M, D]
    unit_q = q_vectors / q_vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    unit_c = centres / centres.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    dist = 1 - unit_q @ unit_c.T  # [N, M]
    return (labels * dist).sum(-1).mean()


def return_gap_bound(epsilon: float, n_agents: int, q_max: float) -> float:
    """Theorem 4.3's bound ``sqrt(eps) n Q_max`` with the O()-constant taken as 1 (for logs)."""
    return math.sqrt(max(epsilon, 0.0)) * n_agents * q_max


class LabelHeads(nn.Module):
    """One label function per sender (the paper's ``g_xi_i``), evaluated for all senders in
    one batched pass: a hidden layer and ``M`` logits, with per-sender weights.

    Args:
        n_agents: number of senders.
        in_dim: input size (the recurrent state).
        hidden: hidden width.
        n_labels: ``M``.
    """

    def __init__(self, n_agents: int, in_dim: int, hidden: int, n_labels: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n_agents, in_dim, hidden))
        self.b1 = nn.Parameter(torch.empty(n_agents, hidden))
        self.w2 = nn.Parameter(torch.empty(n_agents, hidden, n_labels))
        self.b2 = nn.Parameter(torch.empty(n_agents, n_labels))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``nn.Linear``'s default initialisation, per sender."""
        for w, b in ((self.w1, self.b1), (self.w2, self.b2)):
            bound = 1 / math.sqrt(w.shape[1])
            w.uniform_(-bound, bound)
            b.uniform_(-bound, bound)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h [*B, n, in_dim]`` -> logits ``[*B, n, M]``."""
        z = torch.relu(torch.einsum("...nh,nhk->...nk", h, self.w1) + self.b1)
        return torch.einsum("...nk,nkm->...nm", z, self.w2) + self.b2

    @torch.no_grad()
    def take(self, other: LabelHeads, senders: torch.Tensor) -> None:
        """Copy ``other``'s parameters for the senders where ``senders [n]`` is True."""
        for mine, theirs in zip(self.parameters(), other.parameters(), strict=True):
            mine[senders] = theirs[senders]

    @torch.no_grad()
    def permute_labels(self, perm: torch.Tensor) -> None:
        """Output ``a`` of sender ``i`` becomes its former output ``perm[i, a]`` (``[n, M]``)."""
        self.w2.copy_(self.w2.gather(2, perm.unsqueeze(1).expand_as(self.w2)))
        self.b2.copy_(self.b2.gather(1, perm))


class RGMComm(Communication):
    """Deterministic discrete labels per sender; a receiver hears the sum of the other
    delivered senders' label embeddings (one embedding table per sender, so the receiver knows
    who said what).

    The label function emits ``argmax`` of ``g(x_i)``: no TD gradient reaches it or, through
    it, the sender; only ``clustering_loss`` trains ``label_logits``. The embeddings are the
    receivers' reading of a label and learn by TD. Where the labels go (``into``):

    - ``head``: ``g`` reads the sender's recurrent state ``h_i`` (detached), and the context
      goes to the receiver's utility head beside its own state.
    - ``input``: ``g`` reads the sender's observation ``o_i`` (the paper's ``g(o_i)``), and
      the context enters the receiver's recurrent input at the same step (``input_context``),
      so its state carries what it heard (docs/results.md section 59).

    Args:
        hidden_dim: size of the agent's recurrent state ``h_i``.
        n_agents: number of agents.
        n_labels: alphabet size ``|M|``.
        embed_dim: size of a label embedding (and of the context).
        label_hidden: width of the label function's hidden layer.
        into: ``head`` or ``input`` (above).
    """

    discrete = True

    def __init__(self, hidden_dim: int = 64, n_agents: int = 2, n_labels: int = 2,
                 embed_dim: int = 16, label_hidden: int = 64, into: Into = "head") -> None:
        super().__init__(hidden_dim, n_agents)
        if n_labels < 2:
            raise ValueError(f"RGMComm needs n_labels >= 2, got {n_labels}")
        if into not in INTO:
            raise ValueError(f"RGMComm into={into!r}; choose one of {INTO}")
        self.n_labels, self.into, self.label_hidden = n_labels, into, label_hidden
        self.ctx_dim, self.input_dim = (embed_dim, 0) if into == "head" else (0, embed_dim)
        self.label_head = LabelHeads(n_agents, hidden_dim, label_hidden, n_labels)
        self.embedding = nn.Parameter(torch.empty(n_agents, n_labels, embed_dim))
        self.reset_embedding()
        # False until the staged schedule has clustered: every message is the empty one
        self.register_buffer("active", torch.ones((), dtype=torch.bool))

    def observe(self, obs_dim: int) -> None:
        """``into="input"``: the label function reads observations of this size."""
        if self.into == "input":
            self.label_head = LabelHeads(self.n_agents, obs_dim, self.label_hidden,
                                         self.n_labels)

    def reset_embedding(self) -> None:
        """Fresh receivers' reading of the labels: ``N(0, 1 / n_labels)`` entries."""
        with torch.no_grad():
            self.embedding.copy_(torch.randn_like(self.embedding) / self.n_labels**0.5)

    def label_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Label logits ``[*B, n, M]`` from the senders' detached inputs (``sender_inputs``)."""
        return self.label_head(x.detach())

    def sender_inputs(self, h: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """What the label function reads: the recurrent states (``head``) or the
        observations (``input``)."""
        return h if self.into == "head" else obs

    def heard(
        self, x: torch.Tensor, deliver: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, MessageOutput]:
        """``(ctx, out)`` from the senders' inputs ``x [*B, n, .]``; ``out.labels`` (argmax
        one-hots) and ``out.label_probs``."""
        if x.shape[-2] != self.n_agents:
            raise ValueError(
                f"RGMComm was built for n_agents={self.n_agents} but got {x.shape[-2]} agents"
            )
        x, deliver = expand_to_deliver(x, deliver)
        with torch.no_grad():
            logits = self.label_logits(x)
            labels = torch.nn.functional.one_hot(logits.argmax(-1), self.n_labels).to(x.dtype)
        sent = torch.einsum("...im,imd->...id", labels, self.embedding)
        ctx = (others_mask(x, deliver) @ sent) * self.active.to(x.dtype)
        return ctx, MessageOutput(labels=labels, label_probs=torch.softmax(logits, -1))

    def forward(
        self, h: torch.Tensor, deliver: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, MessageOutput]:
        """``heard(h)`` (``head``); with ``input`` the head hears nothing here."""
        if self.into == "input":
            return h.new_zeros(*h.shape[:-1], 0), MessageOutput()
        return self.heard(h, deliver)

    def input_context(self, obs: torch.Tensor) -> torch.Tensor:
        return self.heard(obs)[0]

    def bits_per_step(self) -> float:
        return math.log2(self.n_labels) if bool(self.active) else 0.0
