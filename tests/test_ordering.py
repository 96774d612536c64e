"""Guidance potential and speaking order (docs/method.md §2.2)."""

import math

import pytest
import torch

from seqcomm.comm.ordering import Ordering, guidance_potential, order_entropy


def _check_precedence(precedence, order):
    """precedence[..., j, i] = 1 iff i is before j in order."""
    n = order.shape[-1]
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(n).expand_as(order))
    expected = (rank.unsqueeze(-2) < rank.unsqueeze(-1)).float()
    assert torch.equal(precedence.detach(), expected)


def test_prosocial_order_is_argsort_of_minus_scores():
    ordering = Ordering(4, "prosocial")
    scores = torch.tensor([[0.1, 2.0, -1.0, 0.5], [3.0, 1.0, 2.0, 0.0]])
    _, precedence, order = ordering(torch.randn(2, 4, 4), scores)
    assert order.tolist() == [[1, 3, 0, 2], [0, 2, 1, 3]]
    # leader: nobody before it; nobody sees itself; exactly one of (i before j, j before i)
    assert precedence[0, 1].sum() == 0 and precedence[1, 0].sum() == 0
    assert torch.equal(torch.diagonal(precedence, dim1=-2, dim2=-1), torch.zeros(2, 4))
    assert torch.equal(precedence + precedence.transpose(-1, -2), 1 - torch.eye(4).expand(2, 4, 4))
    _check_precedence(precedence, order)


def test_prosocial_uses_psi_when_no_scores_given():
    ordering = Ordering(6, "prosocial")
    h = torch.randn(5, 3, 6)
    gp_pred, _, order = ordering(h)
    assert gp_pred.shape == (5, 3)
    assert torch.equal(order, torch.argsort(-gp_pred, dim=-1))


def test_straight_through_precedence_passes_gradient_to_scores():
    torch.manual_seed(0)
    ordering = Ordering(4, "prosocial", tau=0.5)
    scores = torch.randn(3, 4, requires_grad=True)
    _, precedence, _ = ordering(torch.randn(3, 4, 4), scores)
    assert torch.equal((precedence == 0) | (precedence == 1), torch.ones_like(precedence).bool())
    (precedence * torch.randn(3, 4, 4)).sum().backward()
    assert scores.grad.abs().sum() > 0
    # gradient of the pairwise relaxation: d prec[j, i] / d s_i = sigmoid'((s_i - s_j)/tau)/tau
    s = torch.zeros(1, 2, requires_grad=True)
    _, p, _ = ordering(torch.randn(1, 2, 4), s)
    p[0, 1, 0].backward()  # receiver 1, sender 0
    assert torch.allclose(s.grad, torch.tensor([[0.25 / 0.5, -0.25 / 0.5]]))


def test_psi_head_is_trained_through_the_soft_sort():
    ordering = Ordering(4, "prosocial")
    _, precedence, _ = ordering(torch.randn(8, 3, 4))
    (precedence * torch.randn(8, 3, 3)).sum().backward()
    assert ordering.psi[0].weight.grad.abs().sum() > 0


def test_fixed_order_is_agent_index_and_constant():
    ordering = Ordering(4, "fixed")
    h = torch.randn(2, 5, 3, 4)
    _, p1, o1 = ordering(h)
    _, p2, o2 = ordering(torch.randn(2, 5, 3, 4))
    assert torch.equal(o1, torch.arange(3).expand(2, 5, 3)) and torch.equal(o1, o2)
    assert torch.equal(p1, torch.ones(3, 3).tril(-1).expand(2, 5, 3, 3)) and torch.equal(p1, p2)


def test_random_order_changes_between_calls_and_is_a_permutation():
    torch.manual_seed(0)
    ordering = Ordering(4, "random")
    h = torch.randn(8, 5, 4)
    orders = [ordering(h)[2] for _ in range(4)]
    assert any(not torch.equal(orders[0], o) for o in orders[1:])
    for o in orders:
        assert torch.equal(o.sort(-1).values, torch.arange(5).expand(8, 5))
    _, precedence, order = ordering(h)
    _check_precedence(precedence, order)
    assert not precedence.requires_grad


def test_random_order_is_shared_along_an_expanded_mask_dimension():
    ordering = Ordering(4, "random")
    h = torch.randn(16, 4, 4).expand(3, 16, 4, 4)
    _, _, order = ordering(h)
    assert torch.equal(order[0], order[1]) and torch.equal(order[0], order[2])
    assert len({tuple(row.tolist()) for row in order[0]}) > 1  # but differs across the batch


def test_guidance_potential_from_mask_passes():
    q_all = torch.tensor([10.0, 4.0])
    q_masked = torch.tensor([[7.0, 4.0], [10.0, 1.0], [9.5, 5.0]])  # row i: agent i masked
    gp = guidance_potential(q_all, q_masked)
    assert torch.equal(gp, torch.tensor([[3.0, 0.0, 0.5], [0.0, 3.0, -1.0]]))
    with pytest.raises(ValueError, match="leading dimension"):
        guidance_potential(q_all, q_masked.T)


def test_order_entropy_in_bits():
    assert order_entropy(torch.tensor([[1, 0, 2]] * 6)).item() == 0.0
    uniform = torch.tensor([[0, 1, 2, 3], [1, 0, 2, 3], [2, 0, 1, 3], [3, 0, 1, 2]])
    assert math.isclose(order_entropy(uniform).item(), 2.0, rel_tol=1e-6)
    half = torch.tensor([[0, 1], [1, 0], [0, 1], [1, 0]]).reshape(2, 2, 2)
    assert math.isclose(order_entropy(half).item(), 1.0, rel_tol=1e-6)


def test_bad_mode_fails_early():
    with pytest.raises(ValueError, match="ordering mode"):
        Ordering(4, "alphabetical")


def test_order_gradients_stop_at_the_agents_state():
    """psi (and through it the straight-through order) learns, but never moves the agents'
    recurrent state: that gradient kept a TD-trained messenger idle on hospital."""
    ordering = Ordering(8, "prosocial")
    h = torch.randn(5, 3, 8, requires_grad=True)
    gp_pred, precedence, _ = ordering(h)
    (gp_pred.sum() + (precedence * torch.randn(5, 3, 3)).sum()).backward()
    assert h.grad is None
    assert ordering.psi[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["fixed", "random", "prosocial"])
def test_predict_off_skips_psi_only_where_the_order_does_not_read_it(mode):
    """``predict = False`` leaves the order and precedence as they were; psi still runs where
    it is the sort key (``prosocial`` without given scores)."""
    ordering = Ordering(8, mode)
    h = torch.randn(5, 3, 8)
    torch.manual_seed(1)
    gp_on, precedence_on, order_on = ordering(h)
    ordering.predict = False
    torch.manual_seed(1)
    gp_off, precedence_off, order_off = ordering(h)
    assert torch.equal(order_on, order_off) and torch.equal(precedence_on, precedence_off)
    assert (gp_off is None) == (mode != "prosocial")
    assert ordering(h, scores=torch.randn(5, 3))[0] is None
