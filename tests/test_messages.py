"""Base messages and masked aggregation (docs/method.md §2.1)."""

import math

import pytest
import torch
from torch.nn import functional as F

from seqcomm.comm.messages import (
    MessageEncoder,
    entropy,
    expand_to_deliver,
    masked_attention,
    others_mask,
    straight_through_gumbel,
)


def test_continuous_message_shapes_and_bits():
    enc = MessageEncoder(8, "continuous", msg_dim=5)
    msg, labels = enc(torch.randn(3, 4, 2, 8))
    assert msg.shape == (3, 4, 2, 5) and labels is None
    assert enc.bits_per_step() == 32 * 5


def test_norm_bound_is_linear_inside_the_ball_and_projects_outside():
    enc = MessageEncoder(8, "continuous", msg_dim=4, bound="norm")
    small = torch.full((2, 4), 0.5)
    assert torch.equal(enc.emit(small)[0], small)  # rms 0.5: untouched
    big = torch.randn(100, 4) * 10
    msg = enc.emit(big)[0]
    assert torch.allclose(msg.pow(2).mean(-1), torch.ones(100))  # on the sphere, rms 1
    assert torch.allclose(F.cosine_similarity(msg, big, dim=-1), torch.ones(100))
    # no coordinate saturates: at three times the bound a coordinate still passes a third
    # of the gradient, while the tanh's passes 1% at the same size
    x = torch.tensor([[6.0, 0.0, 0.0, 0.0]], requires_grad=True)  # rms 3
    enc.emit(x)[0][0, 1].backward()
    assert x.grad[0, 1] > 0.1
    tanh = MessageEncoder(8, "continuous", msg_dim=4)
    y = torch.tensor([[3.0, 3.0, 3.0, 3.0]], requires_grad=True)
    tanh.emit(y)[0][0, 1].backward()
    assert y.grad[0, 1] < 0.01
    zero = torch.zeros(1, 4, requires_grad=True)  # a finite gradient at the origin too
    enc.emit(zero)[0].sum().backward()
    assert torch.equal(zero.grad, torch.ones(1, 4))
    with pytest.raises(ValueError, match="bound must be one of"):
        MessageEncoder(8, bound="clip")


@pytest.mark.parametrize("train", [True, False])
def test_discrete_forward_exactly_one_hot_with_straight_through_gradient(train):
    torch.manual_seed(0)
    enc = MessageEncoder(8, "discrete", msg_dim=6, n_labels=4).train(train)
    h = torch.randn(10, 3, 8, requires_grad=True)
    msg, labels = enc(h)
    assert labels.shape == (10, 3, 4)
    assert torch.equal(labels.sum(-1), torch.ones(10, 3))
    assert torch.equal((labels == 0) | (labels == 1), torch.ones_like(labels, dtype=torch.bool))
    # the message is exactly the embedding row of the chosen label
    assert torch.allclose(msg, enc.embed.weight.T[labels.argmax(-1)])
    (msg * torch.randn_like(msg)).sum().backward()
    assert h.grad.abs().sum() > 0
    assert enc.bits_per_step() == 2.0


def test_discrete_eval_is_deterministic_argmax_and_training_samples():
    torch.manual_seed(0)
    enc = MessageEncoder(4, "discrete", n_labels=2)
    raw = torch.log(torch.tensor([0.8, 0.2])).expand(4000, 2)
    enc.eval()
    assert torch.equal(enc.emit(raw)[1].argmax(-1), torch.zeros(4000, dtype=torch.long))
    enc.train()
    freq = (enc.emit(raw)[1].argmax(-1) == 0).float().mean().item()
    assert abs(freq - 0.8) < 0.03  # Gumbel-max samples from softmax(logits)


def test_straight_through_gumbel_gradient_is_softmax_gradient():
    logits = torch.randn(5, 3, requires_grad=True)
    w = torch.randn(5, 3)
    hard, soft = straight_through_gumbel(logits, tau=0.7, sample=False)
    (hard * w).sum().backward()
    ref = logits.detach().clone().requires_grad_(True)
    (torch.softmax(ref / 0.7, -1) * w).sum().backward()
    assert torch.allclose(logits.grad, ref.grad)


def test_bad_kind_fails_early():
    with pytest.raises(ValueError, match="message kind"):
        MessageEncoder(8, "analog")
    with pytest.raises(ValueError, match="n_labels"):
        MessageEncoder(8, "discrete", n_labels=1)


def test_masked_attention_matches_softmax_attention_and_masks_exactly():
    torch.manual_seed(0)
    q = torch.randn(2, 4, 8)
    k = torch.randn(2, 4, 8, requires_grad=True)
    v = torch.randn(2, 4, 3, requires_grad=True)
    mask = torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 1], [1, 1, 1, 0]]).float()
    out = masked_attention(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q[:, 1:], k, v, attn_mask=mask[1:].bool())
    assert torch.allclose(out[:, 1:], ref, atol=1e-6)
    assert torch.equal(out[:, 0], torch.zeros(2, 3))  # nothing to attend: empty context
    # receiver 2 never sees sender 2: its output has exactly zero gradient w.r.t. k_2, v_2
    out[:, 2].sum().backward()
    assert torch.equal(k.grad[:, 2], torch.zeros(2, 8))
    assert torch.equal(v.grad[:, 2], torch.zeros(2, 3))
    assert v.grad[:, 0].abs().sum() > 0 and torch.isfinite(k.grad).all()


def test_masked_attention_empty_row_has_finite_zero_gradient():
    q = torch.randn(3, 2, requires_grad=True)
    k = torch.randn(3, 2, requires_grad=True)
    v = torch.randn(3, 2, requires_grad=True)
    out = masked_attention(q, k, v, torch.zeros(3, 3))
    out.sum().backward()
    for t in (q, k, v):
        assert torch.equal(t.grad, torch.zeros_like(t))
    assert math.isfinite(out.sum().item())


def test_others_mask_is_delivery_off_the_diagonal():
    """``others_mask`` (one copy for every messenger): pinned to the formula it replaced."""
    torch.manual_seed(0)
    h = torch.randn(5, 3, 4, dtype=torch.float64)
    deliver = (torch.rand(5, 3) > 0.4).double()
    h, deliver = expand_to_deliver(h, deliver)
    mask = others_mask(h, deliver)
    expected = (1 - torch.eye(3, dtype=torch.float64)) * deliver.unsqueeze(-2)
    assert mask.dtype == torch.float64 and torch.equal(mask, expected)
    j, i = 1, 2  # receiver 1 hears sender 2 iff 2's message is delivered
    assert torch.equal(mask[:, j, i], deliver[:, i])
    assert (mask.diagonal(dim1=-2, dim2=-1) == 0).all()


def test_entropy_helper_bit_identical_with_zero_probabilities():
    """``entropy`` (one copy for the label terms): pinned to the formula it replaced."""
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(6, 2, 4), -1)
    p[0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert torch.equal(entropy(p), -(p * p.clamp_min(1e-12).log()).sum(-1))
    assert entropy(p)[0, 0] == 0
    torch.testing.assert_close(entropy(torch.full((4,), 0.25)), torch.tensor(math.log(4)))
