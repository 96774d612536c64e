"""Tests of the SMAC-like simulator (seqcomm.envs.microcombat, docs/method.md §6.4)."""

import pytest
import torch
from torchrl.envs.utils import check_env_specs

from seqcomm.envs.base import ACTION, INFO, MASK, OBS, env_info
from seqcomm.envs.microcombat import MicroCombat
from seqcomm.envs.reference import evaluate_policy, random_policy
from seqcomm.envs.units import MAPS, UNIT_TYPES

STOP, NORTH, SOUTH, EAST, WEST, ATTACK = 1, 2, 3, 4, 5, 6
MARINE = UNIT_TYPES["marine"]
# SMAC's max_reward on 3m: 3 kills x 10 + win 200 + 3 marines x 45 health
MAX_REWARD_3M = 3 * 10 + 200 + 3 * MARINE.health


def far_3m(**changes) -> torch.Tensor:
    """3m positions [U, 2] with every unit far (> 6) from every enemy; ``changes`` moves
    unit i (``u0``..``u5``; allies are 0-2) to a given (x, y)."""
    pos = torch.tensor([[2.0, 2.0], [2.0, 4.0], [4.0, 2.0],
                        [30.0, 30.0], [30.0, 28.0], [28.0, 30.0]])
    for name, xy in changes.items():
        pos[int(name[1:])] = torch.tensor(xy)
    return pos


def step(env: MicroCombat, actions: list[int]):
    td = env._observe()
    td[ACTION] = torch.tensor([actions]).expand(env.num_envs, -1)
    return env.step(td)["next"]


@pytest.mark.parametrize("map_name, obs_dim, state_dim, n_actions",
                         [("3m", 30, 48, 9), ("2s3z", 80, 120, 11), ("4m", 40, 68, 10)])
def test_specs_and_smac_sizes(map_name, obs_dim, state_dim, n_actions):
    env = MicroCombat(num_envs=3, map_name=map_name)
    check_env_specs(env)
    info = env_info(env)
    # SMAC's sizes for these maps (state includes the last actions, SMAC's default); 4m is not
    # a SMAC map, its sizes follow SMAC's layout: obs 4 + 4 x 5 + 3 x 5 + 1, state 4 x 4 + 4 x 3
    # + 4 x 10
    assert (info.obs_dim, info.state_dim, info.n_actions) == (obs_dim, state_dim, n_actions)
    assert info.n_agents == len(MAPS[map_name].allies)
    assert info.episode_limit == MAPS[map_name].limit
    assert info.metrics == ("dead_allies", "dead_enemies", "won")
    td = env.reset()
    assert td[OBS].dtype == torch.float32 and td[MASK].dtype == torch.bool
    assert td[INFO, "won"].shape == (3,)


def test_bad_arguments_fail_early():
    with pytest.raises(ValueError, match="unknown map '6m'.*3m"):
        MicroCombat(map_name="6m")
    with pytest.raises(ValueError, match="sight_range must be > 0"):
        MicroCombat(sight_range=0.0)
    with pytest.raises(ValueError, match="episode_limit"):
        MicroCombat(episode_limit=0)


def test_attack_mask_needs_alive_enemy_in_shoot_range_and_dead_agents_only_noop():
    env = MicroCombat(num_envs=1, map_name="3m")
    env.reset()
    # agent 0 at (10, 16): enemy 0 at distance 5 (in range), enemy 1 at 7 (out), enemy 2 at
    # distance 3 but dead; agent 2 dead; agent 1 at the west edge of the map
    pos = far_3m(u0=(10.0, 16.0), u1=(0.5, 10.0), u3=(15.0, 16.0), u4=(10.0, 23.0),
                 u5=(13.0, 16.0))
    health = torch.full((6,), MARINE.health)
    health[2] = health[5] = 0.0
    td = env.place_units(pos, health)
    mask = td[MASK][0]
    assert mask[0].tolist() == [False, True, True, True, True, True, True, False, False]
    assert not mask[1, WEST] and mask[1, EAST]  # can't walk off the map
    assert mask[2].tolist() == [True] + [False] * 8  # dead: only no-op
    obs = td[OBS][0]
    assert (obs[2] == 0).all()  # dead agents observe nothing
    # enemy features of agent 0: [available, distance, rel x, rel y, health] / sight range 9
    enemy = obs[0, 4:19].reshape(3, 5)
    assert torch.allclose(enemy[0], torch.tensor([1.0, 5 / 9, 5 / 9, 0.0, 1.0]))
    assert torch.allclose(enemy[1], torch.tensor([0.0, 7 / 9, 0.0, 7 / 9, 1.0]))
    assert (enemy[2] == 0).all()  # dead enemies are invisible


