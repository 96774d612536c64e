"""SeqComm-DFL's sequential messenger (docs/method.md §2.1-2.3)."""

import pytest
import torch

from seqcomm.comm import SeqCommMessenger

H, N = 8, 3


def _grad(output, h, agent):
    """Gradient of ``output.sum()`` w.r.t. ``h[..., agent, :]``."""
    (g,) = torch.autograd.grad(output.sum(), h, retain_graph=True, allow_unused=False)
    return g[..., agent, :]


@pytest.mark.parametrize("message", ["continuous", "discrete"])
@pytest.mark.parametrize("base_round", [True, False])
def test_shapes_and_aux(message, base_round):
    m = SeqCommMessenger(H, N, message=message, msg_dim=5, n_labels=4, attn_dim=6,
                         base_round=base_round)
    ctx, aux = m(torch.randn(2, 7, N, H))
    assert ctx.shape == (2, 7, N, m.ctx_dim) and m.ctx_dim == (10 if base_round else 5)
    assert aux.messages.shape == aux.base_messages.shape == (2, 7, N, 5)
    assert aux.gp_pred.shape == aux.order.shape == (2, 7, N)
    assert aux.precedence.shape == (2, 7, N, N)
    assert (aux.labels is not None) == (aux.label_probs is not None) == (message == "discrete")
    assert aux.signatures is None and aux.ctx is None
    assert m.scores_labels == (message == "discrete" and not base_round)
    assert m.zero_when_silent
    assert m.message_dim == 5
    assert m.discrete == (message == "discrete")
    if message == "continuous":  # bounded: no loss can win by inflating the scale
        m.encoder.head.weight.data.mul_(1e3)
        assert m(torch.randn(2, 7, N, H))[1].messages.abs().max() <= 1.0


@pytest.mark.parametrize("message", ["continuous", "discrete"])
def test_every_receiver_hears_another_agent_leader_included(message):
    """Stage 1: the leader hears the followers' base messages; stage 3: only followers hear
    refined messages, and only from their predecessors (fixed order 0, 1, 2)."""
    torch.manual_seed(0)
    m = SeqCommMessenger(H, N, message=message, ordering="fixed", msg_dim=4)
    h = torch.randn(4, N, H, requires_grad=True)
    ctx, aux = m(h)
    base_part, refined_part = ctx[..., :4], ctx[..., 4:]
    for receiver in range(N):  # everyone, the leader included, depends on someone else
        others = [i for i in range(N) if i != receiver]
        assert sum(_grad(ctx[:, receiver], h, i).abs().sum() for i in others) > 0
    assert _grad(base_part[:, 0], h, 2).abs().sum() > 0  # the leader hears the last follower
    assert torch.equal(refined_part[:, 0], torch.zeros_like(refined_part[:, 0]))
    for out in (aux.messages[:, 0], refined_part[:, 0], refined_part[:, 1]):
        assert torch.equal(_grad(out, h, 2), torch.zeros(4, H))  # nobody hears the future
    assert _grad(refined_part[:, 2], h, 0).abs().sum() > 0
    if message == "continuous":  # the refined message of a follower depends on the leader
        assert _grad(aux.messages[:, 1], h, 0).abs().sum() > 0


def test_refinement_attention_gets_gradient_with_three_agents():
    torch.manual_seed(0)
    m = SeqCommMessenger(H, N, ordering="fixed")
    ctx, _ = m(torch.randn(16, N, H))
    (ctx * torch.randn_like(ctx)).sum().backward()
    for layer in (m.refine_query, m.refine_key, m.ctx_query, m.ctx_key, m.base_query):
        assert layer.weight.grad.abs().sum() > 0


