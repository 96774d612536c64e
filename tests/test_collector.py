"""ChunkCollector against TorchRL's Collector over the transform stack it replaces."""

import pytest
import torch
from torchrl.collectors import Collector

from seqcomm.collector import ChunkCollector
from seqcomm.data import EpisodeData
from seqcomm.envs.base import env_info
from seqcomm.envs.hospital import Hospital
from seqcomm.envs.matrix import MatrixGame
from seqcomm.envs.microcombat import MicroCombat
from seqcomm.envs.vmas import VmasTask
from seqcomm.policy import EpsilonGreedyPolicy
from seqcomm.team_q import TeamQ

TASKS = {
    "hospital": lambda: Hospital(num_envs=4, seed=1),
    # episodes end at different steps: copies reset inside the chunk
    "microcombat": lambda: MicroCombat(num_envs=4, seed=1, map_name="3m", episode_limit=30),
    "vmas": lambda: VmasTask(num_envs=4, seed=1, scenario="simple_spread", max_steps=10),
    "matrix": lambda: MatrixGame(num_envs=4, seed=1),  # one-step episodes
}


def _chunks(task: str, last_action: bool, torchrl: bool):
    env = TASKS[task]()
    info = env_info(env)
    torch.manual_seed(0)
    policy = EpsilonGreedyPolicy(TeamQ(info, last_action=last_action),
                                 eps_anneal_frames=10**9)  # explore: draws every step
    policy.generator.manual_seed(3)
    if torchrl:
        wrapped = EpisodeData.wrap(EpisodeData.__new__(EpisodeData), env, policy)
        chunks = iter(Collector(wrapped, policy, frames_per_batch=4 * info.episode_limit,
                                total_frames=-1, reset_at_each_iter=True, trust_policy=True))
    else:
        chunks = ChunkCollector(env, policy, info.episode_limit)
    out = [next(chunks).exclude("collector") for _ in range(3)]
    rngs = [policy.generator.get_state(), torch.get_rng_state()]
    if hasattr(env, "rng"):
        rngs.append(env.rng.get_state())
    return out, rngs


@pytest.mark.parametrize("last_action", [False, True])
@pytest.mark.parametrize("task", sorted(TASKS))
def test_chunks_equal_torchrl_collector(task, last_action):
    ours, our_rngs = _chunks(task, last_action, torchrl=False)
    theirs, their_rngs = _chunks(task, last_action, torchrl=True)
    for a, b in zip(ours, theirs, strict=True):
        assert a.batch_size == b.batch_size
        assert set(a.keys(True, True)) == set(b.keys(True, True))
        for key in a.keys(True, True):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    for x, y in zip(our_rngs, their_rngs, strict=True):  # the same random draws
        assert torch.equal(x, y)
    if task == "microcombat":  # the partial-reset path ran
        assert ours[0]["is_init"][:, 1:].any()
