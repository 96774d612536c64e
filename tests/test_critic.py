"""The full-information team critic's batched "agent j switches to action a" evaluation."""

import pytest
import torch
import torch.nn.functional as F

from seqcomm.dfl.critic import TeamCritic


def test_switch_values_equal_forward_on_each_switched_joint_action():
    torch.manual_seed(0)
    critic = TeamCritic(state_dim=5, n_agents=3, n_actions=4, hidden_dim=16)
    state, action = torch.randn(2, 7, 5), torch.randint(0, 4, (2, 7, 3))
    values = critic.switch_values(state, action)
    assert values.shape == (2, 7, 3, 4)
    for j in range(3):
        for a in range(4):
            switched = action.clone()
            switched[..., j] = a
            expected = critic(state, F.one_hot(switched, 4).float()).squeeze(-1)
            torch.testing.assert_close(values[..., j, a], expected, atol=1e-5, rtol=1e-5)


def test_switch_values_carry_gradient_to_the_critic():
    critic = TeamCritic(state_dim=3, n_agents=2, n_actions=2, hidden_dim=8)
    values = critic.switch_values(torch.randn(4, 3), torch.randint(0, 2, (4, 2)))
    values.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.parameters())


def test_standardised_targets_and_outputs_in_target_units():
    torch.manual_seed(0)
    critic = TeamCritic(4, 2, 3, 16)
    state, action = torch.randn(64, 4), torch.randint(3, (64, 2))
    joint = torch.nn.functional.one_hot(action, 3).float()
    target = -150.0 + 10.0 * torch.randn(64, 1)
    loss = critic.loss(state, joint, target)
    # the first batch sets the statistics, so the loss is in standardised units (~1, not ~2e4)
    assert critic.target_mean.item() == pytest.approx(target.mean().item(), rel=1e-5)
    assert loss.item() < 10.0
    # outputs are mapped back to the targets' units, switch values included
    assert critic(state, joint).mean().item() == pytest.approx(-150.0, abs=10.0)
    values = critic.switch_values(state, action)
    taken = values.gather(-1, action.unsqueeze(-1)).squeeze(-1)  # no switch: the taken joint
    assert torch.allclose(taken, critic(state, joint).expand(-1, 2), atol=1e-4)
    raw = TeamCritic(4, 2, 3, 16, normalize=False)
    assert raw.loss(state, joint, target).item() > 1e3  # raw units