def test_hidden_base_round_carries_the_senders_whole_state_linearly():
    """``base_message: hidden``: the base round's context is ``hidden_dim`` wide and a linear
    map of a convex mix of the others' states, so a state direction the bounded ``phi(h)``
    saturates away still reaches the receiver in proportion; a masked sender is not heard."""
    torch.manual_seed(0)
    m = SeqCommMessenger(H, N, ordering="fixed", msg_dim=4, base_message="hidden")
    assert m.ctx_dim == H + 4
    h = torch.randn(5, N, H)
    with torch.no_grad():
        m.encoder.head.weight.mul_(1e3)  # phi(h) saturated: a sign per coordinate
        m.base_key.weight.zero_()  # equal attention: the mean of the others' states
        m.base_key.bias.zero_()
        ctx, _ = m(h)
        big = h.clone()
        big[:, 2] *= 3.0  # sender 2 louder: the saturated phi(h) barely changes
        ctx_big, _ = m(big)
        heard = ctx[..., :H] - m.base_value.bias  # W mean_{i != j} h_i
        mean_others = (h.sum(-2, keepdim=True) - h) / (N - 1)
        assert torch.allclose(heard, mean_others @ m.base_value.weight.T, atol=1e-5)
        delta = (ctx_big - ctx)[:, 0, :H]  # the leader hears sender 2's extra 2 h_2 / 2
        assert torch.allclose(delta, h[:, 2] @ m.base_value.weight.T, atol=1e-5)
        muted, _ = m(h, deliver=torch.tensor([1.0, 1.0, 0.0]))
        assert torch.allclose(muted[:, 0, :H], h[:, 1] @ m.base_value.weight.T
                              + m.base_value.bias, atol=1e-5)
    assert m.bits_per_step() > 32 * H  # the whole state, in 32-bit floats
    with pytest.raises(ValueError, match="base_round: true"):
        SeqCommMessenger(H, N, base_round=False, base_message="hidden")
    with pytest.raises(ValueError, match="choose one of"):
        SeqCommMessenger(H, N, base_message="raw")