def test_damage_kill_and_reward_rules():
    env = MicroCombat(num_envs=1, map_name="3m")
    env.reset()
    # agent 0 and enemy 0 face each other at distance 5 (inside a marine's weapon reach)
    env.place_units(far_3m(u0=(10.0, 16.0), u3=(15.0, 16.0)))
    out = step(env, [ATTACK + 0, STOP, STOP])
    hit = MARINE.damage - MARINE.armour
    # one volley each in the step (cooldown 0.61 s > one step of 0.357 s)
    assert env.health[0, 3].item() == pytest.approx(MARINE.health - hit)
    assert env.health[0, 0].item() == pytest.approx(MARINE.health - hit)  # enemy fired back
    assert env.health[0, [1, 2, 4, 5]].eq(MARINE.health).all()
    # reward: damage dealt only (damage taken is not subtracted), scaled to a max return of 20
    assert out["reward"].item() == pytest.approx(hit * 20 / MAX_REWARD_3M)
    assert not out["done"].item()
    # a kill: the remaining health plus the kill bonus of 10
    health = env.health.clone()
    health[0, 3] = 2.0
    env.place_units(far_3m(u0=(10.0, 16.0), u3=(15.0, 16.0)), health)
    env.cooldown.zero_()
    out = step(env, [ATTACK + 0, STOP, STOP])
    assert env.health[0, 3].item() == 0.0
    assert out["reward"].item() == pytest.approx((2.0 + 10) * 20 / MAX_REWARD_3M)
    assert out[INFO, "dead_enemies"].item() == 1.0 and not out[MASK][0, 0, ATTACK]


def test_shields_absorb_first_without_armour():
    env = MicroCombat(num_envs=1, map_name="2s3z")
    env.reset()
    # allies: stalkers 0-1, zealots 2-4; enemies: stalkers 5-6, zealots 7-9
    pos = torch.tensor([[2.0, 2.0 + 2 * i] for i in range(5)]
                       + [[30.0, 30.0 - 2 * i] for i in range(5)])
    pos[0] = torch.tensor([10.0, 16.0])
    pos[7] = torch.tensor([15.0, 16.0])  # an enemy zealot 5 away: the stalker reaches it
    env.place_units(pos)
    step(env, [ATTACK + 2, STOP, STOP, STOP, STOP])  # the stalker shoots enemy 2 (a zealot)
    stalker, zealot = UNIT_TYPES["stalker"], UNIT_TYPES["zealot"]
    hit = stalker.damage  # zealots are light: no armoured bonus; shields ignore armour
    assert env.shield[0, 7].item() == pytest.approx(zealot.shield - hit)
    assert env.health[0, 7].item() == zealot.health  # shields first
    # the zealot walked towards the stalker (melee) and did not reach it within one step
    assert env.x[0, 7].item() < 15.0


def test_win_flag_bonus_and_termination():
    env = MicroCombat(num_envs=1, map_name="3m")
    env.reset()
    health = torch.full((6,), MARINE.health)
    health[3], health[4], health[5] = 3.0, 0.0, 0.0
    env.place_units(far_3m(u0=(10.0, 16.0), u3=(15.0, 16.0)), health)
    out = step(env, [ATTACK + 0, STOP, STOP])
    assert out["terminated"].item() and out["done"].item() and not out["truncated"].item()
    assert out[INFO, "won"].item() == 1.0
    assert out["reward"].item() == pytest.approx((3.0 + 10 + 200) * 20 / MAX_REWARD_3M)
    # a loss: the last agent dies, no win
    env.reset()
    health = torch.full((6,), MARINE.health)
    health[0], health[1], health[2] = 3.0, 0.0, 0.0
    env.place_units(far_3m(u0=(10.0, 16.0), u3=(15.0, 16.0)), health)
    out = step(env, [STOP, 0, 0])
    assert out["terminated"].item() and out[INFO, "won"].item() == 0.0
    assert out[INFO, "dead_allies"].item() == 3.0 and out["reward"].item() == 0.0


