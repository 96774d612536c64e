"""Collection cost per 1000 env steps: seqcomm's ``ChunkCollector`` against TorchRL's
``Collector`` over the transform stack it replaced (same task, policy and chunks).

    python benchmarks/collection_speed.py --tasks hospital microcombat_3m vmas_spread
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
from torchrl.collectors import Collector

from seqcomm.collector import ChunkCollector
from seqcomm.commands import task_env
from seqcomm.data import EpisodeData
from seqcomm.envs.base import env_info
from seqcomm.policy import EpsilonGreedyPolicy
from seqcomm.team_q import TeamQ


def cpu_ms_per_1k(chunks, frames: int, repeats: int) -> float:
    """Median CPU-ms per 1000 env steps over ``repeats`` chunks, after one warm-up chunk."""
    next(chunks)
    times = []
    for _ in range(repeats):
        start = time.process_time()
        next(chunks)
        times.append((time.process_time() - start) * 1e6 / frames)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["hospital", "microcombat_3m",
                                                        "vmas_spread"])
    parser.add_argument("--num-envs", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"torch {torch.__version__}, 1 thread, load avg {os.getloadavg()[0]:.1f}; "
          f"{args.num_envs} copies, median of {args.repeats} chunks\n")
    print("| task | steps per chunk | TorchRL Collector + transforms | ChunkCollector | ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for task in args.tasks:
        row = {}
        for kind in ("torchrl", "seqcomm"):
            env = task_env(f"conf/{task}.yaml", args.num_envs)
            info = env_info(env)
            policy = EpsilonGreedyPolicy(TeamQ(info))
            frames = args.num_envs * info.episode_limit
            if kind == "torchrl":
                wrapped = EpisodeData.wrap(EpisodeData.__new__(EpisodeData), env, policy)
                chunks = iter(Collector(wrapped, policy, frames_per_batch=frames,
                                        total_frames=-1, reset_at_each_iter=True,
                                        trust_policy=True))
            else:
                chunks = ChunkCollector(env, policy, info.episode_limit)
            row[kind] = cpu_ms_per_1k(chunks, frames, args.repeats)
        print(f"| {task} | {info.episode_limit} | {row['torchrl']:.1f} | {row['seqcomm']:.1f} | "
              f"{row['seqcomm'] / row['torchrl']:.2f}x |")


if __name__ == "__main__":
    main()
