"""Tests of RGMComm's grid maze (seqcomm.envs.maze)."""

import itertools

import pytest
import torch
from torchrl.envs.utils import check_env_specs

from seqcomm.envs.base import ACTION, MASK, env_info
from seqcomm.envs.maze import MOVES, Maze
from seqcomm.envs.reference import evaluate_policy

STAY, UP, DOWN, LEFT, RIGHT = range(5)


def place(env: Maze, cells: list[list[tuple[int, int]]]) -> None:
    """Put the two agents of each copy on the given (row, col) cells, at step 0."""
    env.reset()
    env.pos = torch.tensor(cells)
    env.t.zero_()


def test_specs_and_env_info():
    env = Maze(num_envs=5, size=4, steps=3)
    check_env_specs(env)
    info = env_info(env)
    assert (info.n_agents, info.n_actions, info.episode_limit) == (2, 5, 3)
    assert info.obs_dim == 16 + 4 and info.state_dim == 2 * 16 + 4
    assert info.metrics == ("high", "success")


def test_without_the_step_counter_agents_see_only_their_cell():
    """The paper's observation (``observe_step=False``): the own cell alone, the same cell
    one-hot as with the counter; the state keeps the step."""
    env = Maze(num_envs=4, observe_step=False, seed=3)
    check_env_specs(env)
    assert env_info(env).obs_dim == 16 and env_info(env).state_dim == 2 * 16 + 4
    place(env, [[(1, 2), (3, 0)]] * 4)
    obs = env._observe()["agents", "observation"]
    assert torch.equal(obs.argmax(-1)[0], torch.tensor([1 * 4 + 2, 3 * 4 + 0]))
    assert torch.equal(obs.sum(-1), torch.ones(4, 2))
    with_step = Maze(num_envs=4, seed=3)
    place(with_step, [[(1, 2), (3, 0)]] * 4)
    assert torch.equal(with_step._observe()["agents", "observation"][..., :16], obs)


@pytest.mark.parametrize(
    "kwargs",
    [{"size": 2}, {"steps": 0}, {"high_reward": 1.0, "low_reward": 1.0},
     {"low_reward": 0.0}, {"num_envs": 0}],
)
def test_bad_arguments_fail_early(kwargs):
    with pytest.raises(ValueError):
        Maze(**kwargs)


def test_starts_avoid_landmarks_and_seed_fixes_rollout():
    a, b, c = Maze(num_envs=512, seed=3), Maze(num_envs=512, seed=3), Maze(num_envs=512, seed=4)
    pa, pb, pc = a.reset()["state"], b.reset()["state"], c.reset()["state"]
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    cells = a.pos[..., 0] * 4 + a.pos[..., 1]
    assert not torch.isin(cells, torch.tensor([0, 10])).any()  # (0,0) and (2,2)
    assert len(torch.unique(cells)) == 14  # every other cell is used


