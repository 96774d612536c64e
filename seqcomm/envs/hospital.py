"""Collaborative healthcare task with specialty-gated hidden risks (docs/method.md §6.3).

``n_specialists`` agents share a ward of ``n_beds`` beds; ``n_patients`` patients arrive
evenly over ``episode_limit`` steps. A patient carries one hidden risk type ``r`` (or none),
which only specialist ``r`` can see, yet only specialist ``(r + 1) % n`` may treat it (risk-free
patients: anyone). Wrong treatments and two specialists on one bed cause adverse events;
untreated patients deteriorate. Rules and reference returns: ``docs/hospital.md``.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torch.nn import functional as F

from seqcomm.envs.base import ACTION, AGENTS, INFO, OBS, STATE, MultiAgentEnv
from seqcomm.envs.reference import Policy, random_policy


class Hospital(MultiAgentEnv):
    """Batched ward of ``num_envs`` copies; actions: 0 = idle, ``k + 1`` = treat bed ``k``.

    Args:
        num_envs: number of parallel copies.
        seed: seed of the patients' draws.
        device: torch device.
        n_specialists: agents; risk type ``i`` is seen by specialist ``i`` only.
        n_patients: patients arriving per episode (evenly spread over the steps); those
            who find the ward full are diverted elsewhere.
        n_beds: beds of the ward (each agent sees all of them).
        episode_limit: decision steps per episode.
        p_risk_free: probability that a patient carries no hidden risk (any specialist may
            treat it, so specialists compete for it).
        max_initial_severity: a new patient's severity is uniform in ``1..max_initial_severity``.
        severity_growth: severity added to every untreated patient after each step.
        max_severity: severity cap (observations divide by it).
        adverse_severity: severity added to a patient by an adverse event.
        severity_cost: reward charged per unit of ward severity per step.
        adverse_penalty: reward charged per adverse event.
    """

    metrics = ("adverse_events", "severity", "treated")

    def __init__(
        self,
        num_envs: int = 1,
        seed: int = 0,
        device: str = "cpu",
        n_specialists: int = 3,
        n_patients: int = 100,
        n_beds: int = 5,
        episode_limit: int = 25,
        p_risk_free: float = 0.1,
        max_initial_severity: int = 3,
        severity_growth: float = 1.0,
        max_severity: float = 8.0,
        adverse_severity: float = 3.0,
        severity_cost: float = 0.2,
        adverse_penalty: float = 5.0,
    ) -> None:
        for name, value, low in [("n_specialists", n_specialists, 2), ("n_patients", n_patients, 1),
                                 ("n_beds", n_beds, 1), ("episode_limit", episode_limit, 1),
                                 ("max_initial_severity", max_initial_severity, 1)]:
            if value < low:
                raise ValueError(f"hospital: {name} must be >= {low}, got {value}")
        if not 0.0 <= p_risk_free <= 1.0:
            raise ValueError(f"hospital: p_risk_free must be in [0, 1], got {p_risk_free}")
        if max_severity < max_initial_severity:
            raise ValueError(f"hospital: max_severity ({max_severity}) must be >= "
                             f"max_initial_severity ({max_initial_severity})")
        for name, value in [("severity_growth", severity_growth),
                            ("adverse_severity", adverse_severity),
                            ("severity_cost", severity_cost), ("adverse_penalty", adverse_penalty)]:
            if value < 0:
                raise ValueError(f"hospital: {name} must be >= 0, got {value}")
        self.n_agents = n_specialists
        self.n_beds = n_beds
        self.n_patients = n_patients
        self.episode_limit = episode_limit
        self.p_risk_free = p_risk_free
        self.max_initial_severity = max_initial_severity
        self.severity_growth = severity_growth
        self.max_severity = max_severity
        self.adverse_severity = adverse_severity
        self.severity_cost = severity_cost
        self.adverse_penalty = adverse_penalty
        self.n_actions = n_beds + 1
        self.obs_dim = 3 * n_beds + 1  # per bed: occupied, severity, own risk flag; time
        self.state_dim = (2 + n_specialists) * n_beds + 1  # per bed: occupied, severity, risk
        super().__init__(num_envs, seed, device)
        E, K, dev = num_envs, n_beds, self.device
        steps = torch.arange(episode_limit + 1, device=dev)
        # patients arriving before decision t: floor((t+1) P / T) - floor(t P / T)
        self.arrivals = torch.diff((steps * n_patients) // episode_limit)
        self.occupied = torch.zeros(E, K, dtype=torch.bool, device=dev)
        self.severity = torch.zeros(E, K, device=dev)
        self.risk = torch.full((E, K), n_specialists, dtype=torch.long, device=dev)  # n = none
        self.t = torch.zeros(E, dtype=torch.long, device=dev)
        self.totals = torch.zeros(E, len(self.metrics), device=dev)

    # --- dynamics -------------------------------------------------------------------------

    def _admit(self, where: torch.Tensor) -> None:
        """Fill free beds (in bed order) with the patients arriving now, in copies ``where``."""
        E, K, n = self.num_envs, self.n_beds, self.n_agents
        arriving = self.arrivals[self.t.clamp(max=self.episode_limit - 1)]
        arriving = torch.where(where & (self.t < self.episode_limit), arriving, 0)
        free = ~self.occupied
        new = free & (free.long().cumsum(-1) <= arriving[:, None])
        # fresh draws for every bed keep the generator's stream independent of the ward
        severity = (self.randint(self.max_initial_severity, E, K) + 1).float()
        risk = torch.where(self.rand(E, K) < self.p_risk_free, n, self.randint(n, E, K))
        self.severity = torch.where(new, severity, self.severity)
        self.risk = torch.where(new, risk, self.risk)
        self.occupied = self.occupied | new

    def _reset_where(self, mask: torch.Tensor) -> None:
        m = mask[:, None]
        self.occupied = self.occupied & ~m
        self.severity = torch.where(m, 0.0, self.severity)
        self.risk = torch.where(m, self.n_agents, self.risk)
        self.t = torch.where(mask, 0, self.t)
        self.totals = torch.where(m, 0.0, self.totals)
        self._admit(mask)

    def safe(self, risk: torch.Tensor) -> torch.Tensor:
        """``[*B, n, K]`` bool: specialist ``j`` may treat a bed of risk ``r`` (risk-free
        patients are encoded ``r = n``): ``r == n`` or ``j == (r + 1) % n``."""
        n = self.n_agents
        j = torch.arange(n, device=risk.device)[:, None]
        r = risk.unsqueeze(-2)
        return (r == n) | ((r + 1) % n == j)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict[ACTION]
        # treats[e, j, k]: specialist j treats bed k (choices of empty beds count as idle)
        treats = F.one_hot(action, self.n_beds + 1)[..., 1:].bool() & self.occupied[:, None]
        n_treating = treats.sum(1)
        cured = (n_treating == 1) & (treats & self.safe(self.risk)).any(1)
        adverse = (n_treating >= 1) & ~cured  # a wrong specialist, or conflicting orders
        self.occupied = self.occupied & ~cured
        self.severity = torch.where(
            adverse, (self.severity + self.adverse_severity).clamp(max=self.max_severity),
            torch.where(cured, 0.0, self.severity))
        ward = self.severity.sum(-1)
        n_adverse = adverse.sum(-1).float()
        reward = -self.severity_cost * ward - self.adverse_penalty * n_adverse
        self.totals = self.totals + torch.stack([n_adverse, ward, cured.sum(-1).float()], -1)
        # untreated patients deteriorate, the clock moves, new patients arrive
        self.severity = torch.where(
            self.occupied, (self.severity + self.severity_growth).clamp(max=self.max_severity),
            0.0)
        self.t = self.t + 1
        done = (self.t >= self.episode_limit)[:, None]
        self._admit(~done[:, 0])
        out = self._observe()
        out.update({"reward": reward[:, None], "done": done, "terminated": done.clone(),
                    "truncated": torch.zeros_like(done)})
        return out

    # --- observations ---------------------------------------------------------------------

    def _observe(self) -> TensorDictBase:
        E, n, K = self.num_envs, self.n_agents, self.n_beds
        occ = self.occupied.float()
        sev = self.severity / self.max_severity
        time = (self.t.float() / self.episode_limit)[:, None]
        # own[e, j, k]: bed k carries risk type j (seen by specialist j only)
        own = (self.risk[:, None, :] == torch.arange(n, device=self.device)[:, None]).float()
        per_bed = torch.stack([occ[:, None].expand(E, n, K), sev[:, None].expand(E, n, K), own],
                              -1)
        obs = torch.cat([per_bed.reshape(E, n, 3 * K), time[:, None].expand(E, n, 1)], -1)
        risk = F.one_hot(self.risk, n + 1)[..., :n].float()  # risk-free: all zeros
        state = torch.cat([torch.cat([occ[..., None], sev[..., None], risk], -1).reshape(E, -1),
                           time], -1)
        mask = torch.cat([torch.ones(E, n, 1, dtype=torch.bool, device=self.device),
                          self.occupied[:, None].expand(E, n, K)], -1)
        agents = TensorDict({"observation": obs, "action_mask": mask}, batch_size=(E, n))
        info = TensorDict(dict(zip(self.metrics, self.totals.unbind(-1), strict=True)),
                          batch_size=(E,))
        return TensorDict({AGENTS: agents, STATE: state, INFO: info}, batch_size=(E,))

    # --- scripted reference policies ------------------------------------------------------

    def decode_state(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(occupied [E, K] bool, severity [E, K], risk [E, K] long)`` from ``state``."""
        n = self.n_agents
        beds = state[:, :-1].reshape(state.shape[0], self.n_beds, 2 + n)
        onehot = beds[..., 2:]
        risk = torch.where(onehot.sum(-1) > 0.5, onehot.argmax(-1), n)
        return beds[..., 0] > 0.5, beds[..., 1] * self.max_severity, risk

    def full_info_policy(self, td: TensorDictBase) -> torch.Tensor:
        """Greedy on the global state: repeatedly give the most severe treatable patient to
        a specialist allowed to treat it (exclusive patients first on ties), one per agent."""
        occupied, severity, risk = self.decode_state(td[STATE])
        E, n, K = occupied.shape[0], self.n_agents, self.n_beds
        safe = self.safe(risk) & occupied[:, None]
        exclusive = (risk != n)[:, None].float()
        score = torch.where(safe, severity[:, None] + 0.5 * exclusive, -torch.inf)
        action = torch.zeros(E, n, dtype=torch.long, device=occupied.device)
        # a matching, not a per-agent loop: each round assigns one (specialist, bed) pair
        for _ in range(min(n, K)):
            best, idx = score.reshape(E, n * K).max(-1)
            ok = best > -torch.inf
            j, k = idx // K, idx % K
            pick = ok[:, None] & (torch.arange(n, device=action.device) == j[:, None])
            action = torch.where(pick, (k + 1)[:, None], action)
            score = score.masked_fill(F.one_hot(j, n).bool()[..., None] & ok[:, None, None],
                                      -torch.inf)
            score = score.masked_fill(F.one_hot(k, K).bool()[:, None] & ok[:, None, None],
                                      -torch.inf)
        return action

    def local_policy(self, td: TensorDictBase) -> torch.Tensor:
        """Own observation only: bed ``k`` is specialist ``(k + t) % n``'s turn at step ``t``
        (a fixed rule, so no two specialists pick one bed); each treats its most severe
        turn bed whose risk it cannot rule out (a risk it sees is never its own)."""
        n, K = self.n_agents, self.n_beds
        obs = td[OBS]
        beds = obs[..., : 3 * K].reshape(*obs.shape[:-1], K, 3)
        t = (obs[..., -1] * self.episode_limit).round().long()
        j = torch.arange(n, device=obs.device)[:, None]
        turn = (torch.arange(K, device=obs.device) + t[..., None]) % n == j
        ok = (beds[..., 0] > 0.5) & (beds[..., 2] < 0.5) & turn
        best, bed = torch.where(ok, beds[..., 1], -1.0).max(-1)
        return torch.where(best >= 0, bed + 1, 0)

    def reference_policies(self) -> dict[str, Policy]:
        """Scripted policies ``td -> actions [E, n]``: ``full_info`` (global state),
        ``local`` (own observation, no communication) and ``random``."""
        gen = torch.Generator(device=self.device).manual_seed(0)
        return {"full_info": self.full_info_policy, "local": self.local_policy,
                "random": lambda td: random_policy(td, gen)}
