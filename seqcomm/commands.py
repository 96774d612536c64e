"""``seqcomm env-info`` and ``seqcomm sweep`` (docs/method.md §4 and §6).

``env-info`` prints a task's sizes and the returns of its scripted reference policies.
``sweep`` runs a W&B sweep file's grid locally, one run after another, without a W&B server:
the file is read and each run's arguments are built with W&B's own sweep helpers.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import subprocess
import sys
from typing import Any

from seqcomm.errors import ConfigError


def _load_yaml(path: str) -> dict[str, Any]:
    import yaml

    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such file; pass a YAML file (e.g. conf/hospital.yaml)")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def task_env(path: str, num_envs: int, seed: int = 0):
    """The task of a config file (its ``data.env``) with ``num_envs`` copies on the CPU."""
    env_cfg = _load_yaml(path).get("data", {}).get("env")
    if not isinstance(env_cfg, dict) or "class_path" not in env_cfg:
        raise ConfigError(f"{path}: no data.env.class_path to build the task from")
    import importlib

    module, _, name = env_cfg["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return cls(num_envs, seed, "cpu", **(env_cfg.get("init_args") or {}))
    except (ImportError, AttributeError, TypeError, ValueError) as err:
        raise ConfigError(f"{path}: cannot build {env_cfg['class_path']}: "
                          f"{' '.join(str(err).split())}") from err


def env_info_main(argv: list[str]) -> None:
    """``seqcomm env-info TASK`` where TASK is ``conf/<TASK>.yaml`` or a config path."""
    parser = argparse.ArgumentParser(prog="seqcomm env-info",
                                     description="Sizes and scripted reference returns.")
    parser.add_argument("task", help="a task name (conf/<task>.yaml) or a config file")
    parser.add_argument("--episodes", type=int, default=256)
    parser.add_argument("--envs", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.envs < 1:
        raise ConfigError("--episodes and --envs must be >= 1")
    path = args.task if args.task.endswith((".yaml", ".yml")) else f"conf/{args.task}.yaml"
    import torch

    from seqcomm.envs.base import env_info
    from seqcomm.envs.reference import evaluate_policy

    torch.set_num_threads(1)
    env = task_env(path, args.envs, args.seed)
    print(f"{path}: {env_info(env)}")
    policies = env.reference_policies() if hasattr(env, "reference_policies") else {}
    print(f"| policy | episodes | {' | '.join(['return'])} | metrics |")
    print("| --- | ---: | ---: | --- |")
    for label, policy in policies.items():
        env.set_seed(args.seed)
        result = evaluate_policy(env, policy, args.episodes)
        ret = result.pop("return")
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in result.items())
        print(f"| {label} | {args.episodes} | {ret:.2f} | {metrics} |")


def grid(parameters: dict[str, Any]) -> list[dict[str, Any]]:
    """All combinations of a sweep's ``parameters`` (``values`` lists, single ``value``)."""
    keys, choices = [], []
    for key, spec in parameters.items():
        if not isinstance(spec, dict) or not ("values" in spec or "value" in spec):
            raise ConfigError(f"sweep parameter {key!r}: a grid needs 'values' or 'value'")
        if "values" in spec and (not isinstance(spec["values"], list) or not spec["values"]):
            raise ConfigError(f"sweep parameter {key!r}: 'values' must be a non-empty list, "
                              f"got {spec['values']!r}")
        keys.append(key)
        choices.append(spec["values"] if "values" in spec else [spec["value"]])
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*choices)]


def sweep_commands(path: str) -> list[list[str]]:
    """The command of every grid point of a W&B sweep file, as W&B's agent would build it."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    config = _load_yaml(path)
    parameters = config.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        hint = (" (it looks like a training config: run it with seqcomm fit --config)"
                if {"trainer", "model", "data"} & set(config) else "")
        raise ConfigError(f"{path}: not a W&B sweep file, no 'parameters' mapping{hint}; pass "
                          "a sweep file such as sweeps/ordering.yaml")
    if config.get("method", "grid") != "grid":
        raise ConfigError(f"{path}: local sweeps run grids only (method: grid)")
    command = config.get("command") or ["${env}", "${interpreter}", "${program}", "${args}"]
    try:
        points = grid(parameters)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    runs = []
    for point in points:
        formats = create_sweep_command_args({"args": {k: {"value": v} for k, v in
                                                      point.items()}})
        cmd: list[str] = []
        for chunk in create_sweep_command(list(command)):
            if chunk == "${env}":
                continue
            if chunk == "${interpreter}":
                cmd.append(sys.executable)
            elif chunk == "${program}":
                cmd.append(config.get("program", "seqcomm"))
            elif chunk.startswith("${") and chunk[2:-1] in formats:
                value = formats[chunk[2:-1]]
                cmd.extend(value if isinstance(value, list) else [str(value)])
            else:
                cmd.append(str(chunk))
        runs.append(cmd)
    return runs


def sweep_main(argv: list[str]) -> None:
    """``seqcomm sweep sweeps/<grid>.yaml [--dry_run] [-- extra args]``."""
    parser = argparse.ArgumentParser(prog="seqcomm sweep",
                                     description="Run a W&B sweep grid locally, in sequence.")
    parser.add_argument("sweep_file")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    args, extra = parser.parse_known_args(argv)  # the rest is appended to every run
    extra = [a for a in extra if a != "--"]
    commands = [cmd + extra for cmd in sweep_commands(args.sweep_file)]
    failed = 0
    for i, cmd in enumerate(commands, 1):
        print(f"[{i}/{len(commands)}] {shlex.join(cmd)}", flush=True)
        if not args.dry_run:
            failed += subprocess.run(cmd).returncode != 0
    if failed:
        raise SystemExit(f"seqcomm sweep: {failed} of {len(commands)} runs failed")
