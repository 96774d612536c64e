"""Scripted references of microcombat under its SMAC-likeness options (issue 12, "Measured").

``seqcomm env-info`` builds a task only from its config file, without overrides, so this
script builds ``MicroCombat`` directly: for each task file it reads ``data.env.init_args``
(map, sight range, ally features, start positions), applies each option set on top and
evaluates the environment's own scripted policies (``focus_fire``, ``random`` from
``MicroCombat.reference_policies``) exactly as ``seqcomm env-info`` does: the same copy
count, seed, ``set_seed`` before each policy and ``evaluate_policy`` (batched over copies).
The "conf" column therefore reproduces ``seqcomm env-info <task>``.

    python benchmarks/microcombat_references.py --episodes 256 --envs 64 --seed 0

prints one markdown table per policy: rows are task files, columns option sets, cells the
win rate (mean return).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import yaml

from seqcomm.envs.microcombat import MicroCombat
from seqcomm.envs.reference import evaluate_policy

CONFIGS = ("microcombat_3m", "microcombat_8m", "microcombat_2s3z", "microcombat_5m_vs_6m",
           "microcombat_3m_sight", "microcombat_2s3z_sight")
# option sets applied on top of the task file's init_args (the file pins start_positions)
OPTION_SETS: dict[str, dict[str, object]] = {
    "conf": {},
    "+ sticky": {"enemy_targeting": "sticky"},
    "+ collisions": {"collisions": True},
    "+ sticky + collisions": {"enemy_targeting": "sticky", "collisions": True},
    "smac placement": {"start_positions": "smac"},
    "smac placement + sticky + collisions": {"start_positions": "smac",
                                             "enemy_targeting": "sticky", "collisions": True},
    # not in the default table: which option moves the SMAC-placement result
    "smac placement + sticky": {"start_positions": "smac", "enemy_targeting": "sticky"},
    "smac placement + collisions": {"start_positions": "smac", "collisions": True},
}
DEFAULT_SETS = list(OPTION_SETS)[:6]


def init_args(config: str) -> dict[str, object]:
    """The ``data.env.init_args`` of ``conf/<config>.yaml`` (or a path)."""
    path = config if config.endswith((".yaml", ".yml")) else f"conf/{config}.yaml"
    with open(path) as f:
        env = yaml.safe_load(f)["data"]["env"]
    if not env["class_path"].endswith("MicroCombat"):
        raise ValueError(f"{path}: not a microcombat task")
    return dict(env.get("init_args") or {})


def references(config: str, options: dict[str, object], envs: int, seed: int,
               episodes: int) -> dict[str, dict[str, float]]:
    """``{policy: {return, won, ...}}`` as ``seqcomm env-info`` computes it."""
    env = MicroCombat(envs, seed, "cpu", **{**init_args(config), **options})
    out = {}
    for label, policy in env.reference_policies().items():
        env.set_seed(seed)
        out[label] = evaluate_policy(env, policy, episodes)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS),
                        help="task files (conf/<name>.yaml or paths)")
    parser.add_argument("--sets", nargs="+", default=DEFAULT_SETS, choices=list(OPTION_SETS),
                        help="option sets (columns)")
    parser.add_argument("--episodes", type=int, default=256)
    parser.add_argument("--envs", type=int, default=64, help="copies (env-info's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    start = time.perf_counter()
    for config in args.configs:
        for name in args.sets:
            res = references(config, OPTION_SETS[name], args.envs, args.seed, args.episodes)
            results[config, name] = res
            print(f"# {config} [{name}]: " + ", ".join(
                f"{p} won {r['won']:.3f} return {r['return']:.2f} dead allies "
                f"{r['dead_allies']:.2f} enemies {r['dead_enemies']:.2f}"
                for p, r in res.items()), flush=True)

    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
          f"(load average {os.getloadavg()[0]:.1f}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads; {args.episodes} episodes, {args.envs} "
          f"copies, seed {args.seed}; {time.perf_counter() - start:.0f} s.")
    print("Option sets: " + "; ".join(f"{n}: {OPTION_SETS[n] or 'the file as is'}"
                                      for n in args.sets) + ".")
    for policy in ("focus_fire", "random"):
        print(f"\n{policy}: win rate (mean return)\n")
        print("| task file | " + " | ".join(args.sets) + " |")
        print("| --- |" + " ---: |" * len(args.sets))
        for config in args.configs:
            cells = [results[config, n][policy] for n in args.sets]
            print(f"| `{config}` | " + " | ".join(
                f"{100 * r['won']:.1f}% ({r['return']:.2f})" for r in cells) + " |")


if __name__ == "__main__":
    main()
