"""Tests of the VMAS tasks behind the seqcomm key contract (seqcomm.envs.vmas)."""

import pytest
import torch
from torchrl.envs import EnvBase, VmasEnv
from torchrl.envs.utils import MarlGroupMapType, check_env_specs

from seqcomm.envs.base import ACTION, MASK, OBS, env_info
from seqcomm.envs.reference import random_policy
from seqcomm.envs.vmas import VmasTask, scenario_setup

METRIC = {"simple_spread": "landmark_dist", "simple_tag": "catches", "navigation": "success"}
CONTRACT_KEYS = {
    ("agents", "observation"), ("agents", "action_mask"), ("agents", "action"), "state",
    "done", "terminated", "truncated",
}


def _rollout(env: VmasTask, steps: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return env.rollout(steps, policy=lambda td: td.set(ACTION, random_policy(td, gen)),
                       break_when_any_done=False)


@pytest.mark.parametrize("scenario", sorted(METRIC))
def test_specs_keys_and_env_info(scenario):
    env = VmasTask(num_envs=4, scenario=scenario, max_steps=5, n_agents=3)
    assert isinstance(env, EnvBase)
    check_env_specs(env)
    info = env_info(env)
    assert (info.n_agents, info.n_actions, info.episode_limit) == (3, 9, 5)
    assert info.state_dim == 3 * info.obs_dim
    assert info.metrics == (METRIC[scenario],)
    td = _rollout(env, 3, seed=0)
    metric = ("info", METRIC[scenario])
    assert set(td.exclude("next").keys(True, True)) == CONTRACT_KEYS | {metric}
    assert set(td["next"].keys(True, True)) == (CONTRACT_KEYS - {ACTION}) | {metric, "reward"}
    assert td["next", "reward"].shape == (4, 3, 1)
    assert td[MASK].all()
    assert torch.equal(td["state"], td[OBS].flatten(-2))


def test_truncation_at_max_steps_and_batched_reset():
    env = VmasTask(num_envs=4, scenario="simple_spread", max_steps=4)
    td = _rollout(env, 9, seed=0)
    done = td["next", "done"].squeeze(-1)
    expected = torch.tensor([t % 4 == 3 for t in range(9)]).expand(4, 9)
    assert torch.equal(done, expected)
    assert torch.equal(td["next", "truncated"].squeeze(-1), expected)
    assert not td["next", "terminated"].any()


def test_seed_fixes_the_rollout():
    def obs(seed):
        return _rollout(VmasTask(num_envs=4, scenario="simple_tag", seed=seed), 5, 0)[OBS]

    a, b, c = obs(1), obs(1), obs(2)
    assert torch.equal(a, b)
    assert not torch.allclose(a[:, 0], c[:, 0])


@pytest.mark.parametrize("scenario", sorted(METRIC))
def test_same_rollout_as_torchrl_vmas_env(scenario):
    """Same scenario, seed and actions: the observations, dones and per-agent rewards of
    TorchRL's own ``VmasEnv`` are ours, and the team reward is their (shared) value."""
    def play(env):
        gen, td, out = torch.Generator().manual_seed(0), env.reset(), []
        for _ in range(12):
            td[ACTION] = torch.randint(9, (4, 3), generator=gen)
            td = env.step(td)["next"]
            out.append(td.clone())
        return torch.stack(out, 1)

    ours = play(VmasTask(num_envs=4, scenario=scenario, seed=5, max_steps=50))
    world, _, kwargs = scenario_setup(scenario, 3, True, 1, 2, True)
    theirs = play(VmasEnv(world, num_envs=4, continuous_actions=False, seed=5,
                          group_map=MarlGroupMapType.ALL_IN_ONE_GROUP, **kwargs))
    assert torch.equal(ours[OBS], theirs[OBS])
    assert torch.equal(ours["terminated"], theirs["terminated"])
    per_agent = theirs["agents", "reward"]  # [E, T, n, 1]
    assert torch.equal(per_agent, per_agent[:, :, :1].expand_as(per_agent))  # shared
    assert torch.allclose(ours["reward"], per_agent[:, :, 0])


def test_tag_prey_is_scripted_and_moves():
    env = VmasTask(num_envs=4, scenario="simple_tag", n_agents=2, n_prey=1, max_steps=10)
    assert [a.name for a in env.scenario.world.policy_agents] == ["adversary_0", "adversary_1"]
    assert env_info(env).n_agents == 2
    prey = env.scenario.good_agents()[0]
    td = env.reset()
    start = prey.state.pos.clone()
    for _ in range(3):
        td[ACTION] = torch.zeros(4, 2, dtype=torch.long)  # predators apply no force
        td = env.step(td)["next"]
    assert (prey.state.pos - start).norm(dim=-1).gt(0.05).all()


def test_tag_catches_and_reward_agree():
    env = VmasTask(num_envs=32, scenario="simple_tag", max_steps=25, shaped_reward=False,
                   seed=0)
    chase = env.reference_policies()["greedy_chase"]
    td, total = env.reset(), torch.zeros(32)
    for _ in range(25):
        td[ACTION] = chase(td)
        td = env.step(td)["next"]
        total += td["reward"].squeeze(-1)
    catches = td["info", "catches"]
    assert catches.sum() > 0  # chasing predators do catch the fleeing prey
    assert torch.allclose(total, 10 * catches)  # unshaped: +10 per contact


@pytest.mark.parametrize(
    "kwargs",
    [{"scenario": "simple_adversary"}, {"n_agents": 0}, {"max_steps": 0},
     {"scenario": "simple_tag", "n_prey": 0}],
)
def test_bad_arguments_fail_early(kwargs):
    with pytest.raises(ValueError):
        VmasTask(**kwargs)
