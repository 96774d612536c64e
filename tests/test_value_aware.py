"""Value-aware message objectives (docs/method.md §2.4)."""

import pytest
import torch

from seqcomm.dfl.value_aware import (
    ReconstructionHead,
    awareness_loss,
    blended_gain,
    decision_value,
    influence_loss,
    masked_log_softmax,
    mc_gain,
    normalised_advantage,
    policy_kl,
    value_aware_loss,
    warmup_beta,
)


def test_decision_value_is_the_softmax_expectation_over_available_actions():
    q = torch.tensor([[0.0, 0.0, 50.0], [1.0, 1.0, 1.0]])
    values = torch.tensor([[1.0, 3.0, 100.0], [0.0, 3.0, 6.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    v = decision_value(q, values, 1.0, mask)
    # an unavailable action counts for nothing, however large its utility and value
    assert torch.allclose(v, torch.tensor([2.0, 3.0]))
    # a cold softmax scores the greedy action; a message that only inflates every utility
    # by the same amount changes nothing
    assert decision_value(torch.tensor([5.0, 0.0]), torch.tensor([1.0, 9.0]), 1e-3).item() == (
        pytest.approx(1.0))
    assert torch.allclose(decision_value(q + 7.0, values, 1.0, mask), v)


def test_value_aware_loss_sign_and_diagonal_excluded():
    gain = torch.zeros(2, 7, 2)
    gain[0, :, 1] = 1.0  # sender 0 helps receiver 1
    assert value_aware_loss(gain).item() == pytest.approx(-0.5)  # 2 off-diagonal pairs
    assert value_aware_loss(-gain).item() == pytest.approx(0.5)
    gain = torch.randn(3, 4, 3)
    moved = gain.clone()
    moved[[0, 1, 2], :, [0, 1, 2]] += 100.0  # sender == receiver: must not count
    assert torch.equal(value_aware_loss(gain), value_aware_loss(moved))
    off = ~torch.eye(3, dtype=torch.bool)
    expected = -gain.permute(0, 2, 1)[off].mean().item()
    assert value_aware_loss(gain).item() == pytest.approx(expected, abs=1e-6)


def test_value_aware_gradient_moves_the_decision_toward_the_better_action_not_up():
    """The gain of a message is the evaluator's value of the decision it causes: its gradient
    makes the good action likelier, and adding a constant to all utilities earns nothing."""
    m = torch.zeros(2, requires_grad=True)  # a message's effect on receiver utilities
    values = torch.tensor([0.0, 1.0])  # the evaluator prefers action 1
    gain = decision_value(m, values, 1.0)
    gain.backward()
    assert m.grad[1] > 0 > m.grad[0]
    assert m.grad.sum().abs() < 1e-7  # a uniform shift of Q (inflation) has zero gradient


def test_warmup_schedule_is_a_fraction_of_the_run_and_blends():
    assert warmup_beta(0.0, 0.2) == 0.0
    assert warmup_beta(0.05, 0.2) == pytest.approx(0.25)
    assert warmup_beta(0.2, 0.2) == 1.0 and warmup_beta(1.0, 0.2) == 1.0
    assert warmup_beta(0.0, 0.0) == 1.0
    with pytest.raises(ValueError, match="warmup_fraction"):
        warmup_beta(0.1, 1.5)
    mc, critic = torch.tensor([4.0]), torch.tensor([8.0])
    assert blended_gain(mc, critic, warmup_beta(0.05, 0.2)).item() == 5.0
    assert blended_gain(mc, critic, warmup_beta(0.0, 0.2)).item() == 4.0


def test_normalised_advantage_is_centred_unit_scale_and_detached():
    returns = torch.tensor([[-160.0], [-150.0], [-170.0], [-158.0]])
    baseline = torch.full((4, 1), -100.0, requires_grad=True)  # a biased baseline
    adv = normalised_advantage(returns, baseline)
    # the raw differences are all negative; the advantage is not
    assert (returns - baseline < 0).all() and (adv > 0).any() and (adv < 0).any()
    assert adv.mean().abs() < 1e-6 and adv.std().item() == pytest.approx(1.0, rel=1e-5)
    assert not adv.requires_grad


def test_mc_gain_is_advantage_times_log_ratio_with_detached_advantage_and_baseline():
    q_all = torch.tensor([[2.0, 0.0]], requires_grad=True)  # [n_recv=1, A=2]
    q_masked = torch.zeros(1, 1, 2, requires_grad=True)  # [n_send=1, n_recv=1, A=2]
    action = torch.tensor([[0]])
    logp_all = masked_log_softmax(q_all, 1.0).gather(-1, action).squeeze(-1)
    logp_masked = masked_log_softmax(q_masked, 1.0).gather(-1, action.unsqueeze(0)).squeeze(-1)
    advantage = torch.tensor([3.0], requires_grad=True)
    gain = mc_gain(logp_all, logp_masked, advantage)
    expected = 3.0 * (
        torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0] - torch.log(torch.tensor(0.5))
    )
    assert gain.item() == pytest.approx(expected.item(), rel=1e-6)
    gain.sum().backward()
    assert advantage.grad is None and q_all.grad[0, 0] > 0
    assert q_masked.grad is None  # the masked policy is a baseline
    # a bad outcome (negative advantage) after the message made the action likelier: < 0
    assert mc_gain(logp_all, logp_masked, torch.tensor([-1.0])).item() < 0


def test_influence_kl_nonnegative_zero_when_equal_and_respects_mask():
    torch.manual_seed(0)
    q_with, q_empty = torch.randn(3, 5, 3, 4), torch.randn(5, 3, 4)
    kl = policy_kl(q_with, q_empty, tau=0.5)
    assert kl.shape == (3, 5, 3) and (kl >= -1e-6).all()
    assert influence_loss(q_with, q_empty, 0.5) < 0
    same = influence_loss(q_empty.expand(3, 5, 3, 4), q_empty, 0.5)
    assert same.abs().item() < 1e-6
    # utilities differing only on an unavailable action leave the policy unchanged
    mask = torch.ones(5, 3, 4, dtype=torch.bool)
    mask[..., 2] = False
    q_changed = q_empty.expand(3, 5, 3, 4).clone().requires_grad_(True)
    with torch.no_grad():
        q_changed[..., 2] += 50.0
    loss = influence_loss(q_changed, q_empty, 0.5, mask)
    assert loss.abs().item() < 1e-6
    loss.backward()
    assert torch.isfinite(q_changed.grad).all()


def test_influence_loss_diagonal_excluded():
    q_empty = torch.zeros(2, 3)
    q_with = torch.zeros(2, 2, 3)
    q_with[0, 0] = torch.tensor([5.0, 0.0, 0.0])  # sender 0 influences only itself
    assert influence_loss(q_with, q_empty).item() == 0.0
    q_with[0, 1] = torch.tensor([5.0, 0.0, 0.0])  # now receiver 1 too
    assert influence_loss(q_with, q_empty).item() < 0


def test_awareness_hinge():
    q_msg = torch.tensor([1.0, 1.0, 1.0], requires_grad=True)
    q_zero = torch.tensor([1.0, 0.8, -2.0])
    loss = awareness_loss(q_msg, q_zero, margin=0.5)
    assert loss.item() == pytest.approx((0.5 + 0.3 + 0.0) / 3)
    loss.backward()
    assert q_msg.grad[2] == 0.0  # beyond the margin: no push
    assert q_msg.grad[1] < 0  # inside it: pushed away from Q_tot(0)


def test_reconstruction_head_learns_to_decode_sender_observation():
    torch.manual_seed(0)
    head = ReconstructionHead(msg_dim=6, obs_dim=4, hidden_dim=32)
    obs = torch.randn(64, 2, 4)
    messages = torch.cat([obs, obs[..., :2] ** 2], -1)  # messages that carry the observation
    start = head.loss(messages, obs).item()
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(200):
        loss = head.loss(messages, obs)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert head(messages).shape == obs.shape
    assert head.loss(messages, obs).item() < 0.1 * start
