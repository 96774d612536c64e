"""End-to-end runs of ``seqcomm fit`` on the matrix game, and bad input (docs/method.md §7)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MATRIX_CONF, matrix_frames, read_metrics, read_summary

from seqcomm.cli import main
from seqcomm.dfl.implicit_gradient import SOLVERS
from seqcomm.dfl.world_model import POOLINGS
from seqcomm.envs.matrix import RGMCOMM_TABLE, full_obs_value, no_comm_value
from seqcomm.learner import QLearner

NO_COMM, FULL_OBS = 33.325, 39.15  # RGMComm's matrix game, docs/method.md §6.1


def test_reference_values_of_the_table():
    assert no_comm_value(RGMCOMM_TABLE) == pytest.approx(NO_COMM, abs=1e-4)
    assert full_obs_value(RGMCOMM_TABLE) == pytest.approx(FULL_OBS, abs=1e-4)


def test_console_script_end_to_end_reaches_the_no_comm_optimum(tmp_path):
    """``seqcomm fit --config conf/matrix.yaml`` (a shorter budget: it converges by update 200)
    through the installed console script; checks what the run directory holds."""
    exe = shutil.which("seqcomm") or os.path.join(os.path.dirname(sys.executable), "seqcomm")
    updates = 300
    proc = subprocess.run(
        [exe, "fit", "--config", str(MATRIX_CONF), "--wandb", "false",
         "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
         f"--data.total_frames={matrix_frames(updates)}", "--trainer.val_check_interval=100"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    run = tmp_path / "matrix" / "version_0"
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoints", "config.yaml", "hparams.yaml", "metrics.csv", "summary.json"]
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert f"total_frames: {matrix_frames(updates)}" in (run / "config.yaml").read_text()

    summary = read_summary(run)
    assert summary["updates"] == updates
    assert summary["env_steps"] == matrix_frames(updates)
    assert summary["world_size"] == 1 and summary["seed"] == 0
    assert summary["eval"]["return"] == pytest.approx(NO_COMM, abs=0.05)

    metrics = read_metrics(run)
    assert sorted(metrics["eval/return"]) == [99, 199, 299, updates]  # every 100 and at the end
    assert max(metrics["loss/td"]) == updates - 1  # logged every 10 updates
    late = [v for s, v in metrics["loss/td"].items() if s > updates - 50]
    early = [v for s, v in metrics["loss/td"].items() if s < 50]
    assert max(late) < min(early)  # it learned
    eps = metrics["train/epsilon"]
    assert eps[min(eps)] > eps[max(eps)]  # exploration anneals

    model = QLearner.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    assert model.hparams.lr == 0.001  # conf/matrix.yaml's, not the default 5e-4
    assert not model.hparams.full_obs


def test_full_observability_reaches_its_optimum(fit_matrix):
    """The upper reference: agent 1 also sees o2. (With 32-unit agents seeds 3 and 5 stayed at
    38.74: QMIX's mixing weight of agent 1 died in the state (o1, o2) = (0, 1), whose two
    actions differ by 3.3; with conf/matrix.yaml's 64, seeds 0-7 all reach 39.15 by update
    400.)"""
    run = fit_matrix("--model.init_args.full_obs=true", f"--data.total_frames={matrix_frames(600)}")
    assert read_summary(run)["eval"]["return"] == pytest.approx(FULL_OBS, abs=0.05)


DFL = ["--config", str(MATRIX_CONF.parent / "methods" / "seqcomm_dfl.yaml")]


# -- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, says",
    [
        (["--model.init_args.nope=1"], "nope"),
        (["--model.init_args.hidden_dim=abc"], "hidden_dim"),
        (["--data.num_envs=abc"], "num_envs"),
        (["--data.env.class_path=seqcomm.envs.nope.Nope"], "nope"),
        (["--data.num_envs=0"], "num_envs"),
        (["--model.init_args.gamma=2"], "gamma"),
        (["--model.init_args.agent_body=lstm"], "agent_body"),
        (["--trainer.nope=1"], "nope"),
        (["--ckpt_path", "missing.ckpt"], "missing.ckpt"),
        (["--ckpt_path", "last"], "last"),
        # a component's own arguments: a bad type, and its constructor's ValueError (its own
        # message, not the model's class_path Union around it)
        ([*DFL, "--model.init_args.world_model.init_args.hidden_dim=abc"], "hidden_dim"),
        ([*DFL, "--model.init_args.implicit.init_args.iters=-1"],
         "error: implicit.iters=-1 must be an integer >= 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, says, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(MATRIX_CONF), "--wandb", "false",
              "--trainer.default_root_dir", str(tmp_path / "runs"), *args])
    assert exit_.value.code == 2
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("seqcomm: error: ") and says in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # no run directory, no config.yaml


@pytest.mark.parametrize(
    "configs, arg, choices",
    [
        (["matrix.yaml", "methods/seqcomm_dfl.yaml"], "--model.init_args.implicit.init_args.solver",
         SOLVERS),
        (["matrix.yaml", "methods/seqcomm_dfl.yaml"],
         "--model.init_args.world_model.init_args.pooling", POOLINGS),
        (["microcombat_3m.yaml"], "--data.env.init_args.enemy_targeting", ("nearest", "sticky")),
    ],
)
def test_bad_literal_choice_lists_the_choices(configs, arg, choices, tmp_path, capfd,
                                              monkeypatch):
    """A constructor argument typed ``Literal[...]`` (the model's or the environment's):
    LightningCLI rejects a value outside it in one line that names the key and the choices."""
    monkeypatch.chdir(tmp_path)
    stacked = [x for c in configs for x in ("--config", str(MATRIX_CONF.parent / c))]
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *stacked, "--wandb", "false",
              "--trainer.default_root_dir", str(tmp_path / "runs"), f"{arg}=bogus"])
    assert exit_.value.code == 2
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seqcomm: error: "), err
    assert arg.rsplit(".", 1)[-1] in lines[0] and "bogus" in lines[0]
    assert all(repr(choice) in lines[0] for choice in choices), lines[0]
    assert "Namespace(" not in lines[0]
    assert not (tmp_path / "runs").exists()


def test_missing_config_file(tmp_path, capfd):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(tmp_path / "nope.yaml"),
              "--trainer.default_root_dir", str(tmp_path / "runs")])
    assert exit_.value.code == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seqcomm: error: ") and "nope.yaml" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_bad_input_through_the_console_script(tmp_path):
    """The real process: nothing else on stderr (warnings, logs, usage), exit status 2."""
    exe = shutil.which("seqcomm") or os.path.join(os.path.dirname(sys.executable), "seqcomm")
    proc = subprocess.run(
        [exe, "fit", "--config", str(MATRIX_CONF), "--wandb", "false", "--data.num_envs=0",
         "--trainer.default_root_dir", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["seqcomm: error: data.num_envs must be >= 1, got 0"]
    assert not Path(tmp_path / "runs").exists()