def test_won_episodes_return_exactly_the_scale_rate():
    # random starts: under SMAC's fixed formation every copy plays the same (lost) episode
    env = MicroCombat(num_envs=16, seed=1, map_name="3m", start_positions="random")
    policy = env.reference_policies()["focus_fire"]
    td, ret = env.reset(), torch.zeros(16)
    finished = torch.zeros(16, dtype=torch.bool)
    wins = 0
    for _ in range(env.episode_limit):
        td[ACTION] = policy(td)
        assert td[MASK].gather(-1, td[ACTION][..., None]).all()  # only available actions
        nxt = env.step(td)["next"]
        ret += nxt["reward"].squeeze(-1) * ~finished
        newly = nxt["done"].squeeze(-1) & ~finished
        won = nxt[INFO, "won"] > 0
        # all damage + all kills + the win: SMAC's max_reward, scaled to 20
        assert torch.allclose(ret[newly & won], torch.tensor(20.0), atol=1e-4)
        assert (ret[newly & ~won] < 20.0).all()
        finished |= newly
        wins += int((newly & won).sum())
        td = nxt
    assert finished.all() and wins > 0


def test_episode_limit_truncates():
    env = MicroCombat(num_envs=2, map_name="3m", episode_limit=3)
    env.reset()
    for t in range(3):
        out = step(env, [STOP, STOP, STOP])  # the teams start 14 apart: nobody fights
        assert out["done"].squeeze(-1).tolist() == [t == 2] * 2
    assert out["truncated"].all() and not out["terminated"].any()
    assert out[INFO, "won"].eq(0).all()


def test_seeding_fixes_everything():
    def run(seed):
        env = MicroCombat(num_envs=4, seed=seed, map_name="2s3z")
        policy = env.reference_policies()["random"]
        return env.rollout(30, lambda td: td.set(ACTION, policy(td)),
                           break_when_any_done=False)

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a["next", OBS], b["next", OBS])
    assert torch.equal(a["next", "reward"], b["next", "reward"])
    assert not torch.equal(a[OBS], c[OBS])


def test_see_allies_false_zeroes_only_the_ally_features():
    seen = MicroCombat(num_envs=4, seed=3, map_name="3m")
    hidden = MicroCombat(num_envs=4, seed=3, map_name="3m", see_allies=False)
    a, b = seen.reset()[OBS], hidden.reset()[OBS]
    ally = slice(4 + 3 * 5, 4 + 3 * 5 + 2 * 5)  # move 4, enemies 3x5, allies 2x5, own 1
    assert a[..., ally].abs().sum() > 0  # allies start within sight of each other
    assert (b[..., ally] == 0).all()
    keep = torch.ones(a.shape[-1], dtype=torch.bool)
    keep[ally] = False
    assert torch.equal(a[..., keep], b[..., keep])


def test_reduced_sight_range_hides_far_units():
    env = MicroCombat(num_envs=1, map_name="3m", sight_range=3.0)
    env.reset()
    td = env.place_units(far_3m(u0=(10.0, 16.0), u1=(14.0, 16.0), u3=(12.0, 16.0)))
    obs = td[OBS][0, 0]
    assert obs[4:9].tolist() == pytest.approx([1.0, 2 / 3, 2 / 3, 0.0, 1.0])  # enemy 0 seen
    assert (obs[19:24] == 0).all()  # ally 1 at distance 4 > 3: hidden