def test_mean_base_round_is_commnets_channel():
    """``base_attention: false`` with ``base_message: hidden``: each receiver's base-round
    context is a linear map of the plain mean of the delivered others' states (CommNet's
    channel); a receiver that hears nobody gets exactly zero and the messenger no gradient."""
    torch.manual_seed(0)
    m = SeqCommMessenger(H, N, ordering="fixed", msg_dim=4, base_message="hidden",
                         base_attention=False)
    assert m.base_query is None and m.base_key is None
    h = torch.randn(5, N, H, requires_grad=True)
    ctx, _ = m(h)
    mean_others = (h.sum(-2, keepdim=True) - h) / (N - 1)
    assert torch.allclose(ctx[..., :H], m.base_value(mean_others), atol=1e-5)
    muted, _ = m(h, deliver=torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(muted[:, 2, :H], m.base_value(h[:, 0]), atol=1e-5)
    assert torch.equal(muted[:, 0], torch.zeros_like(muted[:, 0]))  # hears nobody
    silent, _ = m(h, deliver=torch.zeros(N))
    assert torch.equal(silent, torch.zeros_like(silent))
    assert _grad(ctx[:, 0, :H], h, 1).abs().sum() > 0


@pytest.mark.parametrize("detach", [False, True])
def test_base_attention_detach_keeps_the_weights_off_the_bodies(detach):
    """``base_attention_detach``: the base round's weights still learn, but with constant
    values (zero value weights) its context reaches the bodies through the weights only, so
    the bodies get gradient exactly when the query and key read undetached states; the
    forward pass is unchanged."""
    kw = dict(ordering="fixed", msg_dim=4, base_message="hidden", refinement=False)
    torch.manual_seed(0)
    m = SeqCommMessenger(H, N, base_attention_detach=detach, **kw)
    torch.manual_seed(0)
    plain = SeqCommMessenger(H, N, **kw)
    bias = torch.randn(H)
    with torch.no_grad():
        for net in (m, plain):
            net.base_value.weight.zero_()
            net.base_value.bias.copy_(bias)
    h = torch.randn(5, N, H, requires_grad=True)
    ctx, _ = m(h)
    assert torch.allclose(ctx, plain(h)[0])
    (g,) = torch.autograd.grad(ctx.pow(2).sum(), h, retain_graph=True)
    assert (g.abs().sum() == 0) == detach
    (gq,) = torch.autograd.grad(ctx.pow(2).sum(), m.base_query.weight)
    assert gq.abs().sum() > 0
    with pytest.raises(ValueError, match="base_attention: true"):
        SeqCommMessenger(H, N, base_attention=False, base_attention_detach=True)


def test_concatenated_base_round_gives_every_sender_a_slot():
    """``base_pool: concat``: receiver j's base context is sender i's ``base_value(h_i)`` in
    slot i, zero in its own slot and in undelivered senders' slots; the refinement part is the
    mean pool's; gradient reaches exactly the senders heard."""
    torch.manual_seed(0)
    m = SeqCommMessenger(H, N, ordering="fixed", msg_dim=4, base_message="hidden",
                         base_attention=False, base_pool="concat")
    torch.manual_seed(0)
    mean = SeqCommMessenger(H, N, ordering="fixed", msg_dim=4, base_message="hidden",
                            base_attention=False)
    assert m.ctx_dim == N * H + 4 and m.base_ctx_dim == N * H
    h = torch.randn(5, N, H, requires_grad=True)
    ctx, _ = m(h)
    slots = ctx[..., :N * H].unflatten(-1, (N, H))  # [B, receiver, sender, H]
    values = m.base_value(h)
    for j in range(N):
        for i in range(N):
            want = torch.zeros_like(values[:, i]) if i == j else values[:, i]
            assert torch.allclose(slots[:, j, i], want, atol=1e-6)
    assert torch.allclose(ctx[..., N * H:], mean(h)[0][..., H:], atol=1e-6)
    muted, _ = m(h, deliver=torch.tensor([1.0, 0.0, 1.0]))
    muted_slots = muted[..., :N * H].unflatten(-1, (N, H))
    assert torch.equal(muted_slots[:, :, 1], torch.zeros_like(muted_slots[:, :, 1]))
    assert _grad(muted[:, 0, :N * H], h, 1).abs().sum() == 0  # sender 1 muted
    assert _grad(muted[:, 0, :N * H], h, 2).abs().sum() > 0
    silent, _ = m(h, deliver=torch.zeros(N))
    assert torch.equal(silent, torch.zeros_like(silent))
    with pytest.raises(ValueError, match="base_attention: false"):
        SeqCommMessenger(H, N, base_message="hidden", base_pool="concat")


def test_both_pools_put_the_mean_before_the_slots():
    """``base_pool: both``: the base context is the mean pool's, then the concat pool's slots
    (same weights, same seed), then the refinement part."""
    kw = dict(ordering="fixed", msg_dim=4, base_message="hidden", base_attention=False)
    nets = {}
    for pool in ("mean", "concat", "both"):
        torch.manual_seed(0)
        nets[pool] = SeqCommMessenger(H, N, base_pool=pool, **kw)
    assert nets["both"].base_ctx_dim == (N + 1) * H
    h = torch.randn(5, N, H)
    deliver = torch.tensor([1.0, 0.0, 1.0])
    both, mean, concat = (nets[p](h, deliver)[0] for p in ("both", "mean", "concat"))
    assert torch.allclose(both[..., :H], mean[..., :H], atol=1e-6)
    assert torch.allclose(both[..., H:], concat, atol=1e-6)


def test_refinement_gate_starts_closed_and_learns():
    """``refinement_gate``: at initialisation the followers' refinement context is exactly
    zero (the base round's part is untouched), the gate gets gradient, and an open gate gives
    the ungated messenger's context."""
    torch.manual_seed(0)
    gated = SeqCommMessenger(H, N, ordering="fixed", msg_dim=4, refinement_gate=True)
    torch.manual_seed(0)
    plain = SeqCommMessenger(H, N, ordering="fixed", msg_dim=4)
    h = torch.randn(5, N, H)
    ctx, _ = gated(h)
    ref, _ = plain(h)
    assert torch.equal(ctx[..., 4:], torch.zeros_like(ctx[..., 4:]))
    assert torch.allclose(ctx[..., :4], ref[..., :4])
    (ctx * torch.randn_like(ctx)).sum().backward()
    assert gated.refinement_gate.grad.abs() > 0
    with torch.no_grad():
        gated.refinement_gate.fill_(1.0)
        assert torch.allclose(gated(h)[0], ref, atol=1e-6)
    assert SeqCommMessenger(H, N, base_round=False, refinement_gate=True).refinement_gate is None


def test_refinement_dropout_zeroes_whole_refinement_parts_in_training_only():
    """``refinement_dropout``: in training mode some receivers' refinement part is zeroed as
    a whole, the kept ones are scaled by ``1 / (1 - p)``, the base part is untouched; in eval
    mode the context is the plain messenger's."""
    torch.manual_seed(0)
    drop = SeqCommMessenger(H, N, ordering="fixed", msg_dim=4, refinement_dropout=0.5)
    torch.manual_seed(0)
    plain = SeqCommMessenger(H, N, ordering="fixed", msg_dim=4)
    h = torch.randn(64, N, H)
    ref, _ = plain(h)
    ctx, _ = drop(h)
    assert drop.samples() and not plain.samples()
    assert torch.allclose(ctx[..., :4], ref[..., :4])
    zeroed = (ctx[..., 4:] == 0).all(-1)
    kept = ~zeroed & (ref[..., 4:] != 0).any(-1)  # the leader's refinement part is zero anyway
    assert 0 < zeroed[:, 1:].float().mean() < 1
    assert torch.allclose(ctx[..., 4:][kept], 2 * ref[..., 4:][kept], atol=1e-6)
    drop.eval()
    assert torch.allclose(drop(h)[0], ref) and not drop.samples()
    with pytest.raises(ValueError, match="refinement_dropout"):
        SeqCommMessenger(H, N, refinement_dropout=1.0)


@pytest.mark.parametrize("detach", [False, True])
def test_refinement_detach_keeps_the_refinement_off_the_bodies(detach):
    """``refinement_detach``: the followers' refinement context is the same function of the
    states, but with the switch no gradient reaches any state through it while the hidden base
    round still passes its gradient and the refinement's own weights still learn."""
    torch.manual_seed(0)
    m = SeqCommMessenger(H, N, ordering="fixed", msg_dim=4, base_message="hidden",
                         base_attention=False, refinement_detach=detach)
    torch.manual_seed(0)
    plain = SeqCommMessenger(H, N, ordering="fixed", msg_dim=4, base_message="hidden",
                             base_attention=False)
    h = torch.randn(5, N, H, requires_grad=True)
    ctx, _ = m(h)
    assert torch.allclose(ctx, plain(h)[0])
    refined = ctx[..., H:]
    (g,) = torch.autograd.grad(refined.sum(), h, retain_graph=True)
    assert (g.abs().sum() == 0) == detach
    assert _grad(ctx[:, 0, :H], h, 1).abs().sum() > 0  # the base round keeps its gradient
    refined.sum().backward()
    assert m.rho[0].weight.grad.abs().sum() > 0 and next(m.encoder.parameters()).grad is not None


def test_without_base_round_the_leader_hears_nothing():
    torch.manual_seed(0)
    m = SeqCommMessenger(H, N, ordering="fixed", base_round=False)
    h = torch.randn(4, N, H, requires_grad=True)
    ctx, _ = m(h)
    assert torch.equal(ctx[:, 0], torch.zeros_like(ctx[:, 0]))
    assert _grad(ctx[:, 2], h, 0).abs().sum() > 0


def test_prosocial_order_from_given_scores_conditions_causally():
    torch.manual_seed(0)
    m = SeqCommMessenger(H, N, ordering="prosocial", msg_dim=4)
    h = torch.randn(4, N, H, requires_grad=True)
    scores = torch.tensor([0.0, 2.0, 1.0]).expand(4, N)  # order 1, 2, 0
    ctx, aux = m(h, scores=scores)
    refined = ctx[..., 4:]
    assert torch.equal(aux.order, torch.tensor([1, 2, 0]).expand(4, N))
    assert torch.equal(refined[:, 1], torch.zeros_like(refined[:, 1]))
    for follower in (0, 2):
        assert torch.equal(_grad(refined[:, 1], h, follower), torch.zeros(4, H))
        assert torch.equal(_grad(aux.messages[:, 1], h, follower), torch.zeros(4, H))
    assert torch.equal(_grad(refined[:, 2], h, 0), torch.zeros(4, H))  # 0 speaks after 2
    assert _grad(refined[:, 0], h, 1).abs().sum() > 0


def test_scores_receive_gradient_through_straight_through_order():
    m = SeqCommMessenger(H, N, ordering="prosocial")
    scores = torch.randn(5, N, requires_grad=True)
    ctx, _ = m(torch.randn(5, N, H), scores=scores)
    (ctx * torch.randn_like(ctx)).sum().backward()
    assert scores.grad.abs().sum() > 0


@pytest.mark.parametrize("ordering", ["prosocial", "fixed"])
def test_undelivered_sender_has_exactly_no_influence(ordering):
    torch.manual_seed(0)
    m = SeqCommMessenger(H, N, ordering=ordering)
    h = torch.randn(6, N, H, requires_grad=True)
    deliver = torch.tensor([1.0, 0.0, 1.0])
    ctx, aux = m(h, deliver)
    others = [0, 2]
    for out in (ctx[:, others], aux.messages[:, others]):
        assert torch.equal(_grad(out, h, 1), torch.zeros(6, H))
    # and the forward of the other agents does not move when agent 1's state changes
    h2 = h.detach().clone()
    h2[:, 1] += 5 * torch.randn(6, H)
    ctx2, aux2 = m(h2, deliver)
    assert torch.allclose(ctx2[:, others], ctx[:, others].detach(), atol=1e-6)
    # nothing delivered: every receiver gets the empty context
    ctx0, _ = m(h, torch.zeros(N))
    assert torch.equal(ctx0, torch.zeros_like(ctx0))


@pytest.mark.parametrize("message", ["continuous", "discrete"])
@pytest.mark.parametrize("ordering", ["prosocial", "fixed", "random"])
def test_leading_mask_dimension_equals_separate_calls(message, ordering):
    torch.manual_seed(0)
    m = SeqCommMessenger(H, N, message=message, ordering=ordering).eval()
    h = torch.randn(5, N, H)
    masks = torch.cat([torch.ones(1, N), 1 - torch.eye(N)])  # all delivered, then i masked
    k = masks.shape[0]
    scores = torch.randn(5, N) if ordering == "random" else None  # fix the random keys
    ctx, aux = m(h.expand(k, 5, N, H), masks.unsqueeze(1), scores=scores)
    assert ctx.shape == (k, 5, N, m.ctx_dim)
    ctx_unexpanded, _ = m(h, masks.unsqueeze(1), scores=scores)  # h broadcast inside
    assert torch.allclose(ctx_unexpanded, ctx, atol=1e-6)
    for i in range(k):
        ctx_i, aux_i = m(h, masks[i], scores=scores)
        assert torch.allclose(ctx[i], ctx_i, atol=1e-6)
        assert torch.allclose(aux.messages[i], aux_i.messages, atol=1e-6)
        assert torch.equal(aux.order[i], aux_i.order)


def test_random_order_is_shared_across_the_mask_dimension_without_scores():
    m = SeqCommMessenger(H, 4, ordering="random")
    masks = torch.cat([torch.ones(1, 4), 1 - torch.eye(4)]).unsqueeze(1)
    _, aux = m(torch.randn(16, 4, H), masks)
    order = aux.order
    assert all(torch.equal(order[0], order[i]) for i in range(1, 5))


@pytest.mark.parametrize("base_message", ["encoded", "hidden"])
def test_without_refinement_every_receiver_hears_only_the_base_round(base_message):
    """``refinement: false``: the context is the base round's attention over every other
    delivered sender, whatever the order; the messages are the base messages."""
    torch.manual_seed(0)
    m = SeqCommMessenger(H, N, ordering="fixed", msg_dim=4, refinement=False,
                         base_message=base_message)
    assert m.ctx_dim == (H if base_message == "hidden" else 4) and m.rho is None
    h = torch.randn(4, N, H, requires_grad=True)
    ctx, aux = m(h)
    assert ctx.shape == (4, N, m.ctx_dim) and torch.equal(aux.messages, aux.base_messages)
    for receiver in range(N):  # the leader hears the followers, followers the leader
        for sender in set(range(N)) - {receiver}:
            assert _grad(ctx[:, receiver], h, sender).abs().sum() > 0
    ctx_silent, _ = m(h, torch.tensor([1.0, 1.0, 0.0]))
    (g,) = torch.autograd.grad(ctx_silent[:, :2].sum(), h)
    assert torch.equal(g[:, 2], torch.zeros(4, H))  # an undelivered sender is not heard
    expected = 32.0 * H if base_message == "hidden" else 32.0 * 4
    assert m.bits_per_step() == pytest.approx(expected)
    with pytest.raises(ValueError, match="refinement: false"):
        SeqCommMessenger(H, N, refinement=False, base_round=False)


def test_bits_per_step_counts_only_heard_messages():
    # base message (heard by all) + refined message of 2 of 3 agents + the GP scalar
    assert SeqCommMessenger(H, N, message="discrete", n_labels=4).bits_per_step() == (
        pytest.approx((1 + 2 / 3) * 2 + 32))
    assert SeqCommMessenger(H, N, msg_dim=4, ordering="fixed").bits_per_step() == (
        pytest.approx((1 + 2 / 3) * 32 * 4))
    one_way = SeqCommMessenger(H, 2, message="discrete", ordering="fixed", base_round=False)
    assert one_way.bits_per_step() == pytest.approx(0.5)  # the leader's 1 bit per 2 agents


def test_bad_deliver_shape_fails_early():
    with pytest.raises(ValueError, match="deliver"):
        SeqCommMessenger(H, N)(torch.randn(2, N, H), torch.ones(2, N + 1))


def test_base_query_zero_init_starts_as_the_mean():
    """``base_query_zero_init``: the base round's attention starts as the plain mean of the
    others' values (``base_pool: mean`` with the same values), every other parameter is the
    one drawn without it, and TD moves the query off zero."""
    kw = dict(ordering="fixed", msg_dim=4, base_message="hidden", refinement=False)
    torch.manual_seed(0)
    m = SeqCommMessenger(H, N, base_query_zero_init=True, **kw)
    torch.manual_seed(0)
    plain = SeqCommMessenger(H, N, **kw)
    mean = SeqCommMessenger(H, N, base_attention=False, **kw)
    mean.base_value.load_state_dict(m.base_value.state_dict())
    for (name, p), q in zip(m.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q) != name.startswith("base_query"), name
    h = torch.randn(5, N, H)
    ctx, _ = m(h)
    assert torch.allclose(ctx, mean(h)[0], atol=1e-6)
    assert not torch.allclose(ctx, plain(h)[0], atol=1e-3)
    (gq,) = torch.autograd.grad(ctx.pow(2).sum(), m.base_query.weight)
    assert gq.abs().sum() > 0
    with pytest.raises(ValueError, match="base_attention: true"):
        SeqCommMessenger(H, N, base_attention=False, base_query_zero_init=True)
