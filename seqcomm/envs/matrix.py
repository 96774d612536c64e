"""RGMComm's two-agent one-step matrix game (docs/method.md §6.1, RGMComm Fig. 1 / App. C.4).

Agent 1 sees o1 and picks a1; agent 2 sees o2, has a single action and can only help by
talking. Observations are uniform and independent; the team reward is ``table[o1, a1, o2]``.
"""

from __future__ import annotations

import itertools

import torch
from tensordict import TensorDict, TensorDictBase

from seqcomm.envs.base import ACTION, AGENTS, MultiAgentEnv

# table[o1, a1, o2]; the o12 rows for o22..o24 are reconstructed (docs/method.md §6.1).
RGMCOMM_TABLE = torch.tensor(
    [
        [[53.2, 4.5, 58.5, 0.3], [42.9, 1.2, 64.0, 16.1]],
        [[31.8, 12.6, 34.1, 34.9], [22.9, 28.0, 10.0, 81.5]],
    ]
)


def random_table(n_obs1: int, n_actions: int, n_obs2: int, seed: int) -> torch.Tensor:
    """A seeded random reward table ``[n_obs1, n_actions, n_obs2]`` with entries in [0, 100)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n_obs1, n_actions, n_obs2, generator=gen) * 100).round(decimals=1)


def full_obs_value(table: torch.Tensor) -> float:
    """Expected return when agent 1 also sees o2 (RGMComm's pi*)."""
    return table.max(dim=1).values.mean().item()


def no_comm_value(table: torch.Tensor) -> float:
    """Expected return of the best policy of agent 1 that sees only o1."""
    return table.mean(dim=2).max(dim=1).values.mean().item()


def best_message_value(table: torch.Tensor, n_labels: int) -> tuple[float, tuple[int, ...]]:
    """Brute-force best return when agent 2 sends one of ``n_labels`` labels about o2.

    Returns the value and the labelling of o2 (a tuple, one label per o2) that reaches it.
    """
    best, best_labels = -float("inf"), ()
    for labels in itertools.product(range(n_labels), repeat=table.shape[2]):
        value = message_value(table, labels)
        if value > best + 1e-9:
            best, best_labels = value, labels
    return best, best_labels


def message_value(table: torch.Tensor, labels: tuple[int, ...]) -> float:
    """Expected return when agent 2 labels its o2 by ``labels`` (one per o2) and agent 1
    picks, per (o1, label), the action best on average over the o2 under that label."""
    lab = torch.tensor(labels)
    total = sum(table[:, :, lab == m].sum(dim=2).max(dim=1).values.sum().item()
                for m in lab.unique())
    return total / (table.shape[0] * table.shape[2])


class MatrixGame(MultiAgentEnv):
    """RGMComm's matrix game, or a seeded random game of any size.

    Args:
        num_envs: number of parallel copies.
        seed: seed of the observation draws.
        device: torch device.
        table: ``"rgmcomm"`` (the paper's table) or ``"random"``.
        n_obs1: agent 1's observation count (random tables only).
        n_obs2: agent 2's observation count (random tables only).
        n_actions: agent 1's action count (random tables only).
        table_seed: seed of the random table.
        exhaustive: copy ``k`` always draws the ``k``-th (o1, o2) pair (copies beyond
            ``n_obs1 * n_obs2`` wrap around), so an evaluation on ``n_obs1 * n_obs2`` copies
            is the exact expectation instead of a Monte-Carlo estimate.
        joint_state: append a one-hot of the joint pair (o1, o2) to the state, which lets
            QMIX's linear hypernetwork give each pair its own mixing weights.
    """

    metrics = ()
    episode_limit = 1

    def __init__(
        self,
        num_envs: int = 1,
        seed: int = 0,
        device: str = "cpu",
        table: str = "rgmcomm",
        n_obs1: int = 2,
        n_obs2: int = 4,
        n_actions: int = 2,
        table_seed: int = 0,
        exhaustive: bool = False,
        joint_state: bool = True,
    ) -> None:
        if table == "rgmcomm":
            values = RGMCOMM_TABLE.clone()
        elif table == "random":
            if min(n_obs1, n_obs2, n_actions) < 1:
                raise ValueError("matrix: n_obs1, n_obs2 and n_actions must all be >= 1")
            values = random_table(n_obs1, n_actions, n_obs2, table_seed)
        else:
            raise ValueError(f"matrix: unknown table {table!r}; use 'rgmcomm' or 'random'")
        self.n_obs1, self.n_actions, self.n_obs2 = values.shape
        self.n_agents = 2
        self.obs_dim = self.n_obs1 + self.n_obs2
        # state: both one-hots plus a one-hot of the joint pair, so QMIX's linear hypernetwork
        # can give every (o1, o2) its own mixing weights
        self.joint_state = joint_state
        self.state_dim = self.obs_dim + (self.n_obs1 * self.n_obs2 if joint_state else 0)
        super().__init__(num_envs, seed, device)
        self.table = values.to(self.device)
        self.exhaustive = exhaustive
        self.o1 = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.o2 = torch.zeros_like(self.o1)

    def _reset_where(self, mask: torch.Tensor) -> None:
        if self.exhaustive:
            k = torch.arange(self.num_envs, device=self.device) % (self.n_obs1 * self.n_obs2)
            o1, o2 = k // self.n_obs2, k % self.n_obs2
        else:
            o1 = self.randint(self.n_obs1, self.num_envs)
            o2 = self.randint(self.n_obs2, self.num_envs)
        self.o1 = torch.where(mask, o1, self.o1)
        self.o2 = torch.where(mask, o2, self.o2)

    def _observe(self) -> TensorDictBase:
        E, dev = self.num_envs, self.device
        one1 = torch.nn.functional.one_hot(self.o1, self.n_obs1).float()
        one2 = torch.nn.functional.one_hot(self.o2, self.n_obs2).float()
        obs = torch.zeros(E, 2, self.obs_dim, device=dev)
        obs[:, 0, : self.n_obs1] = one1
        obs[:, 1, self.n_obs1 :] = one2
        mask = torch.zeros(E, 2, self.n_actions, dtype=torch.bool, device=dev)
        mask[:, 0] = True
        mask[:, 1, 0] = True  # agent 2 has a single (no-op) action
        agents = TensorDict({"observation": obs, "action_mask": mask}, batch_size=(E, 2))
        parts = [one1, one2]
        if self.joint_state:
            pair = self.o1 * self.n_obs2 + self.o2
            parts.append(torch.nn.functional.one_hot(pair, self.n_obs1 * self.n_obs2).float())
        state = torch.cat(parts, -1)
        return TensorDict({AGENTS: agents, "state": state}, batch_size=(E,))

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        a1 = tensordict[ACTION][:, 0]
        reward = self.table[self.o1, a1, self.o2].unsqueeze(-1)
        out = self._observe()
        done = torch.ones(self.num_envs, 1, dtype=torch.bool, device=self.device)
        out.update({"reward": reward, "done": done, "terminated": done.clone(),
                    "truncated": torch.zeros_like(done)})
        return out
