"""Evaluate scripted reference policies on any task (``seqcomm env-info``, docs/method.md §6).

A policy is any callable mapping the current TensorDict of a batched environment to actions
``[E, n_agents]`` (int64). Environments expose theirs through ``reference_policies()``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase

from seqcomm.envs.base import ACTION, INFO, MASK

Policy = Callable[[TensorDictBase], torch.Tensor]


def random_policy(td: TensorDictBase, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform over the available actions of each agent."""
    mask = td[MASK].float()
    flat = mask.reshape(-1, mask.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(mask.shape[:-1])


@torch.no_grad()
def evaluate_policy(env: EnvBase, policy: Policy, n_episodes: int) -> dict[str, float]:
    """Mean episode return and episode-end task metrics over at least ``n_episodes`` episodes.

    All copies run in lock-step until every copy has finished enough episodes; only the
    first ``ceil(n_episodes / E)`` episodes of each copy count, so the batch stays dense.
    """
    E = env.batch_size[0]
    per_copy = -(-n_episodes // E)
    # an empty input placed on the env's device: TorchRL's transforms build their reset flags
    # on the input's device, which is the CPU for the one ``reset()`` makes
    td = env.reset(TensorDict(batch_size=env.batch_size, device=env.device))
    ret = torch.zeros(E, device=env.device)
    done_count = torch.zeros(E, dtype=torch.long, device=env.device)
    returns, metrics = [], {}
    while bool((done_count < per_copy).any()):
        out = policy(td)
        if isinstance(out, TensorDictBase):  # a TensorDict policy writes its action itself
            td = out
        else:
            td[ACTION] = out
        td, root = env.step_and_maybe_reset(td)
        nxt = td["next"]
        ret += nxt["reward"].reshape(E)
        done = nxt["done"].reshape(E)
        counted = done & (done_count < per_copy)
        returns.append(ret[counted])
        if INFO in nxt.keys():
            for key, value in nxt[INFO].items():
                metrics.setdefault(key, []).append(value[counted].float())
        ret = torch.where(done, torch.zeros_like(ret), ret)
        done_count += done.long()
        td = root
    out = {"return": torch.cat(returns).mean().item()}
    out.update({k: torch.cat(v).mean().item() for k, v in metrics.items()})
    return out