def test_reduced_sight_masks_attacks_on_unseen_enemies():
    # sight 4 < shoot range 6: enemy 0 at distance 5 is in range but unseen (its features are
    # zero), enemy 1 at distance 3 is seen; only the seen one may be attacked
    env = MicroCombat(num_envs=2, map_name="3m", sight_range=4.0)
    env.reset()
    td = env.place_units(far_3m(u0=(10.0, 16.0), u3=(15.0, 16.0), u4=(10.0, 19.0)))
    mask, obs = td[MASK][:, 0], td[OBS][:, 0]
    assert not mask[:, ATTACK + 0].any()  # distance 5: in shoot range, out of sight
    assert mask[:, ATTACK + 1].all()  # distance 3: seen and in range
    assert not mask[:, ATTACK + 2].any()  # far away
    assert (obs[:, 4:9] == 0).all()  # enemy 0 is invisible in the observation
    assert torch.allclose(obs[:, 9:14], torch.tensor([1.0, 0.75, 0.0, 0.75, 1.0]))
    # the masked attack is executed as stop: the unseen enemy takes no damage, agent 0 stays
    step(env, [ATTACK + 0, STOP, STOP])
    assert env.health[:, 3].eq(MARINE.health).all()
    assert env.x[:, 0].eq(10.0).all() and env.y[:, 0].eq(16.0).all()
    # with SMAC's sight range 9 the same enemy at distance 5 is attackable
    full = MicroCombat(num_envs=1, map_name="3m")
    full.reset()
    td = full.place_units(far_3m(u0=(10.0, 16.0), u3=(15.0, 16.0), u4=(10.0, 19.0)))
    assert td[MASK][0, 0, ATTACK + 0] and td[MASK][0, 0, ATTACK + 1]


def test_focus_fire_targets_only_visible_enemies():
    # agent 0 has an unseen full-health enemy at distance 5 (in shoot range, sight 4) and a
    # seen, wounded one at distance 3: the unseen one's zeroed features must not look weakest
    env = MicroCombat(num_envs=2, map_name="3m", sight_range=4.0)
    env.reset()
    health = torch.full((6,), MARINE.health)
    health[4] = 10.0
    td = env.place_units(far_3m(u0=(10.0, 16.0), u3=(15.0, 16.0), u4=(10.0, 19.0)), health)
    action = env.reference_policies()["focus_fire"](td)
    assert action[:, 0].eq(ATTACK + 1).all()
    assert td[MASK].gather(-1, action[..., None]).all()  # every chosen action is available


def test_focus_fire_beats_random_on_3m():
    # random starts: SMAC's fixed formation makes every copy play one deterministic episode
    env = MicroCombat(num_envs=32, seed=0, map_name="3m", start_positions="random")
    policies = env.reference_policies()
    focus = evaluate_policy(env, policies["focus_fire"], 32)
    rand = evaluate_policy(env, policies["random"], 32)
    assert focus["won"] > rand["won"] + 0.3
    assert focus["return"] > rand["return"] + 5.0


def _hits_taken(env: MicroCombat, before: torch.Tensor) -> list[bool]:
    """Which units lost health since ``before`` (health [U] of copy 0)."""
    return (env.health[0] < before).tolist()


def test_sticky_enemy_keeps_its_target_while_alive_and_in_range():
    env = MicroCombat(num_envs=1, map_name="3m", enemy_targeting="sticky")
    env.reset()
    # enemy 0 (unit 3) at distance 5 of agent 0: its only ally in range, so its target
    env.place_units(far_3m(u0=(10.0, 16.0), u3=(15.0, 16.0)))
    step(env, [STOP, STOP, STOP])
    assert env.enemy_target[0, 0].item() == 0
    # agent 1 comes nearer (distance 2): the enemy keeps shooting agent 0
    env.x[0, 1], env.y[0, 1] = 13.0, 16.0
    before = env.health[0].clone()
    for _ in range(4):  # > one weapon cooldown
        step(env, [STOP, STOP, STOP])
        assert env.enemy_target[0, 0].item() == 0
    assert _hits_taken(env, before)[:2] == [True, False]
    # agent 0 dies: the enemy switches to the nearest ally in range, agent 1
    env.health[0, 0] = 0.0
    step(env, [0, STOP, STOP])
    assert env.enemy_target[0, 0].item() == 1
    # agent 2 comes in range, then agent 1 leaves range (distance 7): switch to agent 2
    env.x[0, 2], env.y[0, 2] = 15.0, 12.0
    step(env, [0, STOP, STOP])
    assert env.enemy_target[0, 0].item() == 1
    env.x[0, 1], env.y[0, 1] = env.x[0, 3].item() - 7.0, env.y[0, 3].item()
    step(env, [0, STOP, STOP])
    assert env.enemy_target[0, 0].item() == 2


def test_nearest_enemy_retargets_every_step():
    env = MicroCombat(num_envs=1, map_name="3m")
    env.reset()
    env.place_units(far_3m(u0=(10.0, 16.0), u1=(13.0, 16.0), u3=(15.0, 16.0)))
    before = env.health[0].clone()
    for _ in range(4):
        step(env, [STOP, STOP, STOP])
    assert _hits_taken(env, before)[:2] == [False, True]


