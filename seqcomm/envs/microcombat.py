"""``microcombat``: a SMAC-like micromanagement simulator in pure torch (docs/method.md §6.4).

After JaxMARL's SMAX: SMAC's unit types (``units.py``), maps, observation / state / action
layout and shaped reward, with simple continuous 2-D kinematics instead of StarCraft II.
Everything is batched over copies and units: per-unit state is ``[E, U]`` and pairwise
quantities are ``[E, n_agents, U]`` / ``[E, n_enemies, n_agents]`` tensors.

Start positions (``start_positions``). ``"smac"`` (default): SMAC's placement, the same every
episode. Read from SMAC's own map files (``smac/env/starcraft2/maps/SMAC_Maps/*.SC2Map``,
opened as MPQ archives: ``Objects``, ``MapScript.galaxy``, ``MapInfo``): all seven maps modelled
here are 32 x 32 and hold two points, "Team 1" at (9, 16) and "Team 2" at (23, 16); the map
script's start trigger (run again when all units are dead) creates every allied unit at Team 1
and every enemy at Team 2 (``CreateUnitsWithDefaultFacing``, allies created in SMAC's unit
order, stalkers before zealots) and orders the enemy to attack-move to Team 1. Where exactly
the game then puts the units of a group around its point is decided by StarCraft II's
placement search, which the files do not hold; it is modelled here as a compact cluster: a
hexagonal lattice with spacing of twice the team's largest radius (no overlap), filled in unit
order from the point outwards, front (towards the enemy) before back, the enemy's cluster the
allies' mirrored through x = 16 (14 apart, out of sight range 9, facing each other).
``"random"``: the earlier SMAX-like scheme, each team on its quarter point (8, 16) / (24, 16)
plus uniform noise of half-width ``spawn_spread`` per unit (SMACv2-style randomness).

Dynamics. One agent step is SMAC's 8 game loops (0.357 s at "faster" speed), split into
``ticks_per_step`` ticks. Per tick every living unit with an attack order on a living target
fires when the target is within weapon reach (weapon range plus both radii, SC2 measures
range edge to edge) and its weapon is cooled down, else walks towards the target (as SC2 does
with an attack order); a unit with a move order walks ``speed * dt`` in its direction.
Volleys deal ``attacks * (damage + bonus)`` to shields first, without armour (as StarCraft II:
a stalker hit takes 18 off a stalker's shields); what the shields do not absorb reaches health
less the target's armour once per attack that reaches it (at least 0.5 per attack, so a
shieldless hit deals ``attacks * max(damage + bonus - armour, 0.5)``). Hits of several shooters
on one target in one tick are pooled: the attacks reaching health are counted at the pool's
mean damage per attack (exact when the shooters are of one type). Shields regenerate
``shield_regen_rate`` per second once a unit has gone ``shield_regen_delay`` seconds (game
time) without being hit (SC2: 2 per second after 10 s); regenerated shields are neither
rewarded nor penalised. Units die at health 0; all shots of a tick land at once (both teams can
die together: a draw, not a win).
A volley adds the weapon cooldown to the unit's timer and the remainder carries over, so the
rate of fire does not depend on the tick length.
With ``collisions`` on, after each tick's movement overlapping living units (both teams) are
pushed apart (SMAX-style pairwise separation, ``COLLISION_ITERS`` relaxation passes, radii
from ``units.py``).
Not modelled: auto-acquiring targets after a ``stop``, terrain, shield armour upgrades.

Time-out. At ``episode_limit`` steps an unfinished episode ends with ``truncated`` (the learner
bootstraps from its last state, the usual time-limit convention) by default;
``timeout_terminates=True`` takes SMAC / PyMARL's convention instead: the time-out is a
terminal state (``terminated``, no bootstrap) and a loss.

Scripted enemy (``enemy_targeting``). ``"nearest"`` (default): every step it fires at the
nearest living ally within its shoot range, else walks towards the nearest living ally.
``"sticky"`` (SC2 / SMAX-like): it keeps its current target while that ally is alive and
within its shoot range, else takes the nearest living ally in range; with none in range it
attack-moves towards the allies' start point (SMAC's Team 1 point under SMAC placement), and
once within shoot range of that point (nobody there) towards the nearest living ally, so an
episode cannot stall.

Actions (SMAC): 0 no-op (dead agents only), 1 stop, 2-5 move north/south/east/west, 6+j
attack enemy j (alive, within the agent's shoot range and strictly within its sight range: with
a reduced sight range only visible enemies can be attacked). An action outside the mask is
executed as stop (no-op for dead agents).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase

from seqcomm.envs.base import ACTION, AGENTS, MASK, OBS, MultiAgentEnv
from seqcomm.envs.reference import random_policy
from seqcomm.envs.units import LOOPS_PER_SECOND, MAPS, SMAC_STEP_MUL, UNIT_TYPES

N_NO_ATTACK = 6  # no-op, stop, north, south, east, west
# SMAC's move directions, in action order 2..5
DIRECTIONS = ((0.0, 1.0), (0.0, -1.0), (1.0, 0.0), (-1.0, 0.0))
# SMAC's reward constants
DEATH_VALUE, WIN_VALUE, NEGATIVE_SCALE = 10.0, 200.0, 0.5
EnemyTargeting = Literal["nearest", "sticky"]
StartPositions = Literal["smac", "random"]
ENEMY_TARGETING: tuple[str, ...] = get_args(EnemyTargeting)
START_POSITIONS: tuple[str, ...] = get_args(StartPositions)
# SMAC's start points ("Team 1", "Team 2" in each .SC2Map's Objects) on its 32 x 32 maps
SMAC_ALLY_POINT, SMAC_ENEMY_POINT = (9.0, 16.0), (23.0, 16.0)
COLLISION_ITERS = 3  # relaxation passes of the pairwise separation per tick


class MicroCombat(MultiAgentEnv):
    """SMAC-style battle of learning allies against a scripted attack-moving enemy.

    Args:
        num_envs: number of parallel copies.
        seed: seed of the start positions.
        device: torch device.
        map_name: a SMAC map from ``units.MAPS`` (``3m``, ``8m``, ``2s3z``, ...).
        sight_range: how far agents see (SMAC: 9); lower it to make communication matter.
        see_allies: False zeroes the ally features of the observations (as SeqComm on SMACv2).
        episode_limit: steps before truncation; None takes the map's SMAC limit.
        ticks_per_step: simulation ticks per agent step (weapon cooldowns resolve per tick).
        state_last_action: append the agents' last actions to the state (SMAC's default).
        reward_only_positive: SMAC's default; False subtracts half the damage taken.
        reward_scale_rate: the maximum possible return (SMAC: 20).
        spawn_spread: half-width of the square of uniform noise around each team's start
            point (``start_positions="random"`` only).
        enemy_targeting: ``"nearest"`` (re-picks the nearest ally every step) or ``"sticky"``
            (keeps its target while alive and in range; attack-moves to the allies' start).
        collisions: push overlapping living units apart after movement.
        start_positions: ``"smac"`` (SMAC's fixed formations, see the module docstring) or
            ``"random"`` (quarter points plus ``spawn_spread`` noise).
        shield_regen_rate: shield points regenerated per second (SC2: 2); 0 disables.
        shield_regen_delay: seconds without being hit before shields regenerate (SC2: 10).
        timeout_terminates: a time-out is ``terminated`` (SMAC / PyMARL: no bootstrap) instead
            of ``truncated``.
    """

    metrics = ("dead_allies", "dead_enemies", "won")

    def __init__(
        self,
        num_envs: int = 1,
        seed: int = 0,
        device: str = "cpu",
        map_name: str = "3m",
        sight_range: float = 9.0,
        see_allies: bool = True,
        episode_limit: int | None = None,
        ticks_per_step: int = 2,
        state_last_action: bool = True,
        reward_only_positive: bool = True,
        reward_scale_rate: float = 20.0,
        spawn_spread: float = 2.0,
        enemy_targeting: EnemyTargeting = "nearest",
        collisions: bool = False,
        start_positions: StartPositions = "smac",
        shield_regen_rate: float = 2.0,
        shield_regen_delay: float = 10.0,
        timeout_terminates: bool = False,
    ) -> None:
        if map_name not in MAPS:
            raise ValueError(f"microcombat: unknown map {map_name!r}; known maps: {sorted(MAPS)}")
        if not sight_range > 0:
            raise ValueError(f"microcombat: sight_range must be > 0 (SMAC uses 9), got "
                             f"{sight_range}")
        if episode_limit is not None and episode_limit < 1:
            raise ValueError(f"microcombat: episode_limit must be >= 1 or None, got "
                             f"{episode_limit}")
        if ticks_per_step < 1:
            raise ValueError(f"microcombat: ticks_per_step must be >= 1, got {ticks_per_step}")
        if enemy_targeting not in ENEMY_TARGETING:
            raise ValueError(f"microcombat: enemy_targeting must be one of {ENEMY_TARGETING}, "
                             f"got {enemy_targeting!r}")
        if start_positions not in START_POSITIONS:
            raise ValueError(f"microcombat: start_positions must be one of {START_POSITIONS}, "
                             f"got {start_positions!r}")
        if shield_regen_rate < 0 or shield_regen_delay < 0:
            raise ValueError("microcombat: shield_regen_rate and shield_regen_delay must be >= 0")
        self.enemy_targeting, self.collisions = enemy_targeting, bool(collisions)
        self.start_positions, self.timeout_terminates = start_positions, bool(timeout_terminates)
        self.shield_regen_rate = float(shield_regen_rate)
        self.shield_regen_delay = float(shield_regen_delay)
        spec = MAPS[map_name]
        self.map_name, self.size = map_name, spec.size
        self.sight_range, self.see_allies = float(sight_range), see_allies
        self.ticks_per_step, self.state_last_action = ticks_per_step, state_last_action
        self.reward_only_positive, self.spawn_spread = reward_only_positive, spawn_spread
        self.episode_limit = episode_limit if episode_limit is not None else spec.limit
        names = spec.allies + spec.enemies
        self.n_agents, self.n_enemies = len(spec.allies), len(spec.enemies)
        self.n_actions = N_NO_ATTACK + self.n_enemies
        # SMAC layout sizes: one-hot types only on mixed maps, shields only for Protoss teams
        kinds = [k for k in UNIT_TYPES if k in names]
        self.type_bits = len(kinds) if len(kinds) > 1 else 0
        self.shield_ally = int(any(UNIT_TYPES[k].shield > 0 for k in spec.allies))
        self.shield_enemy = int(any(UNIT_TYPES[k].shield > 0 for k in spec.enemies))
        self.nf_enemy = 5 + self.shield_enemy + self.type_bits
        self.nf_ally = 5 + self.shield_ally + self.type_bits
        self.nf_own = 1 + self.shield_ally + self.type_bits
        self.obs_dim = (4 + self.n_enemies * self.nf_enemy + (self.n_agents - 1) * self.nf_ally
                        + self.nf_own)
        self.nf_ally_state = 4 + self.shield_ally + self.type_bits
        self.nf_enemy_state = 3 + self.shield_enemy + self.type_bits
        self.state_dim = (self.n_agents * self.nf_ally_state + self.n_enemies * self.nf_enemy_state
                          + (self.n_agents * self.n_actions if state_last_action else 0))
        super().__init__(num_envs, seed, device)
        self._build_tables(names, kinds)
        max_reward = self.n_enemies * DEATH_VALUE + WIN_VALUE + float(
            (self.hmax + self.smax)[self.n_agents:].sum())
        self.reward_scale = reward_scale_rate / max_reward
        E, U, dev = num_envs, len(names), self.device
        # structure of arrays: every per-unit quantity is a contiguous [E, U] tensor (small
        # trailing dimensions such as xy make CPU kernels several times slower)
        self.x = torch.zeros(E, U, device=dev)
        self.y = torch.zeros(E, U, device=dev)
        self.health = self.hmax.expand(E, U).clone()
        self.shield = self.smax.expand(E, U).clone()
        self.cooldown = torch.zeros(E, U, device=dev)
        self.since_hit = torch.zeros(E, U, device=dev)  # seconds since last hit (shields)
        self.t = torch.zeros(E, dtype=torch.long, device=dev)
        self.last_action = torch.zeros(E, self.n_agents, self.n_actions, device=dev)
        self.won = torch.zeros(E, device=dev)
        # sticky enemy targeting: each enemy's current target (agent index), -1 for none
        self.enemy_target = torch.full((E, self.n_enemies), -1, dtype=torch.long, device=dev)
        self._policy_rng = torch.Generator(device=dev).manual_seed(seed)

    def _build_tables(self, names: tuple[str, ...], kinds: list[str]) -> None:
        """Per-unit stat vectors [U], flat per-pair tables [U * U] and layout constants."""
        dev, stats = self.device, [UNIT_TYPES[k] for k in names]
        n_a, U, W = self.n_agents, len(names), self.size

        def vec(attr: str) -> torch.Tensor:
            return torch.tensor([float(getattr(s, attr)) for s in stats], device=dev)

        self.hmax, self.smax = vec("health"), vec("shield")
        self.has_shields = bool((self.smax > 0).any())
        self.step_seconds = SMAC_STEP_MUL / LOOPS_PER_SECOND
        self.dt = self.step_seconds / self.ticks_per_step
        self.step_len = vec("speed") * self.dt  # distance per tick
        self.weapon_cd = vec("cooldown")
        self.cd_norm = vec("max_cooldown") / LOOPS_PER_SECOND  # SMAC's max cooldown, seconds
        self.shoot_range = vec("shoot_range")
        radius = vec("radius")
        self.radius = radius
        # collisions: minimum centre distance of every pair [U, U], zero on the diagonal
        self.min_sep = (radius[:, None] + radius[None, :]) * (1 - torch.eye(U, device=dev))
        # tie-break direction for coincident units: along x, the lower index goes left
        idx = torch.arange(U, device=dev)
        self.tie_x = torch.sign(idx[None, :] - idx[:, None]).float()
        # weapon reach between centres and damage per volley, for every (shooter, target)
        self.reach = (vec("weapon_range")[:, None] + radius[:, None] + radius[None, :]).flatten()
        per_attack = vec("damage")[:, None] + vec("bonus_armoured")[:, None] * vec("armoured")
        self.volley = (vec("attacks")[:, None]
                       * (per_attack - vec("armour")[None, :]).clamp_min(0.5)).flatten()
        # with shields: raw damage per volley (shields take it without armour) and per unit
        # attacks per volley and armour (applied per attack that reaches health)
        self.volley_raw = (vec("attacks")[:, None] * per_attack).flatten()
        self.attacks, self.armour = vec("attacks"), vec("armour")
        self.regen = self.has_shields and self.shield_regen_rate > 0
        self.rows_u = torch.arange(U, device=dev) * U  # row offsets into the flat tables
        type_id = torch.tensor([kinds.index(k) for k in names], device=dev)
        self.type_planes = F.one_hot(type_id, len(kinds)).float().T[: self.type_bits]  # [tb, U]
        # ally j != i of agent i, row by row: [n_a, n_a - 1]
        others = [[j for j in range(n_a) if j != i] for i in range(n_a)]
        self.others = torch.tensor(others, dtype=torch.long, device=dev).reshape(n_a, n_a - 1)
        if self.start_positions == "smac":
            self.ally_start = SMAC_ALLY_POINT  # the allies' start point (sticky enemies' goal)
            ally = self._formation(radius[:n_a], SMAC_ALLY_POINT, 1.0)
            enemy = self._formation(radius[n_a:], SMAC_ENEMY_POINT, -1.0)
            self.start_x, self.start_y = torch.cat([ally[0], enemy[0]]), torch.cat([ally[1],
                                                                                    enemy[1]])
        else:
            self.ally_start = (W / 4, W / 2)
            self.start_x = torch.tensor([W / 4] * n_a + [3 * W / 4] * self.n_enemies,
                                        device=dev)
            self.start_y = torch.full((U,), W / 2, device=dev)
        self.dir_x = torch.tensor([d[0] for d in DIRECTIONS], device=dev)
        self.dir_y = torch.tensor([d[1] for d in DIRECTIONS], device=dev)
        # team indicator [U, 2] (allies, enemies): counts and team sums are one matmul
        team = torch.zeros(U, 2, device=dev)
        team[:n_a, 0], team[n_a:, 1] = 1.0, 1.0
        self.team = team
        ally_weight = 0.0 if self.reward_only_positive else -NEGATIVE_SCALE
        self.reward_weight = team[:, 1] + ally_weight * team[:, 0]

    @staticmethod
    def _formation(radius: torch.Tensor, point: tuple[float, float], facing: float):
        """SMAC-like cluster of one team (module docstring): ``len(radius)`` hexagonal lattice
        sites (spacing twice the largest radius) nearest ``point``, taken in unit order, nearest
        first, then front (``facing``: +1 east, -1 west) before back, then south before north.
        Returns x, y [m]."""
        m, s = len(radius), 2 * float(radius.max())
        rings = 2  # enough rows and columns that the m nearest sites are among the candidates
        while 3 * rings * (rings - 1) + 1 < m:
            rings += 1
        sites = []
        for row in range(-rings, rings + 1):
            for col in range(-2 * rings, 2 * rings + 1):
                dx, dy = (col + (row % 2) / 2) * s, row * s * 3 ** 0.5 / 2
                d = round((dx * dx + dy * dy) ** 0.5, 6)
                sites.append((d, -dx, dy, dx))  # nearest, then front (dx sign), then south
        sites.sort()
        dx = torch.tensor([q[3] for q in sites[:m]], device=radius.device)
        dy = torch.tensor([q[2] for q in sites[:m]], device=radius.device)
        return point[0] + facing * dx, point[1] + dy

    # ------------------------------------------------------------------ reset and observe
    def _reset_where(self, mask: torch.Tensor) -> None:
        E, U = self.x.shape
        m = mask[:, None]
        if self.start_positions == "random":
            noise = (self.rand(2, E, U) * 2 - 1) * self.spawn_spread
            self.x = torch.where(m, self.start_x + noise[0], self.x)
            self.y = torch.where(m, self.start_y + noise[1], self.y)
        else:  # SMAC's fixed formations, no noise
            self.x = torch.where(m, self.start_x, self.x)
            self.y = torch.where(m, self.start_y, self.y)
        self.health = torch.where(m, self.hmax, self.health)
        self.shield = torch.where(m, self.smax, self.shield)
        self.cooldown = torch.where(m, 0.0, self.cooldown)
        self.since_hit = torch.where(m, 0.0, self.since_hit)
        self.t = torch.where(mask, 0, self.t)
        self.last_action = torch.where(m[..., None], 0.0, self.last_action)
        self.won = torch.where(mask, 0.0, self.won)
        self.enemy_target = torch.where(m, -1, self.enemy_target)

    def place_units(self, pos: torch.Tensor, health: torch.Tensor | None = None,
                    shield: torch.Tensor | None = None) -> TensorDictBase:
        """Put units by hand (tests, demos): ``pos`` [E, U, 2] or [U, 2], allies first;
        ``health`` and ``shield`` [E, U] or [U]. Every unit counts as just hit (shields
        regenerate ``shield_regen_delay`` seconds later). Returns the observation TensorDict."""
        U = self.n_agents + self.n_enemies
        if pos.shape[-2:] != (U, 2):
            raise ValueError(f"microcombat: pos must end in ({U}, 2), got {tuple(pos.shape)}")
        pos = pos.to(self.device, torch.float32)
        self.x = pos[..., 0].expand_as(self.x).clone()
        self.y = pos[..., 1].expand_as(self.y).clone()
        if health is not None:
            self.health = health.to(self.device, torch.float32).expand_as(self.health).clone()
        if shield is not None:
            self.shield = shield.to(self.device, torch.float32).expand_as(self.shield).clone()
        self.enemy_target.fill_(-1)
        self.since_hit.zero_()
        return self._observe()

    def _move_ok(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """SMAC's ``can_move``: the point one unit away (north, south, east, west) is on the
        map. [E, n] -> [E, n, 4]."""
        return torch.stack([y < self.size - 1, y >= 1, x < self.size - 1, x >= 1], -1)

    def _observe(self) -> TensorDictBase:
        E, n_a, n_e, sr = self.num_envs, self.n_agents, self.n_enemies, self.sight_range
        alive = self.health > 0
        a_alive = alive[:, :n_a]
        xs, ys = self.x / sr, self.y / sr  # geometry in units of the sight range
        health = self.health / self.hmax
        shield = self.shield / self.smax.clamp_min(1.0)
        obs = torch.empty(E, n_a, self.obs_dim, device=self.device)
        # movement features and action mask: no-op iff dead, stop, moves, attack in range
        moves = self._move_ok(self.x[:, :n_a], self.y[:, :n_a]) & a_alive[..., None]
        obs[..., :4] = moves.float()
        # enemies [E, n_a, n_e]: [available, distance, rel x, rel y, health, (shield), (type)]
        dx, dy = xs[:, None, n_a:] - xs[:, :n_a, None], ys[:, None, n_a:] - ys[:, :n_a, None]
        dist = (dx * dx + dy * dy).sqrt_()
        both = alive[:, None, n_a:] & a_alive[..., None]
        visible = both & (dist < 1.0)
        # attackable: within shoot range AND sight. An unseen enemy's features are zero, so
        # letting the mask offer it would leak its presence (what communication should carry)
        in_range = visible & (dist <= self.shoot_range[:n_a, None] / sr)
        end = 4 + n_e * self.nf_enemy
        units = [p[..., None, :] for p in
                 self._unit_planes(health, shield, self.shield_enemy, n_a, None)]
        self._pair_block(obs[..., 4:end], in_range, dist, dx, dy, visible, units)
        # allies j != i: [visible, distance, rel x, rel y, health, (shield), (type)]
        if self.see_allies:
            others = self.others.flatten()
            ox, oy = xs.index_select(1, others), ys.index_select(1, others)
            dx = ox.view(E, n_a, n_a - 1) - xs[:, :n_a, None]
            dy = oy.view(E, n_a, n_a - 1) - ys[:, :n_a, None]
            dist = (dx * dx + dy * dy).sqrt_()
            visible = (alive.index_select(1, others).view(E, n_a, n_a - 1) & a_alive[..., None]
                       & (dist < 1.0))
            units = [p.index_select(-1, others).view(*p.shape[:-1], n_a, n_a - 1)
                     for p in self._unit_planes(health, shield, self.shield_ally, 0, n_a)]
            self._pair_block(obs[..., end: end + (n_a - 1) * self.nf_ally], visible, dist, dx,
                             dy, visible, units)
        else:
            obs[..., end: end + (n_a - 1) * self.nf_ally] = 0.0
        # own features: health, (shield), (type)
        own = self._unit_planes(health, shield, self.shield_ally, 0, n_a)
        obs[..., -self.nf_own:] = torch.stack([p.expand(E, n_a) for p in own], -1) \
            * a_alive[..., None]
        mask = torch.cat([~a_alive[..., None], a_alive[..., None], moves, in_range], -1)
        agents = TensorDict({"observation": obs, "action_mask": mask}, batch_size=(E, n_a))
        dead = (~alive).float() @ self.team  # [E, 2]
        info = TensorDict({"won": self.won, "dead_allies": dead[:, 0],
                           "dead_enemies": dead[:, 1]}, batch_size=(E,))
        return TensorDict({AGENTS: agents, "state": self._state(alive, health, shield),
                           "info": info}, batch_size=(E,))

    def _unit_planes(self, health: torch.Tensor, shield: torch.Tensor, shield_bit: int,
                     start: int, stop: int | None) -> list[torch.Tensor]:
        """Per-unit features of units ``start:stop``: health [E, m], (shield), (types [m])."""
        planes = [health[:, start:stop]] + [shield[:, start:stop]] * shield_bit
        return planes + [p[start:stop] for p in self.type_planes]

    @staticmethod
    def _pair_block(dst: torch.Tensor, flag: torch.Tensor, dist: torch.Tensor, dx: torch.Tensor,
                    dy: torch.Tensor, visible: torch.Tensor, units: list[torch.Tensor]) -> None:
        """Write per-pair features [E, n_a, m, f] (zero where not visible) into ``dst``;
        ``units`` are per-target features broadcastable to [E, n_a, m].

        Features are stacked on a leading dimension (contiguous, fast) and transposed once by
        the copy; building them on the last dimension is several times slower on CPU.
        """
        E, n_a, m = dist.shape
        planes = [flag.to(dist.dtype), dist, dx, dy] + [u.expand(E, n_a, m) for u in units]
        stacked = torch.stack(planes).mul_(visible.to(dist.dtype))  # [f, E, n_a, m]
        dst.view(E, n_a, m, len(planes)).copy_(stacked.permute(1, 2, 3, 0))

    def _state(self, alive: torch.Tensor, health: torch.Tensor, shield: torch.Tensor):
        """SMAC's global state: ally [health, cooldown, x, y, (shield), (type)] and enemy
        [health, x, y, (shield), (type)] features, positions relative to the map centre."""
        E, n_a, n_e = self.num_envs, self.n_agents, self.n_enemies
        x, y = self.x / self.size - 0.5, self.y / self.size - 0.5
        cool = self.cooldown.clamp_min(0.0) / self.cd_norm
        types = [p.expand(E, -1) for p in self.type_planes]
        sh_a, sh_e = [shield] * self.shield_ally, [shield] * self.shield_enemy
        ally = torch.stack([health, cool, x, y] + sh_a + types)[..., :n_a] * alive[:, :n_a]
        enemy = torch.stack([health, x, y] + sh_e + types)[..., n_a:] * alive[:, n_a:]
        state = torch.empty(E, self.state_dim, device=self.device)
        a_end = n_a * self.nf_ally_state
        e_end = a_end + n_e * self.nf_enemy_state
        state[:, :a_end].view(E, n_a, -1).copy_(ally.permute(1, 2, 0))
        state[:, a_end:e_end].view(E, n_e, -1).copy_(enemy.permute(1, 2, 0))
        if self.state_last_action:
            state[:, e_end:] = self.last_action.flatten(1)
        return state

    # ------------------------------------------------------------------ step
    def _orders(self, action: torch.Tensor, alive: torch.Tensor):
        """This step's orders: target unit [E, U], has_target [E, U], move vector x, y [E, U]."""
        n_a = self.n_agents
        a_alive, e_alive = alive[:, :n_a], alive[:, n_a:]
        x, y = self.x, self.y
        # agents: attack enemy j (alive, within shoot range and sight, as the mask), or move in
        # one of 4 directions
        a_tgt = (action - N_NO_ATTACK).clamp(0, self.n_enemies - 1) + n_a
        tx, ty = x.gather(1, a_tgt) - x[:, :n_a], y.gather(1, a_tgt) - y[:, :n_a]
        d2 = tx * tx + ty * ty
        a_att = ((action >= N_NO_ATTACK) & a_alive & alive.gather(1, a_tgt)
                 & (d2 <= self.shoot_range[:n_a] ** 2) & (d2 < self.sight_range ** 2))
        d_idx = (action - 2).clamp(0, 3)
        a_move = (action >= 2) & (action < N_NO_ATTACK) & a_alive
        a_move = a_move & self._move_ok(x[:, :n_a], y[:, :n_a]).gather(-1, d_idx[..., None])[..., 0]
        # scripted enemy: attack-move on the nearest living ally
        ex = x[:, None, :n_a] - x[:, n_a:, None]  # [E, n_e, n_a]
        ey = y[:, None, :n_a] - y[:, n_a:, None]
        d_ea = torch.where(a_alive[:, None], (ex * ex + ey * ey).sqrt(), float("inf"))
        d_min, nearest = d_ea.min(-1)
        e_range = self.shoot_range[n_a:]
        e_att = (d_min <= e_range) & e_alive
        if self.enemy_targeting == "nearest":
            walk = (e_alive & ~e_att & torch.isfinite(d_min)) / d_min.clamp_min(1e-6)
            wx = ex.gather(2, nearest[..., None])[..., 0] * walk
            wy = ey.gather(2, nearest[..., None])[..., 0] * walk
            e_tgt = nearest
        else:
            e_tgt, wx, wy = self._sticky_enemy(ex, ey, d_ea, d_min, nearest, e_att, e_alive)
            e_att = e_tgt >= 0
            e_tgt = e_tgt.clamp_min(0)
        target = torch.cat([a_tgt, e_tgt], 1)
        move_x = torch.cat([self.dir_x[d_idx] * a_move, wx], 1)
        move_y = torch.cat([self.dir_y[d_idx] * a_move, wy], 1)
        return target, torch.cat([a_att, e_att], 1), move_x, move_y

    def _sticky_enemy(self, ex: torch.Tensor, ey: torch.Tensor, d_ea: torch.Tensor,
                      d_min: torch.Tensor, nearest: torch.Tensor, in_range: torch.Tensor,
                      e_alive: torch.Tensor):
        """Sticky targets [E, n_e] (-1: none, stored) and unit walk vectors wx, wy [E, n_e]."""
        n_a, e_range = self.n_agents, self.shoot_range[self.n_agents:]
        cur = self.enemy_target
        d_cur = d_ea.gather(2, cur.clamp_min(0)[..., None])[..., 0]  # inf if the target died
        keep = (cur >= 0) & (d_cur <= e_range) & e_alive
        tgt = torch.where(keep, cur, torch.where(in_range, nearest, -1))
        self.enemy_target = tgt
        # no ally in range: towards the allies' start point; there, towards the nearest ally
        sx = self.ally_start[0] - self.x[:, n_a:]
        sy = self.ally_start[1] - self.y[:, n_a:]
        d_s = (sx * sx + sy * sy).sqrt()
        arrived = d_s <= e_range
        gx = torch.where(arrived, ex.gather(2, nearest[..., None])[..., 0], sx)
        gy = torch.where(arrived, ey.gather(2, nearest[..., None])[..., 0], sy)
        d_g = torch.where(arrived, d_min, d_s)
        walk = (e_alive & (tgt < 0) & torch.isfinite(d_min)) / d_g.clamp_min(1e-6)
        return tgt, gx * walk, gy * walk

    def _simulate(self, target: torch.Tensor, has_target: torch.Tensor, move_x: torch.Tensor,
                  move_y: torch.Tensor) -> None:
        """Advance ``ticks_per_step`` ticks of movement and combat for every copy and unit."""
        flat = self.rows_u + target
        reach = self.reach.take(flat)  # [E, U]
        # per volley: armour-reduced damage (no shields on the map) or raw damage and attacks
        volley = self.volley_raw.take(flat) if self.has_shields else self.volley.take(flat)
        walk_x, walk_y = move_x * self.step_len, move_y * self.step_len  # zero when attacking
        x, y, health, shield, cooldown = self.x, self.y, self.health, self.shield, self.cooldown
        since_hit = self.since_hit
        for _ in range(self.ticks_per_step):  # a loop over time, not over copies or units
            alive = health > 0
            dx, dy = x.gather(1, target) - x, y.gather(1, target) - y
            dist = (dx * dx + dy * dy).sqrt()
            engaged = has_target & alive & alive.gather(1, target)
            in_reach = dist <= reach
            fire = engaged & in_reach & (cooldown <= 0)
            # out of weapon reach: walk towards the target (SC2's attack order)
            chase = torch.where(engaged & ~in_reach, self.step_len / dist.clamp_min(1e-6), 0.0)
            x = (x + dx * chase + walk_x).clamp_(0.0, self.size)
            y = (y + dy * chase + walk_y).clamp_(0.0, self.size)
            if self.collisions:
                x, y = self._separate(x, y, alive)
            hits = torch.zeros_like(health).scatter_add_(1, target, volley * fire)
            if self.has_shields:
                health, shield, since_hit = self._shielded_hits(
                    hits, target, fire, alive, health, shield, since_hit)
            else:
                health = (health - hits).clamp_min_(0.0)
            # a volley adds the weapon cooldown; the remainder below zero carries over (clamped
            # at one tick) so the rate of fire does not depend on the tick length
            cooldown = (torch.where(fire, cooldown + self.weapon_cd, cooldown) - self.dt
                        ).clamp_min_(-self.dt)
        self.x, self.y, self.health, self.shield, self.cooldown = x, y, health, shield, cooldown
        self.since_hit = since_hit

    def _shielded_hits(self, raw: torch.Tensor, target: torch.Tensor, fire: torch.Tensor,
                       alive: torch.Tensor, health: torch.Tensor, shield: torch.Tensor,
                       since_hit: torch.Tensor):
        """One tick's raw damage per target ``raw`` [E, U] on shields (no armour), the rest on
        health (armour once per attack reaching it, at least 0.5 each); then regeneration."""
        n = torch.zeros_like(raw).scatter_add_(1, target, self.attacks * fire)  # attacks taken
        absorbed = torch.minimum(shield, raw)
        shield = shield - absorbed
        rest = raw - absorbed
        # attacks that reach health, at the pool's mean damage per attack (clamped: rounding)
        per = raw / n.clamp_min(1.0)
        n_h = torch.minimum(torch.ceil(rest / per.clamp_min(1e-6) - 1e-4).clamp_min_(0.0), n)
        dealt = torch.maximum(rest - self.armour * n_h, torch.minimum(rest, 0.5 * n_h))
        health = (health - dealt).clamp_min_(0.0)
        if self.regen:
            since_hit = torch.where(raw > 0, 0.0, since_hit + self.dt)
            grow = (since_hit >= self.shield_regen_delay) & alive & (health > 0)
            shield = torch.where(grow, (shield + self.shield_regen_rate * self.dt)
                                 .clamp_max_(self.smax), shield)
        return health, shield, since_hit

    def _separate(self, x: torch.Tensor, y: torch.Tensor, alive: torch.Tensor):
        """Push overlapping living units apart: each pair closer than the sum of its radii
        moves apart along the line between them, half the overlap each, summed over pairs
        (``COLLISION_ITERS`` batched passes over [E, U, U])."""
        both = (alive[:, :, None] & alive[:, None, :]).float()
        for _ in range(COLLISION_ITERS):  # fixed relaxation passes, not a loop over units
            dx = x[:, None, :] - x[:, :, None]  # [E, i, j]: from unit i to unit j
            dy = y[:, None, :] - y[:, :, None]
            dist = (dx * dx + dy * dy).sqrt()
            apart = dist > 1e-6
            inv = 1.0 / dist.clamp_min(1e-6)
            ux = torch.where(apart, dx * inv, self.tie_x)
            uy = torch.where(apart, dy * inv, 0.0)
            half = 0.5 * (self.min_sep - dist).clamp_min(0.0) * both
            x = (x - (ux * half).sum(-1)).clamp_(0.0, self.size)
            y = (y - (uy * half).sum(-1)).clamp_(0.0, self.size)
        return x, y

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict[ACTION]
        alive0 = self.health > 0
        hp0 = self.health + self.shield
        self._simulate(*self._orders(action, alive0))
        alive = self.health > 0
        # SMAC's reward_battle: damage dealt + kill bonus (+ win bonus below), scaled
        # regenerated shields are neither rewarded nor penalised (SMAC's reward_only_positive
        # takes the absolute value of the sum, which would reward an enemy's regeneration)
        lost = ((hp0 - self.health - self.shield).clamp_min(0.0)
                + DEATH_VALUE * (alive0 & ~alive))
        left = alive.float() @ self.team  # living allies, living enemies
        won = (left[:, 0] > 0) & (left[:, 1] == 0)
        terminated = (left == 0).any(-1)  # win, loss or draw
        reward = (lost @ self.reward_weight + WIN_VALUE * won) * self.reward_scale
        self.t = self.t + 1
        timeout = (self.t >= self.episode_limit) & ~terminated
        if self.timeout_terminates:  # SMAC / PyMARL: a time-out is terminal (a loss)
            terminated, truncated = terminated | timeout, torch.zeros_like(timeout)
        else:
            truncated = timeout
        self.won = won.float()
        self.last_action = F.one_hot(action, self.n_actions).float()
        out = self._observe()
        terminated, truncated = terminated[:, None], truncated[:, None]
        out.update({"reward": reward[:, None], "done": terminated | truncated,
                    "terminated": terminated, "truncated": truncated})
        return out

    # ------------------------------------------------------------------ scripted policies
    def reference_policies(self) -> dict[str, Callable[[TensorDictBase], torch.Tensor]]:
        """``focus_fire`` (everyone shoots the weakest enemy it can attack, i.e. alive, seen and
        in shoot range, else walks towards the nearest enemy, read from the global state) and
        ``random`` (uniform over available)."""
        return {"focus_fire": self._focus_fire,
                "random": lambda td: random_policy(td, generator=self._policy_rng)}

    def _focus_fire(self, td: TensorDictBase) -> torch.Tensor:
        n_a, n_e = self.n_agents, self.n_enemies
        obs, mask, state = td[OBS], td[MASK], td["state"]
        lead = obs.shape[:-2]  # any batch shape
        enemy = obs[..., 4: 4 + n_e * self.nf_enemy].reshape(*lead, n_a, n_e, self.nf_enemy)
        # lowest health (+ shield) first; the closer of two equally weak enemies. Only enemies
        # the mask offers count: an unseen enemy's features are zero and would look weakest
        weakness = enemy[..., 4] + (enemy[..., 5] if self.shield_enemy else 0.0)
        weakness = weakness + 0.01 * enemy[..., 1]
        can_attack = mask[..., N_NO_ATTACK:]
        best = weakness.masked_fill(~can_attack, float("inf")).argmin(-1)
        # walk towards the nearest living enemy along the longer axis
        off = n_a * self.nf_ally_state
        ally_s = state[..., :off].reshape(*lead, n_a, self.nf_ally_state)
        enemy_s = state[..., off: off + n_e * self.nf_enemy_state].reshape(*lead, n_e, -1)
        delta = enemy_s[..., None, :, 1:3] - ally_s[..., :, None, 2:4]  # [..., n_a, n_e, 2]
        dist = delta.norm(dim=-1).masked_fill(enemy_s[..., None, :, 0] <= 0, float("inf"))
        nearest = dist.argmin(-1)[..., None, None].expand(*dist.shape[:-1], 1, 2)
        d = delta.gather(-2, nearest).squeeze(-2)
        horizontal = d[..., 0].abs() >= d[..., 1].abs()
        move = torch.where(horizontal, torch.where(d[..., 0] > 0, 4, 5),
                           torch.where(d[..., 1] > 0, 2, 3))
        move = torch.where(mask.gather(-1, move[..., None]).squeeze(-1), move, 1)
        action = torch.where(can_attack.any(-1), N_NO_ATTACK + best, move)
        return torch.where(mask[..., 0], 0, action)
