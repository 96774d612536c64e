"""Hospital task: specs, seeding, hidden-risk visibility, reward rules, references."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import check_env_specs

from seqcomm.envs.base import ACTION, INFO, MASK, OBS, STATE, env_info
from seqcomm.envs.hospital import Hospital
from seqcomm.envs.reference import evaluate_policy, random_policy

N, K = 3, 5


def set_ward(env: Hospital, occupied, severity, risk) -> None:
    """Hand-made ward for copy 0 (risk ``N`` = risk-free)."""
    env.occupied[0] = torch.tensor(occupied, dtype=torch.bool)
    env.severity[0] = torch.tensor(severity, dtype=torch.float32)
    env.risk[0] = torch.tensor(risk)


def step(env: Hospital, actions) -> TensorDict:
    td = TensorDict({}, batch_size=env.batch_size)
    td[ACTION] = torch.tensor([actions])
    return env.step(td)["next"]


def test_specs_and_sizes():
    env = Hospital(num_envs=4)
    check_env_specs(env)
    info = env_info(env)
    assert (info.n_agents, info.n_actions, info.episode_limit) == (N, K + 1, 25)
    assert info.obs_dim == 3 * K + 1 and info.state_dim == (2 + N) * K + 1
    assert {"severity", "adverse_events"} <= set(info.metrics)


@pytest.mark.parametrize("kwargs", [dict(n_specialists=1), dict(n_beds=0), dict(n_patients=0),
                                    dict(episode_limit=0), dict(p_risk_free=1.5),
                                    dict(max_severity=2.0), dict(adverse_penalty=-1.0)])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError, match="hospital"):
        Hospital(**kwargs)


def rollout(seed: int) -> torch.Tensor:
    env = Hospital(num_envs=3, seed=seed)
    gen = torch.Generator().manual_seed(7)
    return env.rollout(30, lambda td: td.set(ACTION, random_policy(td, gen)),
                       break_when_any_done=False)


def test_seeding_reproducible():
    a, b, c = rollout(1), rollout(1), rollout(2)
    assert torch.equal(a[STATE], b[STATE]) and torch.equal(a["next", "reward"], b["next", "reward"])
    assert not torch.equal(a[STATE], c[STATE])


def test_each_risk_visible_to_its_specialist_only():
    env = Hospital(num_envs=1)
    env.reset()
    risk = [0, 1, 2, N, 1]
    set_ward(env, [True] * K, [1, 2, 3, 4, 5], risk)
    td = env._observe()
    flags = td[OBS][0, :, : 3 * K].reshape(N, K, 3)[..., 2]
    for j in range(N):
        assert flags[j].tolist() == [float(r == j) for r in risk]
    # every specialist sees occupancy and severity, nobody sees the risk-free patient's flag
    assert torch.allclose(flags.sum(0), torch.tensor([1.0, 1, 1, 0, 1]))
    severity = torch.tensor([1.0, 2, 3, 4, 5]) / env.max_severity
    assert torch.allclose(td[OBS][0, :, 1 : 3 * K : 3], severity)
    occupied, _, decoded = env.decode_state(td[STATE])
    assert decoded[0].tolist() == risk and occupied.all()


def test_masks_and_empty_beds():
    env = Hospital(num_envs=1, n_patients=2, episode_limit=10)  # first arrival at step 4
    env.reset()
    set_ward(env, [True, False, True, False, False], [2, 0, 3, 0, 0], [0, N, 1, N, N])
    mask = env._observe()[MASK][0]
    assert mask[:, 0].all()  # idle is always available
    assert (mask[:, 1:] == torch.tensor([True, False, True, False, False])).all()
    nxt = step(env, [2, 4, 0])  # two specialists pick empty beds: nothing happens to them
    assert nxt[INFO, "adverse_events"].item() == 0 and nxt[INFO, "treated"].item() == 0
    assert env.occupied[0].tolist() == [True, False, True, False, False]


def test_treatment_rules_and_reward():
    env = Hospital(num_envs=1, n_patients=1, episode_limit=20)  # no more arrivals
    env.reset()
    # bed 0: risk 0 -> only specialist 1; bed 1: risk-free; bed 2: risk 2 -> only specialist 0;
    # bed 3: risk 1 -> only specialist 2; bed 4 empty
    set_ward(env, [True, True, True, True, False], [4, 2, 6, 7, 0], [0, N, 2, 1, N])
    # specialist 0 cures bed 2; 1 and 2 both treat the risk-free bed 1: conflict
    nxt = step(env, [3, 2, 2])
    assert env.occupied[0].tolist() == [True, True, False, True, False]
    sev_after = [4.0, 2.0 + env.adverse_severity, 0.0, 7.0]
    ward = sum(sev_after)
    expected = -env.severity_cost * ward - env.adverse_penalty * 1
    assert nxt["reward"].item() == pytest.approx(expected)
    assert nxt[INFO, "adverse_events"].item() == 1 and nxt[INFO, "treated"].item() == 1
    assert nxt[INFO, "severity"].item() == pytest.approx(ward)
    # untreated patients deteriorate after the step (capped at max_severity)
    grown = [min(s + env.severity_growth, env.max_severity) for s in sev_after]
    assert env.severity[0, :4].tolist() == pytest.approx(grown[:2] + [0.0] + grown[3:])
    # specialist 0 treats bed 0 (risk 0 is specialist 1's): adverse; specialist 2 cures bed 3
    nxt = step(env, [1, 0, 4])
    assert env.occupied[0].tolist() == [True, True, False, False, False]
    assert nxt[INFO, "adverse_events"].item() == 2 and nxt[INFO, "treated"].item() == 2
    assert env.severity[0, 0].item() == min(4 + env.severity_growth + env.adverse_severity
                                            + env.severity_growth, env.max_severity)
    # the specialist who sees risk 0 cannot treat it; specialist 1 alone can
    nxt = step(env, [1, 0, 0])
    assert nxt[INFO, "adverse_events"].item() == 3
    step(env, [0, 1, 0])
    assert env.occupied[0].tolist() == [False, True, False, False, False]


def test_termination_at_episode_limit():
    env = Hospital(num_envs=2, episode_limit=7)
    td = env.rollout(7, break_when_any_done=False)
    done = td["next", "done"][:, :, 0]
    assert not done[:, :6].any() and done[:, 6].all()
    assert torch.equal(td["next", "terminated"], td["next", "done"])
    # the auto-reset of step_and_maybe_reset restarts the clock and the metrics
    td = env.reset()
    for _ in range(7):
        td[ACTION] = torch.zeros(2, N, dtype=torch.long)
        out, td = env.step_and_maybe_reset(td)
    assert out["next", INFO, "severity"].gt(0).all() and td[INFO, "severity"].eq(0).all()
    assert td[OBS][:, :, -1].eq(0).all()


def test_arrivals_and_return_decomposition():
    env = Hospital(num_envs=4, seed=3)
    assert env.arrivals.sum().item() == env.n_patients
    gen = torch.Generator().manual_seed(0)
    td = env.rollout(env.episode_limit, lambda td: td.set(ACTION, random_policy(td, gen)))
    ret = td["next", "reward"].sum((1, 2))
    info = td["next", INFO][:, -1]
    expected = -env.severity_cost * info["severity"] - env.adverse_penalty * info["adverse_events"]
    assert torch.allclose(ret, expected, atol=1e-3)


def test_reference_policies_ordering():
    env = Hospital(num_envs=32, seed=5)
    refs = env.reference_policies()
    res = {name: evaluate_policy(env, pol, 64) for name, pol in refs.items()}
    assert res["full_info"]["adverse_events"] == 0  # knows every risk, never conflicts
    assert res["full_info"]["return"] > res["local"]["return"] + 60
    assert res["local"]["return"] > res["random"]["return"] + 60
    assert res["full_info"]["severity"] < res["local"]["severity"] < res["random"]["severity"]
