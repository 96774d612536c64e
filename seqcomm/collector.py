"""Collection of episode chunks (docs/method.md §7): every copy of a batched task plays
``steps`` steps with the acting policy, resetting the copies whose episodes end.

``ChunkCollector`` does by hand what TorchRL's ``Collector`` (``reset_at_each_iter``) over the
task wrapped in ``InitTracker``, ``RewardSum`` and a ``TensorDictPrimer`` of the policy's
recurrent state does, for this one case (one batched environment, one process): that stack
cost 28% of collection on VMAS simple_spread and 42% on hospital (issue 9,
benchmarks/README.md). The chunks are the same TensorDicts, value for value, from the same
random draws (``tests/test_collector.py`` checks it against TorchRL's), so runs are unchanged.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase

from seqcomm.policy import EpsilonGreedyPolicy


class ChunkCollector:
    """Iterator of ``[num_envs, steps]`` chunks, each starting from a reset of every copy.

    Root keys at each step: the observation keys, ``is_init``, ``episode_reward``, the
    policy's recurrent state, the action and the done flags; under ``next``: the step's
    result, its ``reward`` and the policy's next recurrent state.

    Args:
        env: the task (a batched ``EnvBase``, not wrapped).
        policy: the acting policy; it writes the action and ``("next", <state>)``.
        steps: steps per chunk (the task's episode limit).
    """

    def __init__(self, env: EnvBase, policy: EpsilonGreedyPolicy, steps: int) -> None:
        self.env, self.policy, self.steps = env, policy, steps
        self.num_envs = env.batch_size[0]
        # TorchRL's Collector resets and runs the policy once when it is built; the same
        # draws here keep every run's random streams what they were
        policy(self.start())

    def start(self, done: torch.Tensor | None = None) -> TensorDictBase:
        """A reset of every copy, or of those where ``done [E, 1]``, with the episode-start
        keys (``is_init``, zero return, zero recurrent state)."""
        E, dev = self.num_envs, self.env.device
        if done is None:
            td, done = self.env.reset(), torch.ones(E, 1, dtype=torch.bool, device=dev)
        else:
            td = self.env.reset(TensorDict({"_reset": done}, batch_size=[E]))
        td.set("is_init", done.clone())
        td.set("episode_reward", torch.zeros(E, 1, device=dev))
        td.update(self.policy.primer_spec(E, dev).zero())
        return td

    def __iter__(self) -> ChunkCollector:
        return self

    def __next__(self) -> TensorDictBase:
        td, chunk = self.start(), []
        for _ in range(self.steps):
            self.policy(td)  # the action, and ("next", <recurrent state>)
            nxt = self.env._step(td)
            nxt.update(td.get("next"))
            nxt.set("episode_reward", td["episode_reward"] + nxt["reward"])
            nxt.set("is_init", torch.zeros_like(td["is_init"]))
            td.set("next", nxt)
            chunk.append(td)
            td = nxt.exclude("reward").clone(recurse=False)
            done = nxt["done"]
            if done.any():
                td = self.merge(done, self.start(done), td)
        return torch.stack(chunk, dim=1)

    @staticmethod
    def merge(done: torch.Tensor, reset: TensorDictBase, going: TensorDictBase
              ) -> TensorDictBase:
        """``reset`` where ``done [E, 1]``, ``going`` elsewhere."""
        if done.all():
            return reset
        return going.apply(
            lambda g, r: torch.where(done.view(-1, *[1] * (g.dim() - 1)), r, g), reset)
