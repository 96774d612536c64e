"""Value-aware message objectives (DESIGN.md section 2, stage 4)."""

import pytest
import torch

from seqcomm.dfl.value_aware import (
    ReconstructionHead,
    awareness_loss,
    blended_gain,
    influence_loss,
    masked_log_softmax,
    mc_gain,
    policy_kl,
    receiver_gain,
    value_aware_loss,
    warmup_beta,
)


def test_receiver_gain_values_and_action_mask():
    q_empty = torch.tensor([[1.0, 2.0], [0.0, 5.0]])  # [n_recv=2, A=2]
    q_with = torch.stack([q_empty + torch.tensor([[3.0, 0.0], [0.0, 0.0]]), q_empty - 1])
    gain = receiver_gain(q_with, q_empty)
    assert torch.equal(gain, torch.tensor([[2.0, 0.0], [-1.0, -1.0]]))
    # an unavailable action never counts, however large its utility
    mask = torch.tensor([[True, False], [True, True]])
    q_big = q_with.clone()
    q_big[:, 0, 1] = 100.0
    gain_masked = receiver_gain(q_big, q_empty, mask)
    assert torch.equal(gain_masked[:, 0], torch.tensor([3.0, -1.0]))
    # an agent with no available action has zero gain, not NaN
    gain_dead = receiver_gain(q_with, q_empty, torch.tensor([[False, False], [True, True]]))
    assert torch.equal(gain_dead[:, 0], torch.zeros(2))


def test_receiver_gain_broadcasts_over_leading_dims():
    torch.manual_seed(0)
    q_with, q_empty = torch.randn(3, 4, 5, 3, 6), torch.randn(4, 5, 3, 6)
    gain = receiver_gain(q_with, q_empty)
    assert gain.shape == (3, 4, 5, 3)
    assert torch.allclose(gain[1, 2, 3], q_with[1, 2, 3].amax(-1) - q_empty[2, 3].amax(-1))


def test_value_aware_loss_sign_and_diagonal_excluded():
    q_empty = torch.zeros(7, 2, 3)
    helpful = torch.zeros(2, 7, 2, 3)
    helpful[0, :, 1, 0] = 1.0  # sender 0 raises receiver 1's best action
    harmful = torch.zeros(2, 7, 2, 3) - 1.0
    loss_help = value_aware_loss(receiver_gain(helpful, q_empty))
    loss_harm = value_aware_loss(receiver_gain(harmful, q_empty))
    assert loss_help < 0 < loss_harm
    assert loss_help.item() == pytest.approx(-0.5)  # mean over the 2 off-diagonal pairs
    gain = torch.randn(3, 4, 3)
    moved = gain.clone()
    moved[[0, 1, 2], :, [0, 1, 2]] += 100.0  # sender == receiver: must not count
    assert torch.equal(value_aware_loss(gain), value_aware_loss(moved))
    off = ~torch.eye(3, dtype=torch.bool)
    assert value_aware_loss(gain).item() == pytest.approx(-gain.permute(0, 2, 1)[off].mean().item())


def test_value_aware_gradient_raises_receiver_max_q():
    m = torch.zeros(2, 1, 2, 1, requires_grad=True)  # a message shifting the utilities
    q_with = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).expand(2, 1, 2, 2) + m
    value_aware_loss(receiver_gain(q_with, torch.zeros(1, 2, 2))).backward()
    assert torch.equal(m.grad[0, 0, 1], torch.tensor([-0.5]))  # sender 0 -> receiver 1
    assert torch.equal(m.grad[0, 0, 0], torch.tensor([0.0]))  # diagonal: no gradient


def test_warmup_schedule_and_blend():
    assert warmup_beta(0, 100) == 0.0
    assert warmup_beta(25, 100) == 0.25
    assert warmup_beta(100, 100) == 1.0 and warmup_beta(1000, 100) == 1.0
    assert warmup_beta(0, 0) == 1.0
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_beta(1, -5)
    mc, critic = torch.tensor([4.0]), torch.tensor([8.0])
    assert blended_gain(mc, critic, warmup_beta(25, 100)).item() == 5.0
    assert blended_gain(mc, critic, warmup_beta(0, 100)).item() == 4.0


def test_mc_gain_is_advantage_times_log_ratio_with_detached_advantage():
    q_with = torch.tensor([[[2.0, 0.0]]], requires_grad=True)  # [n_send=1, n_recv=1, A=2]
    q_empty = torch.zeros(1, 2)
    action = torch.tensor([[0]])
    logp_with = masked_log_softmax(q_with, 1.0).gather(-1, action.unsqueeze(0)).squeeze(-1)
    logp_empty = masked_log_softmax(q_empty, 1.0).gather(-1, action).squeeze(-1)
    advantage = torch.tensor([3.0], requires_grad=True)
    gain = mc_gain(logp_with, logp_empty, advantage)
    expected = 3.0 * (
        torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0] - torch.log(torch.tensor(0.5))
    )
    assert gain.item() == pytest.approx(expected.item(), rel=1e-6)
    gain.sum().backward()
    assert advantage.grad is None and q_with.grad[0, 0, 0] > 0
    # a bad outcome (negative advantage) after the message made the action likelier: < 0
    assert mc_gain(logp_with, logp_empty, torch.tensor([-1.0])).item() < 0


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
