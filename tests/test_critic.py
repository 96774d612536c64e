"""The full-information team critics' batched "agent j switches to action a" evaluation."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from seqcomm.dfl.critic import TeamCritic
from seqcomm.dfl.factored_critic import FactoredCritic

CRITICS = pytest.mark.parametrize("critic_cls", [TeamCritic, FactoredCritic])


@CRITICS
def test_switch_values_equal_forward_on_each_switched_joint_action(critic_cls):
    torch.manual_seed(0)
    critic = critic_cls(state_dim=5, n_agents=3, n_actions=4, hidden_dim=16)
    state, action = torch.randn(2, 7, 5), torch.randint(0, 4, (2, 7, 3))
    values = critic.switch_values(state, action)
    assert values.shape == (2, 7, 3, 4)
    for j in range(3):
        for a in range(4):
            switched = action.clone()
            switched[..., j] = a
            expected = critic(state, F.one_hot(switched, 4).float()).squeeze(-1)
            torch.testing.assert_close(values[..., j, a], expected, atol=1e-5, rtol=1e-5)
    subset = critic.switch_values(state, action, torch.tensor([0, 2]))
    torch.testing.assert_close(subset, values[..., [0, 2], :])


@CRITICS
def test_switch_values_carry_gradient_to_the_critic(critic_cls):
    critic = critic_cls(state_dim=3, n_agents=2, n_actions=2, hidden_dim=8)
    values = critic.switch_values(torch.randn(4, 3), torch.randint(0, 2, (4, 2)))
    values.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.parameters())


def test_factored_best_response_is_the_agents_own_utility_argmax():
    """The mixer is monotonic: whatever the others play, j's best switch is the argmax of
    its own full-state utility (the MLP critic's can depend on the others' actions)."""
    torch.manual_seed(1)
    critic = FactoredCritic(state_dim=6, n_agents=3, n_actions=5, hidden_dim=16)
    state = torch.randn(50, 6)
    own = critic.utilities(state).argmax(-1)  # [50, 3]
    for _ in range(3):
        action = torch.randint(0, 5, (50, 3))
        assert torch.equal(critic.switch_values(state, action).argmax(-1), own)


@CRITICS
def test_standardised_targets_and_outputs_in_target_units(critic_cls):
    torch.manual_seed(0)
    critic = critic_cls(4, 2, 3, 16)
    state, action = torch.randn(64, 4), torch.randint(3, (64, 2))
    joint = torch.nn.functional.one_hot(action, 3).float()
    target = -150.0 + 10.0 * torch.randn(64, 1)
    loss = critic.loss(state, joint, target)
    # the first batch sets the statistics, so the loss is in standardised units (~1, not ~2e4)
    assert critic.target_mean.item() == pytest.approx(target.mean().item(), rel=1e-5)
    assert loss.item() < 100.0  # the QMIX mixer starts further off than the MLP
    # outputs are mapped back to the targets' units, switch values included
    expected = critic.target_mean + critic.target_std * critic.score(state, joint)
    torch.testing.assert_close(critic(state, joint), expected)
    assert critic(state, joint).mean().item() == pytest.approx(-150.0, abs=40.0)
    values = critic.switch_values(state, action)
    taken = values.gather(-1, action.unsqueeze(-1)).squeeze(-1)  # no switch: the taken joint
    assert torch.allclose(taken, critic(state, joint).expand(-1, 2), atol=1e-4)
    raw = critic_cls(4, 2, 3, 16, normalize=False)
    assert raw.loss(state, joint, target).item() > 1e3  # raw units


@CRITICS
def test_best_joint_score_is_the_max_over_available_joint_actions(critic_cls):
    """What ``critic_target: optimal`` bootstraps from: the brute-force maximum of ``score``
    over every joint action whose actions are all available (blocks of samples included)."""
    torch.manual_seed(0)
    n, A = 3, 4
    critic = critic_cls(state_dim=6, n_agents=n, n_actions=A, hidden_dim=16)
    state = torch.randn(5, 2, 6)
    mask = torch.rand(5, 2, n, A) > 0.4
    mask[..., 0] = True  # one action always available
    best = critic.best_joint_score(state, mask, max_elements=3 * A**n * 16)  # 4 blocks of 3
    expected = torch.full((5, 2, 1), float("-inf"))
    for joint in itertools.product(range(A), repeat=n):
        action = torch.tensor(joint)
        available = mask[..., torch.arange(n), action].all(-1, keepdim=True)
        value = critic.score(state, F.one_hot(action, A).float().expand(5, 2, n, A))
        expected = torch.where(available, torch.maximum(expected, value), expected)
    torch.testing.assert_close(best, expected)
    with torch.no_grad():  # the learner's path (in-place activations where the critic has them)
        torch.testing.assert_close(critic.best_joint_score(state, mask), expected)


def test_factored_utilities_are_the_mlp_on_state_and_id_without_copying_the_state():
    """The first layer's state part runs once per state (issue 9); the utilities are those of
    the MLP on ``[state, one-hot id]``, gradients included."""
    torch.manual_seed(0)
    critic = FactoredCritic(state_dim=9, n_agents=4, n_actions=5).double()
    state = torch.randn(3, 2, 9, dtype=torch.float64, requires_grad=True)
    x = torch.cat([state.unsqueeze(-2).expand(3, 2, 4, 9),
                   torch.eye(4, dtype=torch.float64).expand(3, 2, 4, 4)], dim=-1)
    fast, mlp = critic.utilities(state), critic.net["utility"](x)
    torch.testing.assert_close(fast, mlp)
    params = [state, *critic.net["utility"].parameters()]
    for g, h in zip(torch.autograd.grad(fast.square().sum(), params),
                    torch.autograd.grad(mlp.square().sum(), params), strict=True):
        torch.testing.assert_close(g, h)