def test_sticky_enemy_attack_moves_towards_the_allies_start():
    env = MicroCombat(num_envs=1, map_name="3m", enemy_targeting="sticky")
    env.reset()
    env.place_units(far_3m())  # nobody in range
    x0, y0 = env.x[0, 3].item(), env.y[0, 3].item()
    step(env, [STOP, STOP, STOP])
    goal = torch.tensor(env.ally_start) - torch.tensor([x0, y0])
    moved = torch.tensor([env.x[0, 3].item() - x0, env.y[0, 3].item() - y0])
    assert env.enemy_target[0, 0].item() == -1 and moved.norm() > 0.5
    assert torch.allclose(moved / moved.norm(), goal / goal.norm(), atol=1e-5)


def test_bad_enemy_targeting_fails_early():
    with pytest.raises(ValueError, match="enemy_targeting"):
        MicroCombat(enemy_targeting="random")


@pytest.mark.parametrize("pair", [(0, 1), (1, 4)])  # two allies; an ally and an enemy
def test_collisions_push_units_on_one_point_apart(pair):
    i, j = pair
    point = {f"u{i}": (10.0, 16.0), f"u{j}": (10.0, 16.0)}
    off = MicroCombat(num_envs=2, map_name="3m")
    on = MicroCombat(num_envs=2, map_name="3m", collisions=True)
    for env in (off, on):
        env.reset()
        env.place_units(far_3m(**point))
        step(env, [STOP, STOP, STOP])

    def dist(env: MicroCombat) -> torch.Tensor:
        return torch.hypot(env.x[:, i] - env.x[:, j], env.y[:, i] - env.y[:, j])

    sep = 2 * MARINE.radius
    assert (dist(off) == 0).all()
    assert (dist(on) >= sep - 1e-4).all()
    # the other units were not moved by the separation
    others = [k for k in range(3) if k not in pair]
    assert torch.equal(on.x[:, others], off.x[:, others])


def test_collisions_spread_a_stacked_army():
    env = MicroCombat(num_envs=1, map_name="2s3z", collisions=True)
    env.reset()
    pos = torch.stack([torch.full((10,), 16.0), torch.full((10,), 16.0)], -1)
    pos[5:, 0] = 30.0  # enemies stacked on another point, out of range
    env.place_units(pos)
    for _ in range(3):
        step(env, [STOP] * 5)
    x, y = env.x[0, :5], env.y[0, :5]
    d = torch.hypot(x[:, None] - x[None], y[:, None] - y[None])
    need = env.min_sep[:5, :5]
    overlap = (need - d).clamp_min(0.0)[need > 0]
    assert overlap.max() < 0.05 * need.max()


@pytest.mark.parametrize("map_name", ["3m", "5m_vs_6m", "2s3z"])
def test_defaults_are_the_unchanged_game(map_name):
    """Default options equal explicit ``nearest`` / no collisions bit for bit, and the same
    rollout does exercise what the options change (they give different trajectories)."""

    def run(**options):
        env = MicroCombat(num_envs=8, seed=2, map_name=map_name, **options)
        gen = torch.Generator().manual_seed(0)
        policy = env.reference_policies()["focus_fire"] if map_name == "3m" else None

        def act(td):
            if policy is not None:
                return td.set(ACTION, policy(td))
            return td.set(ACTION, random_policy(td, generator=gen))

        return env.rollout(60, act, break_when_any_done=False)

    default = run()
    explicit = run(enemy_targeting="nearest", collisions=False)
    for key in [("next", OBS), ("next", "state"), ("next", "reward"), ("next", "done")]:
        assert torch.equal(default[key], explicit[key])
    assert default["next", INFO, "dead_allies"].sum() > 0  # the enemy did shoot
    for options in ({"enemy_targeting": "sticky"}, {"collisions": True}):
        assert not torch.equal(default["next", "state"], run(**options)["next", "state"])


