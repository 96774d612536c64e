"""RGMComm's two-agent grid maze (docs/method.md §6.2, RGMComm Appendix E.1).

Cells are ``(row, col)`` counted from 0 at the upper-left corner, so the paper's (1,1) is
``(0, 0)`` here and its (3,3) is ``(size - 2, size - 2)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDict, TensorDictBase

from seqcomm.envs.base import ACTION, AGENTS, INFO, MultiAgentEnv
from seqcomm.envs.reference import random_policy

# action index -> (d_row, d_col): stay, up, down, left, right
MOVES = torch.tensor([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]])


class Maze(MultiAgentEnv):
    """Two agents must meet on the same landmark of a ``size`` x ``size`` grid.

    Rules from the paper: the high landmark (reward ``high_reward``) is the upper-left cell,
    the low one (``low_reward``) the ``size - 1``-th diagonal cell; the team is paid once,
    when both agents stand on the same landmark, and the episode ends then or after
    ``steps`` moves; no collisions, no movement cost, agents see neither the landmarks nor
    each other.

    Choices the paper leaves open:

    * Start cells are drawn uniformly and independently for each agent among the cells
      that are not landmarks (so no episode is won before the first move).
    * Actions: stay, up, down, left, right; moves that would leave the grid are masked out.
    * Observation of agent i: one-hot of its own cell (``size**2``) then one-hot of the
      step counter ``t`` in ``0..steps`` (``steps + 1``; ``t = steps`` only in the final
      observation). The paper's agents "can only see their own position":
      ``observe_step=False`` leaves the counter out (the state keeps it). The other agent's
      cell is the missing information: the high landmark is worth the trip only if both can
      reach it in time, so each agent needs to know how far the other is (with the
      defaults: full information 0.707 expected return, best policy without communication
      0.5, both going to the low landmark).
    * State: one-hot cells of both agents then the step one-hot (``2 * size**2 + steps + 1``).
    * The horizon is part of the task (the step is in the state), so its end sets
      ``terminated``; ``truncated`` is always false.
    * Metrics: ``("info", "success")`` (met on any landmark) and ``("info", "high")``
      (met on the high landmark), each 0 or 1 at episode end.

    Args:
        num_envs: number of parallel copies.
        seed: seed of the start-cell draws.
        device: torch device.
        size: side of the square grid (>= 3 so that the two landmarks differ).
        steps: moves per episode (the paper uses 3).
        high_reward: team reward for meeting on the upper-left landmark (r1).
        low_reward: team reward for meeting on the diagonal landmark (r2 < r1).
        observe_step: whether observations hold the step counter (False: the paper's).
    """

    metrics = ("high", "success")
    n_agents = 2
    n_actions = 5

    def __init__(
        self,
        num_envs: int = 1,
        seed: int = 0,
        device: str = "cpu",
        size: int = 4,
        steps: int = 3,
        high_reward: float = 1.0,
        low_reward: float = 0.5,
        observe_step: bool = True,
    ) -> None:
        if size < 3:
            raise ValueError(f"maze: size must be >= 3 so the two landmarks differ, got {size}")
        if steps < 1:
            raise ValueError(f"maze: steps must be >= 1, got {steps}")
        if not high_reward > low_reward > 0:
            raise ValueError(
                "maze: need high_reward > low_reward > 0, got "
                f"high_reward={high_reward}, low_reward={low_reward}"
            )
        self.size, self.steps = size, steps
        self.high_reward, self.low_reward = float(high_reward), float(low_reward)
        self.episode_limit = steps
        self.observe_step = observe_step
        self.obs_dim = size * size + (steps + 1) * observe_step
        self.state_dim = 2 * size * size + steps + 1
        super().__init__(num_envs, seed, device)
        dev = self.device
        self.high_cell = torch.tensor([0, 0], device=dev)
        self.low_cell = torch.tensor([size - 2, size - 2], device=dev)
        cells = torch.arange(size * size, device=dev)
        landmarks = torch.stack([self._flat(self.high_cell), self._flat(self.low_cell)])
        self.start_cells = cells[~torch.isin(cells, landmarks)]
        self.moves = MOVES.to(dev)
        self.pos = torch.zeros(num_envs, 2, 2, dtype=torch.long, device=dev)  # [E, agent, rc]
        self.t = torch.zeros(num_envs, dtype=torch.long, device=dev)
        self.high_met = torch.zeros(num_envs, dtype=torch.bool, device=dev)
        self.low_met = torch.zeros_like(self.high_met)

    def optimal_returns(self) -> tuple[float, float]:
        """Expected returns of the best team without communication and with full information.

        An agent that sees only its own cell (and the step) can only commit, per start cell,
        to one landmark; the team is paid when both commit to the same one and both reach it
        in ``steps`` moves. So the no-communication team's return is ``(high A1 A2 + low B1
        B2) / n^2`` with ``A`` (``B``) an agent's start cells sent to, and within reach of,
        the high (low) landmark: only cells within reach of both are a choice, and ``A + B``
        is fixed, so every split is scored. With full information each pair of start cells
        meets on its better reachable landmark. 4x4, 3 steps: 0.5 and 0.707."""
        rc = torch.stack([self.start_cells // self.size, self.start_cells % self.size], -1)
        high = (rc - self.high_cell).abs().sum(-1) <= self.steps
        low = (rc - self.low_cell).abs().sum(-1) <= self.steps
        n2 = len(self.start_cells) ** 2
        pair = torch.maximum(self.high_reward * (high[:, None] & high[None, :]),
                             self.low_reward * (low[:, None] & low[None, :]))
        both = int((high & low).sum())
        a = int((high & ~low).sum()) + torch.arange(both + 1, dtype=torch.float64)
        b = int((low & ~high).sum()) + both - torch.arange(both + 1, dtype=torch.float64)
        split = self.high_reward * a[:, None] * a + self.low_reward * b[:, None] * b
        return split.max().item() / n2, pair.sum().item() / n2

    def _flat(self, rc: torch.Tensor) -> torch.Tensor:
        return rc[..., 0] * self.size + rc[..., 1]

    def _reset_where(self, mask: torch.Tensor) -> None:
        idx = self.randint(len(self.start_cells), self.num_envs, 2)
        cell = self.start_cells[idx]
        start = torch.stack([cell // self.size, cell % self.size], dim=-1)
        self.pos = torch.where(mask[:, None, None], start, self.pos)
        self.t = torch.where(mask, 0, self.t)
        self.high_met = self.high_met & ~mask
        self.low_met = self.low_met & ~mask

    def _action_mask(self) -> torch.Tensor:
        nxt = self.pos.unsqueeze(-2) + self.moves  # [E, agent, action, rc]
        return ((nxt >= 0) & (nxt < self.size)).all(-1)

    def _observe(self) -> TensorDictBase:
        E, S = self.num_envs, self.size * self.size
        cells = torch.nn.functional.one_hot(self._flat(self.pos), S).float()  # [E, 2, S]
        time = torch.nn.functional.one_hot(self.t, self.steps + 1).float()  # [E, steps+1]
        obs = cells
        if self.observe_step:
            obs = torch.cat([cells, time.unsqueeze(1).expand(E, 2, -1)], dim=-1)
        agents = TensorDict({"observation": obs, "action_mask": self._action_mask()},
                            batch_size=(E, 2))
        info = TensorDict({"high": self.high_met.float(),
                           "success": (self.high_met | self.low_met).float()}, batch_size=(E,))
        state = torch.cat([cells.reshape(E, 2 * S), time], dim=-1)
        return TensorDict({AGENTS: agents, "state": state, INFO: info}, batch_size=(E,))

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict[ACTION]
        self.pos = (self.pos + self.moves[action]).clamp(0, self.size - 1)
        self.t = self.t + 1
        self.high_met = (self.pos == self.high_cell).all(-1).all(-1)
        self.low_met = (self.pos == self.low_cell).all(-1).all(-1)
        reward = self.high_reward * self.high_met.float() + self.low_reward * self.low_met.float()
        done = (self.high_met | self.low_met | (self.t >= self.steps)).unsqueeze(-1)
        out = self._observe()
        out.update({"reward": reward.unsqueeze(-1), "done": done, "terminated": done.clone(),
                    "truncated": torch.zeros_like(done)})
        return out

    # ----------------------------------------------------------------- reference policies
    def _toward(self, pos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The action moving each agent one step toward ``target`` (rows first)."""
        dr, dc = (target - pos).unbind(-1)
        action = torch.zeros_like(dr)
        action = torch.where(dc > 0, 4, action)
        action = torch.where(dc < 0, 3, action)
        action = torch.where(dr > 0, 2, action)
        return torch.where(dr < 0, 1, action)

    def _decode_state(self, td: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        S, E = self.size * self.size, td.batch_size[0]
        cell = td["state"][:, : 2 * S].reshape(E, 2, S).argmax(-1)
        pos = torch.stack([cell // self.size, cell % self.size], dim=-1)
        return pos, td["state"][:, 2 * S :].argmax(-1)

    def full_info_policy(self, td: TensorDictBase) -> torch.Tensor:
        """Reads the state: both go high if both can still reach it, else both go low."""
        pos, t = self._decode_state(td)
        left = (self.steps - t)[:, None]
        reach_high = ((pos - self.high_cell).abs().sum(-1) <= left).all(-1)
        target = torch.where(reach_high[:, None, None], self.high_cell, self.low_cell)
        return self._toward(pos, target.expand_as(pos))

    def no_comm_policy(self, td: TensorDictBase) -> torch.Tensor:
        """Both always walk to the low landmark: the best policy that needs no messages."""
        pos, _ = self._decode_state(td)
        return self._toward(pos, self.low_cell.expand_as(pos))

    def reference_policies(self) -> dict[str, Callable[[TensorDictBase], torch.Tensor]]:
        """Scripted policies whose returns bracket a learner's: random, no_comm, full_info."""
        return {"random": random_policy, "no_comm": self.no_comm_policy,
                "full_info": self.full_info_policy}
