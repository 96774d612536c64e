"""Environment throughput: env steps per second (copies x steps / s) of the batched tasks.

Steps ``microcombat`` (3m and 27m_vs_30m) and ``hospital`` with uniformly random available
actions through ``step_and_maybe_reset`` (the path a collector takes, auto-resets included),
after a warm-up. The random policy is timed separately and subtracted, so the figure is the
environment's cost. ``--mc-option KEY=VALUE ...`` passes MicroCombat options (collisions,
enemy_targeting, start_positions); ``--cpu-time`` adds steps per CPU second of the process
(with one torch thread the CPU time the environment used, steadier than the wall clock when
other jobs share the machine).

    python benchmarks/env_speed.py --envs 1 64 1024 --steps 200 --device cpu

prints a markdown table and the machine it ran on.
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import time
from collections.abc import Callable

import torch
from torchrl.envs import EnvBase

from seqcomm.envs.base import ACTION
from seqcomm.envs.microcombat import MicroCombat
from seqcomm.envs.reference import random_policy


def hospital(num_envs: int, device: str) -> EnvBase:
    """``Hospital`` is written concurrently elsewhere: import it only when asked for."""
    from seqcomm.envs.hospital import Hospital

    return Hospital(num_envs=num_envs, device=device)


TASKS: dict[str, Callable[[int, str], EnvBase]] = {
    "microcombat 3m": lambda n, dev: MicroCombat(num_envs=n, device=dev, map_name="3m"),
    "microcombat 27m_vs_30m": lambda n, dev: MicroCombat(num_envs=n, device=dev,
                                                         map_name="27m_vs_30m"),
    "hospital": hospital,
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def steps_per_second(env: EnvBase, steps: int, warmup: int) -> tuple[float, float]:
    """Copies x steps per second of ``step_and_maybe_reset``, policy time excluded: per
    wall-clock second and per CPU second of this process (steadier on a shared machine)."""
    gen = torch.Generator(device=env.device).manual_seed(0)
    td = env.reset()
    policy_s = policy_cpu = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            _sync(str(env.device))
            start, policy_s = time.perf_counter(), 0.0
            start_cpu, policy_cpu = time.process_time(), 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        td[ACTION] = random_policy(td, generator=gen)
        _sync(str(env.device))
        policy_s += time.perf_counter() - t0
        policy_cpu += time.process_time() - c0
        _, td = env.step_and_maybe_reset(td)
    _sync(str(env.device))
    n = env.batch_size[0] * steps
    return (n / (time.perf_counter() - start - policy_s),
            n / (time.process_time() - start_cpu - policy_cpu))


def _parse_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> (key, value), the value read as a Python literal if it is one."""
    key, _, value = text.partition("=")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 64, 1024],
                        help="numbers of parallel copies to time")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--device", default="cpu", help="torch device of the copies")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (0: torch's default); on a small, shared "
                             "CPU one thread is fastest for these tensor sizes")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS),
                        help="which tasks to time")
    parser.add_argument("--mc-option", nargs="*", default=[], metavar="KEY=VALUE",
                        help="MicroCombat constructor options for the microcombat tasks, e.g. "
                             "collisions=True enemy_targeting=sticky")
    parser.add_argument("--cpu-time", action="store_true",
                        help="cells 'per wall second / per CPU second' (a loaded, shared "
                             "machine slows the wall clock more than the CPU time)")
    args = parser.parse_args()
    mc_options = dict(_parse_option(o) for o in args.mc_option)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    rows, notes = [], []
    for task in args.tasks:
        cells = []
        for n in args.envs:
            try:
                env = (MicroCombat(num_envs=n, device=args.device, map_name=task.split()[1],
                                   **mc_options) if task.startswith("microcombat") and mc_options
                       else TASKS[task](n, args.device))
            except ImportError as err:
                notes.append(f"{task} skipped: {err}")
                break
            wall, cpu = steps_per_second(env, args.steps, args.warmup)
            cells.append(f"{wall:,.0f} / {cpu:,.0f}" if args.cpu_time else f"{wall:,.0f}")
            print(f"# {task}, {n} copies: {wall:,.0f} env steps/s, {cpu:,.0f} per CPU second",
                  flush=True)
        if cells:
            rows.append(f"| {task} | " + " | ".join(cells) + " |")

    try:
        load = f"load average {os.getloadavg()[0]:.1f}"
    except OSError:
        load = "load average unknown"
    device = args.device
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name(device)})"
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
          f"({load}), torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
          f"device {device}; {args.steps} timed steps after {args.warmup} warm-up steps, "
          "random available actions, policy time excluded"
          + ("; cells: per wall second / per CPU second" if args.cpu_time else "")
          + (f"; microcombat options {mc_options}" if mc_options else "") + ".\n")
    print("| task | " + " | ".join(f"{n} copies" for n in args.envs) + " |")
    print("| --- |" + " ---: |" * len(args.envs))
    print("\n".join(rows))
    for note in notes:
        print(f"\n{note}")


if __name__ == "__main__":
    main()