def test_smac_start_positions_are_the_maps_formation_on_3m():
    """SMAC's 3m: both teams created on the map's Team 1 (9, 16) / Team 2 (23, 16) points;
    the clusters are hexagonal lattices at twice the marine radius, mirrored, no noise."""
    envs = [MicroCombat(num_envs=4, seed=s, map_name="3m") for s in (0, 1)]
    s = 2 * MARINE.radius
    h = s * 3 ** 0.5 / 2
    ally = torch.tensor([[9.0, 16.0], [9.0 + s, 16.0], [9.0 + s / 2, 16.0 - h]])
    enemy = torch.stack([32.0 - ally[:, 0], ally[:, 1]], -1)
    want = torch.cat([ally, enemy])
    for env in envs:
        env.reset()
        for _ in range(2):  # every copy, every reset: the same positions
            pos = torch.stack([env.x, env.y], -1)
            assert torch.allclose(pos, want.expand_as(pos), atol=1e-5)
            env._reset_where(torch.ones(4, dtype=torch.bool))
    assert MicroCombat(map_name="3m").ally_start == (9.0, 16.0)  # the enemy's attack point


def test_random_start_positions_still_randomise():
    env = MicroCombat(num_envs=8, seed=0, map_name="3m", start_positions="random")
    env.reset()
    x, y = env.x.clone(), env.y.clone()
    assert x[:, 0].unique().numel() == 8  # copies differ
    assert ((x[:, :3] - 8.0).abs() <= 2.0).all() and ((x[:, 3:] - 24.0).abs() <= 2.0).all()
    assert ((y - 16.0).abs() <= 2.0).all()
    env._reset_where(torch.ones(8, dtype=torch.bool))
    assert not torch.equal(env.x, x)  # and every reset differs
    with pytest.raises(ValueError, match="start_positions"):
        MicroCombat(start_positions="line")


def _stalker_duel(shield_of_target: float, **options) -> MicroCombat:
    """2s3z: ally stalker 0 shoots enemy stalker 5 once (5 apart), everyone else far away."""
    env = MicroCombat(num_envs=1, map_name="2s3z", **options)
    env.reset()
    pos = torch.tensor([[2.0, 2.0 + 2 * i] for i in range(5)]
                       + [[30.0, 30.0 - 2 * i] for i in range(5)])
    pos[0], pos[5] = torch.tensor([10.0, 16.0]), torch.tensor([15.0, 16.0])
    shield = env.smax.clone()
    shield[5] = shield_of_target
    env.place_units(pos, shield=shield)
    step(env, [ATTACK + 0, STOP, STOP, STOP, STOP])
    return env


def test_shields_take_full_damage_and_the_rest_takes_armour():
    stalker = UNIT_TYPES["stalker"]
    raw = stalker.damage + stalker.bonus_armoured  # 18 against an armoured stalker
    env = _stalker_duel(stalker.shield)
    assert env.shield[0, 5].item() == pytest.approx(stalker.shield - raw)  # 62, not 63
    assert env.health[0, 5].item() == stalker.health
    env = _stalker_duel(5.0)  # 5 shield left: 13 spill over, less 1 armour
    assert env.shield[0, 5].item() == 0.0
    assert env.health[0, 5].item() == pytest.approx(stalker.health - (raw - 5 - stalker.armour))
    env = _stalker_duel(0.0)  # no shield: the armoured hit, 17
    assert env.health[0, 5].item() == pytest.approx(stalker.health - (raw - stalker.armour))


@pytest.mark.parametrize("rate, delay", [(2.0, 10.0), (4.0, 3.0)])
def test_shields_regenerate_at_the_rate_after_the_delay(rate, delay):
    env = MicroCombat(num_envs=1, map_name="2s3z", shield_regen_rate=rate,
                      shield_regen_delay=delay)
    env.reset()
    pos = torch.tensor([[2.0, 2.0 + 2 * i] for i in range(5)]
                       + [[30.0, 30.0 - 2 * i] for i in range(5)])
    health = env.hmax.clone()
    health[5:] = 0.0  # no enemies: nobody is hit again
    env.place_units(pos, health, shield=torch.zeros(10))  # just hit, shields empty
    step_s = env.step_seconds
    t = 0.0
    for _ in range(int((delay + 5.0) / step_s)):
        step(env, [STOP] * 5)
        t += step_s
        grown = env.shield[0, :5]
        if t < delay - env.dt:
            assert (grown == 0).all(), t  # not before the delay
        else:  # rate per second since the delay, within a tick
            lo = max(rate * (t - delay - env.dt), 0.0)
            assert (grown >= lo - 1e-4).all() and (grown <= rate * (t - delay + env.dt)).all()
    assert (env.shield[0, :5] > 0).all()
    assert (env.shield[0, :5] <= env.smax[:5]).all()
    off = MicroCombat(num_envs=1, map_name="2s3z", shield_regen_rate=0.0)
    off.reset()
    off.place_units(pos, health, shield=torch.zeros(10))
    for _ in range(int((delay + 5.0) / step_s)):
        step(off, [STOP] * 5)
    assert (off.shield == 0).all()


