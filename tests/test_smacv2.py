"""SMACv2Task (docs/method.md §6.5): the missing-dependency message, the key
contract checked against MicroCombat through a stand-in ``smacv2`` package, and a real
StarCraft II run (``-m sc2``)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import textwrap
import time

import pytest
import torch
import torchrl.envs.libs.smacv2 as torchrl_smacv2
from torchrl.envs.utils import check_env_specs

from seqcomm.envs.base import ACTION, INFO, MASK, OBS, env_info
from seqcomm.envs.microcombat import MicroCombat
from seqcomm.envs.reference import random_policy
from seqcomm.envs.smacv2 import SMACv2Task, missing_requirements

HAS_SMACV2 = importlib.util.find_spec("smacv2") is not None

# A stand-in for the `smacv2` package: the classes and methods torchrl's SMACv2Env calls, with
# SMAC's return types (lists of float32 arrays, python scalars, SMAC's info dict and time-out
# semantics, the availability assertion), backed by MicroCombat with num_envs=1. It is written
# to disk so that ParallelEnv's spawned workers import it too.
FAKE_SMACV2 = {
    "smacv2/__init__.py": "",
    "smacv2/env/starcraft2/__init__.py": "",
    "smacv2/env/starcraft2/maps/__init__.py": """
        from smacv2.env.starcraft2.maps import smac_maps

        def get_map_params(map_name):
            return smac_maps.get_smac_map_registry()[map_name]
        """,
    "smacv2/env/starcraft2/maps/smac_maps.py": """
        map_param_registry = {
            "3m": {"n_agents": 3, "n_enemies": 3, "limit": 60, "a_race": "T", "b_race": "T",
                   "unit_type_bits": 0, "map_type": "marines", "map_name": "3m"},
        }

        def get_smac_map_registry():
            return map_param_registry
        """,
    "smacv2/env/__init__.py": """
        import numpy as np
        import torch

        from seqcomm.envs.microcombat import MicroCombat
        from smacv2.env.starcraft2.maps import get_map_params


        class MultiAgentEnv:
            pass


        class StarCraft2Env(MultiAgentEnv):
            def __init__(self, map_name="8m", step_mul=8, difficulty="7", seed=None,
                         continuing_episode=False, capability_config={}, **kwargs):
                self.map_name, self._seed = map_name, seed
                self.episode_limit = get_map_params(map_name)["limit"]
                self.continuing_episode = continuing_episode
                self.sim = MicroCombat(1, seed=seed or 0, map_name=map_name,
                                       episode_limit=self.episode_limit,
                                       start_positions="random")  # SMACv2 randomises
                self.n_agents, self.n_enemies = self.sim.n_agents, self.sim.n_enemies
                self.n_actions = self.sim.n_actions
                self._td = None

            def reset(self, episode_config={}):
                self._td = self.sim.reset()
                return self.get_obs(), self.get_state()

            def step(self, actions):
                actions_int = [int(a) for a in actions]
                for a_id, action in enumerate(actions_int):
                    avail = self.get_avail_agent_actions(a_id)
                    assert avail[action] == 1, (
                        "Agent {} cannot perform action {}".format(a_id, action))
                self._td.set(("agents", "action"), torch.tensor([actions_int]))
                self._td = self.sim.step(self._td)["next"]
                info = {"battle_won": bool(self._td["info", "won"].item()),
                        "dead_allies": int(self._td["info", "dead_allies"].item()),
                        "dead_enemies": int(self._td["info", "dead_enemies"].item())}
                if self._td["truncated"].item() and self.continuing_episode:
                    info["episode_limit"] = True
                # SMAC ends a time-out like a battle: terminated is True for both
                return float(self._td["reward"].item()), bool(self._td["done"].item()), info

            def get_obs(self):
                return [o.numpy() for o in self._td["agents", "observation"][0]]

            def get_state(self):
                return self._td["state"][0].numpy()

            def get_avail_agent_actions(self, agent_id):
                return self._td["agents", "action_mask"][0, agent_id].int().tolist()

            def get_avail_actions(self):
                return [self.get_avail_agent_actions(i) for i in range(self.n_agents)]

            def get_obs_size(self):
                return self.sim.obs_dim

            def get_state_size(self):
                return self.sim.state_dim

            def get_total_actions(self):
                return self.n_actions

            def get_obs_move_feats_size(self):
                return 4

            def get_obs_enemy_feats_size(self):
                return self.n_enemies, self.sim.nf_enemy

            def get_obs_ally_feats_size(self):
                return self.n_agents - 1, self.sim.nf_ally

            def get_obs_own_feats_size(self):
                return self.sim.nf_own

            def get_env_info(self):
                return {"state_shape": self.get_state_size(), "obs_shape": self.get_obs_size(),
                        "n_actions": self.n_actions, "n_agents": self.n_agents,
                        "episode_limit": self.episode_limit}

            def seed(self):
                return self._seed

            def close(self):
                pass


        class StarCraftCapabilityEnvWrapper(MultiAgentEnv):
            instances = []

            def __init__(self, **kwargs):
                self.distribution_config = kwargs["capability_config"]
                for key, config in self.distribution_config.items():
                    if key not in ("n_units", "n_enemies"):
                        config["env_key"] = key  # smacv2 edits the config in place
                self.env = StarCraft2Env(**kwargs)
                StarCraftCapabilityEnvWrapper.instances.append(self)

            def __getattr__(self, name):
                if hasattr(self.env, name):
                    return getattr(self.env, name)
                raise AttributeError

            def reset(self):
                return self.env.reset({})

            def step(self, actions):
                return self.env.step(actions)

            def get_obs(self):
                return self.env.get_obs()

            def get_state(self):
                return self.env.get_state()

            def get_avail_actions(self):
                return self.env.get_avail_actions()

            def close(self):
                return self.env.close()
        """,
}


@pytest.fixture
def sc2_dir(tmp_path, monkeypatch):
    """An SC2PATH with the folders a StarCraft II install has (Versions/, Maps/SMAC_Maps/)."""
    root = tmp_path / "StarCraftII"
    (root / "Versions").mkdir(parents=True)
    (root / "Maps" / "SMAC_Maps").mkdir(parents=True)
    monkeypatch.setenv("SC2PATH", str(root))
    return root


@pytest.fixture
def fake_smacv2(tmp_path, monkeypatch):
    """Put the stand-in ``smacv2`` on the import path (also of spawned workers)."""
    if HAS_SMACV2:
        pytest.skip("the real smacv2 is installed; the stand-in would shadow it")
    site = tmp_path / "site"
    for rel, src in FAKE_SMACV2.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(src))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", f"{site}:{':'.join(sys.path)}")
    monkeypatch.delenv("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", raising=False)  # restored after
    # torchrl decided at import time that smacv2 was absent
    monkeypatch.setattr(torchrl_smacv2, "_has_smacv2", True)
    yield site
    for name in [m for m in sys.modules if m.split(".")[0] in ("smacv2", "s2clientprotocol")]:
        del sys.modules[name]


def signature(td) -> dict:
    """key -> (dtype, shape) of every leaf."""
    return {k: (v.dtype, tuple(v.shape)) for k, v in td.items(True, True)}


# ---------------------------------------------------------------- missing dependencies
@pytest.mark.skipif(HAS_SMACV2, reason="smacv2 is installed here")
def test_missing_everything_is_one_message_with_the_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv("SC2PATH", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError) as err:
        SMACv2Task(map_name="3m")
    msg = str(err.value)
    for needle in ("`smacv2` Python package", "pip install git+https://github.com/oxwhirl/smacv2.git",
                   f"$SC2PATH={tmp_path / 'nowhere'}", "SC2.4.10.zip", "iagreetotheeula",
                   "SMAC_Maps.zip",
                   "docker build --target sc2", "conf/microcombat_3m.yaml"):
        assert needle in msg, needle
    assert "smacv2" not in sys.modules  # failed before importing anything


@pytest.mark.skipif(HAS_SMACV2, reason="smacv2 is installed here")
def test_missing_smacv2_only(sc2_dir):
    with pytest.raises(ValueError) as err:
        SMACv2Task(map_name="3m")
    msg = str(err.value)
    assert "pip install git+https://github.com/oxwhirl/smacv2.git" in msg
    assert "Versions" not in msg and "SMAC_Maps" not in msg


def test_missing_starcraft_or_maps_only(fake_smacv2, tmp_path, monkeypatch):
    monkeypatch.delenv("SC2PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    msg = "\n".join(missing_requirements())
    assert "SC2PATH is not set" in msg and "StarCraftII" in msg
    assert "pip install" not in msg
    root = tmp_path / "sc2"
    (root / "Versions").mkdir(parents=True)
    monkeypatch.setenv("SC2PATH", str(root))
    with pytest.raises(ValueError, match="SMAC maps") as err:
        SMACv2Task(map_name="3m")
    assert "SMAC_Maps.zip" in str(err.value) and "pip install" not in str(err.value)


def test_protobuf_backend_clash_is_explained(fake_smacv2, sc2_dir):
    # what s2clientprotocol's old generated code does under protobuf's C backend
    pkg = fake_smacv2 / "s2clientprotocol"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "common_pb2.py").write_text('raise TypeError("Descriptors cannot be created directly")')
    importlib.invalidate_caches()
    with pytest.raises(ValueError, match="export PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python"):
        SMACv2Task(map_name="3m")
    # set for workers spawned later (and for a first import of protobuf)
    assert os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] == "python"


# ---------------------------------------------------------------- contract (stand-in)
def test_contract_matches_microcombat_3m(fake_smacv2, sc2_dir):
    env = SMACv2Task(num_envs=2, seed=0, map_name="3m", parallel=False)
    sim = MicroCombat(num_envs=2, seed=0, map_name="3m")
    try:
        first = env.reset()
        assert signature(first) == signature(sim.reset())
        # game i is seeded seed + i: the two games differ, a rebuilt task repeats them
        assert not torch.equal(first[OBS][0], first[OBS][1])
        again = SMACv2Task(num_envs=2, seed=0, map_name="3m", parallel=False)
        assert torch.equal(again.reset()[OBS], first[OBS])
        again.close()
        check_env_specs(env)  # random actions included: ActionMask keeps them available
        gen = torch.Generator().manual_seed(0)

        def policy(td):
            return td.set(ACTION, random_policy(td, generator=gen))

        ours = env.rollout(8, policy, break_when_any_done=False)
        theirs = sim.rollout(8, policy, break_when_any_done=False)
        assert signature(ours) == signature(theirs)
        assert ours[ACTION].dtype == torch.int64 and ours[OBS].dtype == torch.float32
        assert ours[MASK].dtype == torch.bool and ours["next", INFO, "won"].dtype == torch.float32
        assert env_info(env) == env_info(sim)
        assert env.episode_limit == sim.episode_limit == 60
        assert env.rng is None  # seqcomm.data checkpoints env generators; SC2 games have none
    finally:
        env.close()


def test_wins_and_time_outs_reach_won_terminated_truncated(fake_smacv2, sc2_dir):
    env = SMACv2Task(num_envs=2, seed=1, map_name="3m", parallel=False)
    focus_fire = MicroCombat(num_envs=2, seed=1, map_name="3m").reference_policies()["focus_fire"]
    try:
        out = env.rollout(40, lambda td: td.set(ACTION, focus_fire(td)),
                          break_when_any_done=False)["next"]
    finally:
        env.close()
    done, term, trunc = (out[k].squeeze(-1) for k in ("done", "terminated", "truncated"))
    won = out[INFO, "won"]
    assert (won > 0).any(), "focus fire won no battle (it wins about half of them)"
    assert torch.equal(done, term | trunc) and not (term & trunc).any()
    assert (term[won > 0]).all() and set(won.unique().tolist()) <= {0.0, 1.0}

    # a limit of 3 steps: nobody dies that fast, SMAC flags the time-out
    from smacv2.env.starcraft2.maps import smac_maps

    smac_maps.map_param_registry["3m"]["limit"] = 3
    try:
        env = SMACv2Task(num_envs=2, seed=0, map_name="3m", parallel=False)
        assert env.episode_limit == 3
        out = env.rollout(3, lambda td: td.set(ACTION, torch.ones_like(td[MASK][..., 0]).long()),
                          break_when_any_done=False)["next"]
        env.close()
    finally:
        smac_maps.map_param_registry["3m"]["limit"] = 60
    # rollouts of a batched env are [E, T, ...]
    assert out["truncated"][:, -1].all() and out["done"][:, -1].all()
    assert not out["terminated"].any() and not out["truncated"][:, :-1].any()


def test_see_allies_false_zeroes_only_the_ally_block(fake_smacv2, sc2_dir):
    seen = SMACv2Task(num_envs=1, seed=3, map_name="3m", parallel=False)
    hidden = SMACv2Task(num_envs=1, seed=3, map_name="3m", see_allies=False, parallel=False)
    try:
        a, b = seen.reset()[OBS], hidden.reset()[OBS]
        hidden_step = hidden.step(hidden.reset().set(ACTION, torch.ones(1, 3).long()))
    finally:
        seen.close()
        hidden.close()
    ally = slice(4 + 3 * 5, 4 + 3 * 5 + 2 * 5)  # 3m: move 4, enemies 3x5, allies 2x5, own 1
    assert a[..., ally].abs().sum() > 0  # allies start within sight of each other
    assert (b[..., ally] == 0).all() and (hidden_step["next"][OBS][..., ally] == 0).all()
    keep = torch.ones(a.shape[-1], dtype=torch.bool)
    keep[ally] = False
    assert torch.equal(a[..., keep], b[..., keep])


def test_capability_config_goes_through_the_wrapper_unchanged(fake_smacv2, sc2_dir):
    config = {"n_units": 3, "n_enemies": 3,
              "start_positions": {"dist_type": "surrounded_and_reflect", "p": 0.5,
                                  "map_x": 32, "map_y": 32}}
    env = SMACv2Task(num_envs=1, map_name="3m", capability_config=config, parallel=False)
    try:
        td = env.rollout(2, lambda td: td.set(ACTION, random_policy(td)))
    finally:
        env.close()
    import smacv2.env

    assert smacv2.env.StarCraftCapabilityEnvWrapper.instances, "capability wrapper not used"
    assert "env_key" not in config["start_positions"]  # smacv2's in-place edit stayed inside
    assert td[OBS].shape == (1, 2, 3, 30)


@pytest.mark.slow  # spawning two workers that import torch takes ~30 s on a busy 2-core box
def test_parallel_workers(fake_smacv2, sc2_dir):
    start = time.perf_counter()
    env = SMACv2Task(num_envs=2, seed=0, map_name="3m", parallel=True)
    try:
        out = env.rollout(3, lambda td: td.set(ACTION, random_policy(td)),
                          break_when_any_done=False)
    finally:
        env.close()
    sim = MicroCombat(num_envs=2, map_name="3m").rollout(3, break_when_any_done=False)
    assert signature(out) == signature(sim)
    print(f"parallel smacv2 stand-in: {time.perf_counter() - start:.1f}s")


def test_bad_arguments_fail_early(fake_smacv2, sc2_dir):
    with pytest.raises(ValueError, match="unknown map"):
        SMACv2Task(map_name="4m")
    with pytest.raises(ValueError, match="num_envs"):
        SMACv2Task(num_envs=0)
    with pytest.raises(ValueError, match="SMACv2Task's own arguments"):
        SMACv2Task(env_kwargs={"seed": 3})
    env = SMACv2Task(seed=5, map_name="3m", parallel=False)
    try:
        assert env.set_seed(5) == 5
        with pytest.raises(ValueError, match="SMACv2Task\\(seed=6\\)"):
            env.set_seed(6)
    finally:
        env.close(raise_if_closed=False)  # never reset: the games were never started


# ---------------------------------------------------------------- real StarCraft II
@pytest.mark.sc2
@pytest.mark.skipif(bool(missing_requirements()),
                    reason="needs smacv2 and StarCraft II: " + "; ".join(missing_requirements()))
def test_real_starcraft2_3m_and_protoss_5_vs_5():
    env = SMACv2Task(num_envs=2, seed=0, map_name="3m")
    sim = MicroCombat(num_envs=2, seed=0, map_name="3m")
    try:
        out = env.rollout(5, lambda td: td.set(ACTION, random_policy(td)),
                          break_when_any_done=False)
        check_env_specs(env)
    finally:
        env.close()
    assert signature(out) == signature(sim.rollout(5, break_when_any_done=False))
    protoss = {"n_units": 5, "n_enemies": 5,
               "team_gen": {"dist_type": "weighted_teams",
                            "unit_types": ["stalker", "zealot", "colossus"],
                            "weights": [0.45, 0.45, 0.1], "observe": True},
               "start_positions": {"dist_type": "surrounded_and_reflect", "p": 0.5,
                                   "map_x": 32, "map_y": 32}}
    env = SMACv2Task(num_envs=1, map_name="10gen_protoss", capability_config=protoss,
                     see_allies=False, env_kwargs={"use_unit_ranges": True, "obs_own_pos": True})
    try:
        out = env.rollout(5, lambda td: td.set(ACTION, random_policy(td)))
    finally:
        env.close()
    assert out[OBS].shape[0] == 1 and out[OBS].shape[2] == 5  # [E, T, n_units, obs_dim]
    assert out[MASK].shape[-1] == 6 + 5  # no-op, stop, 4 moves, attack one of 5 enemies
