"""The W&B sweep files (docs/method.md §4) and ``seqcomm sweep --dry_run``: 5 seeds x every
ablation file of a switch, each generated command a valid ``seqcomm fit`` invocation."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from test_ablations import assert_contains, stacked_config

from seqcomm.cli import main

SWEEPS = sorted(p.stem for p in ROOT.glob("sweeps/*.yaml"))
SEEDS = [0, 1, 2, 3, 4]


def load(sweep: str) -> dict:
    return yaml.safe_load((ROOT / "sweeps" / f"{sweep}.yaml").read_text())


def ablation_files(sweep: str) -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob(f"ablations/{sweep}/*.yaml"))


def dry_run(sweep: str, capsys, *extra: str) -> list[list[str]]:
    """The commands ``seqcomm sweep sweeps/<sweep>.yaml --dry_run`` prints, in order."""
    main(["sweep", f"sweeps/{sweep}.yaml", "--dry_run", *extra])
    lines = capsys.readouterr().out.strip().splitlines()
    for i, line in enumerate(lines, 1):
        assert line.startswith(f"[{i}/{len(lines)}] "), line
    return [shlex.split(line.split("] ", 1)[1]) for line in lines]


def option(cmd: list[str], name: str) -> list[str]:
    """Values of ``--name=value`` / ``--name value`` in a command, in order."""
    out = []
    for i, arg in enumerate(cmd):
        if arg.startswith(f"--{name}="):
            out.append(arg.split("=", 1)[1])
        elif arg == f"--{name}":
            out.append(cmd[i + 1])
    return out


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)  # sweep files name configs relative to the repository


def test_every_switch_has_a_sweep():
    switches = sorted(p.name for p in (ROOT / "ablations").iterdir() if p.is_dir())
    assert SWEEPS == switches


@pytest.mark.parametrize("sweep", SWEEPS)
def test_sweep_file_is_a_wandb_grid_over_the_ablation_files(sweep):
    config = load(sweep)
    assert config["method"] == "grid" and config["program"] == "seqcomm"
    assert config["metric"] == {"name": "eval/return", "goal": "maximize"}
    command = config["command"]
    assert command[:3] == ["${env}", "${program}", "fit"] and command[-1] == "${args}"
    params = config["parameters"]
    assert sorted(params) == ["config", "seed_everything"]
    assert params["seed_everything"]["values"] == SEEDS
    assert sorted(params["config"]["values"]) == ablation_files(sweep)


@pytest.mark.parametrize("sweep", SWEEPS)
def test_dry_run_builds_five_seeds_times_the_grid(sweep, capsys):
    commands = dry_run(sweep, capsys)
    files = ablation_files(sweep)
    assert len(commands) == len(SEEDS) * len(files)
    fixed = load(sweep)["command"][2:-1]  # between ${program} and ${args}
    points = set()
    for cmd in commands:
        assert cmd[:1] == ["seqcomm"] and cmd[1:1 + len(fixed)] == fixed
        (seed,) = option(cmd, "seed_everything")
        configs = option(cmd, "config")
        task = configs[0]  # hospital, or 3m sight for the refinement's variants
        assert task in ("conf/hospital.yaml", "conf/microcombat_3m_sight.yaml"), task
        assert configs[1] == "conf/methods/seqcomm_dfl.yaml"
        assert len(configs) == 3  # the ablation stacks last
        points.add((int(seed), configs[2]))
    assert points == {(s, f) for s in SEEDS for f in files}


def test_dry_run_appends_extra_arguments_to_every_command(capsys):
    commands = dry_run("ordering", capsys, "--", "--trainer.max_steps=10", "--wandb=false")
    assert commands and all(cmd[-2:] == ["--trainer.max_steps=10", "--wandb=false"]
                            for cmd in commands)


def test_non_grid_sweeps_are_refused(tmp_path, capsys):
    bad = tmp_path / "bayes.yaml"
    bad.write_text(yaml.safe_dump({"method": "bayes", "parameters": {}}))
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", str(bad), "--dry_run"])
    assert exit_.value.code == 2
    assert "grid" in capsys.readouterr().err


@pytest.mark.parametrize("sweep", SWEEPS)
def test_generated_commands_are_valid_fit_arguments(sweep, capsys):
    """One seed per grid value: ``--print_config`` of the generated command parses and
    shows the ablation's values and the seed."""
    commands = [c for c in dry_run(sweep, capsys) if option(c, "seed_everything") == ["3"]]
    assert len(commands) == len(ablation_files(sweep))
    for cmd in commands:
        with pytest.raises(SystemExit) as exit_:
            main([*cmd[1:], "--print_config"])
        assert exit_.value.code in (0, None), cmd
        printed = yaml.safe_load(capsys.readouterr().out)
        expected = stacked_config([Path(f) for f in option(cmd, "config")],
                                  {"run_name": f"sweep_{sweep}", "seed_everything": 3})
        assert_contains(printed, expected)