def test_regeneration_waits_for_the_delay_after_each_hit():
    stalker = UNIT_TYPES["stalker"]
    env = _stalker_duel(stalker.shield)  # hit once: 62 shield left, regenerates from 10 s
    env.health[0, :5] = 0.0  # the allies leave: nobody shoots again
    env.health[0, 6:] = 0.0
    left = env.shield[0, 5].item()
    for _ in range(int(9.5 / env.step_seconds)):
        step(env, [0] * 5)
    assert env.shield[0, 5].item() == left
    for _ in range(int(3.0 / env.step_seconds)):
        step(env, [0] * 5)
    assert left < env.shield[0, 5].item() <= left + 2.0 * 3.0


@pytest.mark.parametrize("smac_convention", [False, True])
def test_timeout_terminates_switch(smac_convention):
    options = {"timeout_terminates": True} if smac_convention else {}
    env = MicroCombat(num_envs=2, map_name="3m", episode_limit=3, **options)
    env.reset()
    for t in range(3):
        out = step(env, [STOP, STOP, STOP])
        assert out["done"].squeeze(-1).tolist() == [t == 2] * 2
        if t < 2:
            assert not out["terminated"].any()
    assert out["terminated"].all() == smac_convention
    assert out["truncated"].all() != smac_convention
    assert out[INFO, "won"].eq(0).all()  # a time-out is not a win


def test_last_action_input_is_fed_alike_in_acting_and_training():
    """RNNAgent(last_action=True): the input grows by n_actions; the acting policy's recurrent
    states (previous actions carried by the policy) equal the learner's training unroll (previous
    actions rebuilt from the stored actions), across an episode start inside the chunk."""
    from torchrl.envs import Compose, InitTracker, TensorDictPrimer, TransformedEnv

    from seqcomm.learner import NEXT, QLearner
    from seqcomm.policy import HIDDEN, PREV_ACTION

    env = MicroCombat(num_envs=3, seed=0, map_name="3m", episode_limit=4,
                      start_positions="random")
    info = env_info(env)
    plain = QLearner(env_info=info, hidden_dim=8)
    torch.manual_seed(0)
    learner = QLearner(env_info=info, hidden_dim=8, last_action=True)
    fc = learner.net.agent.fc
    assert fc.in_features == plain.net.agent.fc.in_features + info.n_actions
    policy = learner.policy  # epsilon 1: random available actions, so previous actions vary
    wrapped = TransformedEnv(env, Compose(InitTracker(), TensorDictPrimer(
        policy.primer_spec(3), expand_specs=False)))
    roll = wrapped.rollout(10, policy, break_when_any_done=False)  # resets after step 4
    assert roll["is_init"][:, 4].all() and not roll["is_init"][:, 3].any()
    batch = roll.exclude(HIDDEN, (NEXT, HIDDEN), PREV_ACTION, (NEXT, PREV_ACTION))
    with torch.no_grad():
        h, h_next = learner.recurrent_states(learner.net, batch)
        assert torch.allclose(h, roll[NEXT, HIDDEN], atol=1e-6)  # what acting computed
        # bootstrapping input: the next observation with this step's action as previous
        cont = ~roll["is_init"][:, 1:].squeeze(-1)
        assert torch.allclose(h_next[:, :-1][cont], h[:, 1:][cont], atol=1e-6)
        # the previous actions do matter: zeroing them changes the states
        zero = learner.net.agent.unroll(learner.net.inputs(batch[OBS], batch["state"]),
                                        batch["is_init"].squeeze(-1),
                                        torch.zeros(*batch[MASK].shape))
        assert not torch.allclose(zero[:, 1:4], h[:, 1:4], atol=1e-4)
    with pytest.raises(ValueError, match="prev_action"):
        learner.net.agent.encode(batch[OBS][:, 0], h[:, 0])