def test_reward_only_when_both_on_the_same_landmark():
    env = Maze(num_envs=4, high_reward=2.0, low_reward=0.5)
    place(env, [
        [(0, 1), (1, 0)],  # both step onto the high landmark
        [(2, 1), (1, 2)],  # both step onto the low landmark
        [(0, 1), (3, 3)],  # only agent 0 reaches a landmark
        [(0, 1), (2, 1)],  # each on a different landmark
    ])
    td = env._observe()
    td[ACTION] = torch.tensor([[LEFT, UP], [RIGHT, DOWN], [LEFT, STAY], [LEFT, RIGHT]])
    nxt = env.step(td)["next"]
    assert nxt["reward"].squeeze(-1).tolist() == [2.0, 0.5, 0.0, 0.0]
    assert nxt["done"].squeeze(-1).tolist() == [True, True, False, False]
    assert nxt["info", "high"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert nxt["info", "success"].tolist() == [1.0, 1.0, 0.0, 0.0]


def test_meeting_on_the_last_step_after_waiting_pays():
    env = Maze(num_envs=1)
    place(env, [[(0, 1), (0, 3)]])
    td = env._observe()
    rewards = []
    for a in ([LEFT, LEFT], [STAY, LEFT], [STAY, LEFT]):
        td[ACTION] = torch.tensor([a])
        nxt = env.step(td)["next"]
        rewards.append(nxt["reward"].item())
        td = nxt
    assert rewards == [0.0, 0.0, env.high_reward]
    assert nxt["terminated"].item() and not nxt["truncated"].item()


def test_episode_lasts_steps_moves():
    env = Maze(num_envs=64, steps=3)
    td = env.reset()
    for t in range(3):
        td[ACTION] = torch.zeros(64, 2, dtype=torch.long)
        nxt = env.step(td)["next"]
        assert bool(nxt["done"].all()) == (t == 2)
        assert not nxt["truncated"].any()
        td = nxt


def test_action_mask_forbids_leaving_the_grid():
    env = Maze(num_envs=2)
    place(env, [[(0, 3), (1, 1)], [(3, 0), (2, 3)]])
    mask = env._observe()[MASK]
    assert mask[0, 0].tolist() == [True, False, True, True, False]  # no up, no right
    assert mask[0, 1].all()
    assert mask[1, 0].tolist() == [True, True, False, False, True]  # no down, no left
    assert mask[1, 1].tolist() == [True, True, True, True, False]
    nxt = (env.pos.unsqueeze(-2) + MOVES)  # every unmasked move stays on the grid
    assert ((nxt >= 0) & (nxt < 4)).all(-1)[mask].all()


def _exact_full_info_value(env: Maze) -> float:
    """Average over start pairs of: high if both can reach it in time, else low."""
    starts = [(int(c) // env.size, int(c) % env.size) for c in env.start_cells]
    total = 0.0
    for (r1, c1), (r2, c2) in itertools.product(starts, starts):
        if max(r1 + c1, r2 + c2) <= env.steps:
            total += env.high_reward
        else:
            low = env.size - 2
            far = max(abs(r1 - low) + abs(c1 - low), abs(r2 - low) + abs(c2 - low))
            total += env.low_reward if far <= env.steps else 0.0
    return total / len(starts) ** 2


def test_reference_policies_bracket_communication_gain():
    env = Maze(num_envs=2048, seed=1)
    policies = env.reference_policies()
    assert {"random", "no_comm", "full_info"} <= set(policies)
    full = evaluate_policy(env, policies["full_info"], 2048)
    no_comm = evaluate_policy(env, policies["no_comm"], 2048)
    rand = evaluate_policy(env, policies["random"], 2048)
    assert full["return"] == pytest.approx(_exact_full_info_value(env), abs=0.03)
    assert no_comm["return"] == pytest.approx(env.low_reward)  # low landmark reachable
    assert full["return"] > no_comm["return"] + 0.1
    assert no_comm["return"] > rand["return"] + 0.1
    assert full["success"] == 1.0


def test_optimal_returns_are_the_best_committed_landmarks_and_full_information():
    """3x3, 2 steps: against every pair of policies that commit each start cell to a landmark
    (brute force) and full information's better landmark per pair of start cells; 4x4, 3
    steps: the task's documented 0.5 and 0.707."""
    env = Maze(1, size=3, steps=2)
    no_comm, full = env.optimal_returns()
    cells = [(int(c) // 3, int(c) % 3) for c in env.start_cells]
    high = [r + c <= 2 for r, c in cells]
    low = [abs(r - 1) + abs(c - 1) <= 2 for r, c in cells]
    n = len(cells)

    def value(p1, p2) -> float:
        return sum(1.0 * (h1 and h2 and high[i] and high[j])
                   + 0.5 * (not h1 and not h2 and low[i] and low[j])
                   for i, h1 in enumerate(p1) for j, h2 in enumerate(p2)) / n**2

    policies = list(itertools.product([True, False], repeat=n))  # True: the high landmark
    assert no_comm == pytest.approx(max(value(p, q) for p in policies for q in policies))
    assert full == pytest.approx(sum(max(1.0 * (high[i] and high[j]), 0.5 * (low[i] and low[j]))
                                     for i in range(n) for j in range(n)) / n**2)
    no_comm, full = Maze(1).optimal_returns()
    assert (no_comm, round(full, 3)) == (0.5, 0.707)
