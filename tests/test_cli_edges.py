"""Edges that fail cleanly (issue 11): bad checkpoints, a missing GPU, zero-size messages and
non-sweep files end in one line and exit 2 with nothing written; a non-finite loss stops the
run naming it; SIGTERM saves a checkpoint that ``--ckpt_path last`` continues from; the
known-harmless library notices stay off the console."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import (
    MATRIX_CONF,
    ROOT,
    latest_version,
    matrix_frames,
    read_metrics,
    read_summary,
)

from seqcomm.cli import main
from seqcomm.learner import QLearner

CONF = MATRIX_CONF.parent


def one_line_exit_2(argv: list[str], capfd) -> str:
    """Run ``seqcomm argv``; assert exit 2 and one ``seqcomm: error:`` line; return it."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seqcomm: error: "), err
    assert "Traceback" not in err
    return lines[0]


def fit_args(tmp_path: Path, *args: str, configs: tuple[str, ...] = ()) -> list[str]:
    stacked = [x for c in configs for x in ("--config", str(CONF / c))]
    return ["fit", "--config", str(MATRIX_CONF), *stacked, "--wandb", "false",
            "--trainer.default_root_dir", str(tmp_path / "runs"), *args]


# -- 1. a checkpoint that is not one ----------------------------------------------------------
def _text(path: Path) -> None:
    path.write_text("not a checkpoint\n")


def _truncated(path: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "global_step": 3}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _not_lightning(path: Path) -> None:
    torch.save([1, 2, 3], path)


@pytest.mark.parametrize("write, says", [(_text, "not a readable checkpoint"),
                                         (_truncated, "not a readable checkpoint"),
                                         (_not_lightning, "not a Lightning checkpoint")])
def test_bad_checkpoint_file(write, says, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.ckpt"
    write(bad)
    line = one_line_exit_2(fit_args(tmp_path, "--ckpt_path", str(bad)), capfd)
    assert says in line and "bad.ckpt" in line
    assert not (tmp_path / "runs").exists()


def test_corrupt_last_checkpoint(tmp_path, capfd, monkeypatch):
    """``--ckpt_path last`` resolving to a corrupt last.ckpt: the same one line."""
    monkeypatch.chdir(tmp_path)
    ckpt_dir = tmp_path / "runs" / "matrix" / "version_0" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    _truncated(ckpt_dir / "last.ckpt")
    line = one_line_exit_2(fit_args(tmp_path, "--ckpt_path", "last"), capfd)
    assert "last.ckpt" in line and "not a readable checkpoint" in line
    assert sorted(p.name for p in (tmp_path / "runs" / "matrix").iterdir()) == ["version_0"]


# -- 2. an accelerator this machine lacks ------------------------------------------------------
@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_gpu_accelerator_without_gpu(accelerator, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = one_line_exit_2(fit_args(tmp_path, f"--trainer.accelerator={accelerator}"), capfd)
    assert "no CUDA GPU" in line and "--trainer.accelerator=cpu" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, says", [
    (["--data.device=cuda"], "no CUDA GPU"),
    (["--data.device=tpu9"], "not a torch device"),
])
def test_data_device_this_machine_lacks(args, says, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = one_line_exit_2(fit_args(tmp_path, *args), capfd)
    assert says in line and "auto" in line
    assert not (tmp_path / "runs").exists()


def test_data_device_apart_from_the_model(tmp_path, capfd, monkeypatch):
    """Environments on the CPU and the model on a GPU: the policy could not act."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    line = one_line_exit_2(fit_args(tmp_path, "--data.device=cpu",
                                    "--trainer.accelerator=gpu"), capfd)
    assert "must run where the model does" in line and "--data.device=auto" in line
    assert not (tmp_path / "runs").exists()


# -- 3. zero-size messages ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "configs, arg, says",
    [
        (("methods/seqcomm_dfl.yaml",), "--model.init_args.comm.init_args.msg_dim=0", "msg_dim"),
        (("methods/seqcomm.yaml",), "--model.init_args.comm.init_args.msg_dim=0", "msg_dim"),
        (("methods/tarmac.yaml",), "--model.init_args.comm.init_args.value_dim=0", "value_dim"),
        (("methods/commnet.yaml",), "--model.init_args.comm.init_args.ctx_dim=0", "ctx_dim"),
        (("methods/seqcomm_dfl_1bit.yaml",), "--model.init_args.comm.init_args.n_labels=1",
         "n_labels"),
    ],
)
def test_zero_size_message(configs, arg, says, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_line_exit_2(fit_args(tmp_path, arg, configs=configs), capfd)
    assert says in line and ">= " in line
    assert not (tmp_path / "runs").exists()


# -- 4. seqcomm sweep on a file that is not a sweep --------------------------------------------
def test_sweep_of_a_training_config(capfd):
    line = one_line_exit_2(["sweep", str(MATRIX_CONF), "--dry_run"], capfd)
    assert "not a W&B sweep file" in line and "seqcomm fit --config" in line


@pytest.mark.parametrize("text", ["just some words\n", "parameters: 3\n", "[1, 2]\n",
                                  "parameters:\n  seed_everything:\n    values: 012\n",
                                  "parameters:\n  seed_everything:\n    values: []\n"])
def test_sweep_of_other_files(text, tmp_path, capfd):
    path = tmp_path / "notes.yaml"
    path.write_text(text)
    line = one_line_exit_2(["sweep", str(path), "--dry_run"], capfd)
    assert "notes.yaml" in line


# -- 5. a non-finite loss stops the run --------------------------------------------------------
def test_nan_loss_stops_the_run_naming_it(fit_matrix, tmp_path, capfd, monkeypatch):
    """The TD loss turns NaN at update 205: the run stops at that update with the loss's name
    and the last good checkpoint (update 200's, left as it was), and writes no summary."""
    td_loss = QLearner.td_loss

    def poisoned(self, batch):
        loss, cache = td_loss(self, batch)
        return (loss * float("nan") if self.global_step >= 205 else loss), cache

    monkeypatch.setattr(QLearner, "td_loss", poisoned)
    with pytest.raises(SystemExit) as exit_:
        fit_matrix(f"--data.total_frames={matrix_frames(400)}")
    assert exit_.value.code == 1
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("seqcomm: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    run = latest_version(tmp_path, "run")
    last = run / "checkpoints" / "last.ckpt"
    assert "loss/td" in lines[0] and "update 206" in lines[0] and str(last) in lines[0]
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 200
    assert not (run / "summary.json").exists()


def test_nan_message_loss_of_seqcomm_dfl_is_named(fit_matrix, capfd, monkeypatch):
    """SeqCommDFL's own loss terms are checked too: a NaN value-aware loss stops the run."""
    from seqcomm.seqcomm_dfl import SeqCommDFL

    message_losses = SeqCommDFL.message_losses

    def poisoned(self, *args, **kwargs):
        msg = message_losses(self, *args, **kwargs)
        if self.global_step >= 2:
            msg["va"] = msg["va"] * float("nan")
        return msg

    monkeypatch.setattr(SeqCommDFL, "message_losses", poisoned)
    with pytest.raises(SystemExit) as exit_:
        fit_matrix("--config", str(CONF / "methods" / "seqcomm_dfl.yaml"),
                   f"--data.total_frames={matrix_frames(6)}")
    assert exit_.value.code == 1
    lines = [line for line in capfd.readouterr().err.splitlines()
             if line.startswith("seqcomm: error: ")]
    assert len(lines) == 1 and "loss/va" in lines[0] and "update 3" in lines[0], lines
    assert "none saved yet" in lines[0]


# -- 6. SIGTERM saves a checkpoint that --ckpt_path last continues from -------------------------
def start_fit(tmp_path: Path, run_name: str, *args: str) -> subprocess.Popen:
    """``seqcomm fit`` on the matrix game in a subprocess (this checkout's code); returns once
    the run has made some updates (its metrics.csv exists)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "seqcomm.cli", "fit", "--config", str(MATRIX_CONF),
         "--wandb", "false", "--trainer.enable_progress_bar", "false",
         "--trainer.default_root_dir", str(tmp_path), "--run_name", run_name, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env,
        # a shell's background job ignores SIGINT, and its children inherit that: give the
        # run the default disposition, so Python turns Ctrl-C into KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # the CSV logger first writes metrics.csv after about 100 updates: the run is under way
    # whatever the machine's load (a fixed sleep was flaky on a loaded machine)
    metrics = tmp_path / run_name / "version_0" / "metrics.csv"
    deadline = time.monotonic() + 300
    while not metrics.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    return proc


def test_ctrl_c_saves_a_checkpoint(tmp_path):
    proc = start_fit(tmp_path, "C", f"--data.total_frames={matrix_frames(1000)}")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-3000:]
    last = tmp_path / "C" / "version_0" / "checkpoints" / "last.ckpt"
    step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 0 < step < 1000
    assert f"Ctrl-C at update {step}: saved {last}" in err


def test_sigterm_saves_and_resume_matches_uninterrupted(fit_matrix, tmp_path):
    """A subprocess gets SIGTERM mid-run: it saves last.ckpt at that update and exits 143; the
    resumed run then logs what an uninterrupted run logs. Its console shows none of the
    filtered library notices."""
    updates = 400  # metrics.csv, the signal's cue, appears after about 100
    args = [f"--data.total_frames={matrix_frames(updates)}", "--trainer.val_check_interval=100"]
    proc = start_fit(tmp_path, "B", *args)
    run = tmp_path / "B" / "version_0"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err
    for notice in ("dataloader_iter", "LeafSpec", "Tip:", "manual optimization",
                   "weights_only"):
        assert notice not in err + out, notice
    last = run / "checkpoints" / "last.ckpt"
    step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 0 < step < updates
    assert f"SIGTERM at update {step}: saved {last}" in err
    assert not (run / "summary.json").exists()

    resumed = fit_matrix(*args, "--ckpt_path", "last", run_name="B")
    full = fit_matrix(*args, run_name="A")
    assert resumed == tmp_path / "B" / "version_1"
    keys = ("loss/td", "train/grad_norm", "train/epsilon", "perf/env_steps", "eval/return")
    after, whole = read_metrics(resumed), read_metrics(full)
    # the checkpoint holds `step` finished updates (0 .. step - 1); the resumed run logs from
    # update index `step` on
    assert min(after["loss/td"]) >= step and max(after["loss/td"]) == updates - 1
    for key in keys:  # compared after `step` (an evaluation logged at `step` may be either's)
        later = {s: v for s, v in after[key].items() if s > step}
        assert later == {s: v for s, v in whole[key].items() if s > step}, key


# -- 7. known-harmless library notices, filtered by message -----------------------------------
def test_notice_filters_are_specific():
    from seqcomm.cli import quiet_library_notices

    with warnings.catch_warnings(record=True) as shown:  # restores the filters afterwards
        warnings.simplefilter("always")
        quiet_library_notices()
        for message in ("You are using the `dataloader_iter` step flavor. If you consume",
                        "`isinstance(treespec, LeafSpec)` is deprecated, use",
                        "some other warning"):
            warnings.warn(message, stacklevel=1)
    assert [str(w.message) for w in shown] == ["some other warning"]


# -- 7. a checkpoint of another model than the config's ------------------------------------------
def test_checkpoint_of_another_model(fit_matrix, tmp_path, capfd, monkeypatch):
    """A plain QMIX checkpoint under a TarMAC or SeqCommDFL config: one line naming the
    mismatch and the checkpoint's run config, exit 2, nothing written (LightningCLI would
    merge the checkpoint's hyperparameters, dropping the messenger, and train silently)."""
    monkeypatch.chdir(tmp_path)
    run = fit_matrix(f"--data.total_frames={matrix_frames(3)}", "--trainer.val_check_interval=3")
    ckpt = str(run / "checkpoints" / "last.ckpt")
    capfd.readouterr()
    line = one_line_exit_2(fit_args(tmp_path, "--ckpt_path", ckpt,
                                    configs=("methods/tarmac.yaml",)), capfd)
    assert "no messenger" in line and "comm is TarMAC" in line, line
    assert str(run / "config.yaml") in line and "drop --ckpt_path" in line
    line = one_line_exit_2(fit_args(tmp_path, "--ckpt_path", ckpt,
                                    configs=("methods/seqcomm_dfl.yaml",)), capfd)
    assert "holds a QLearner model but the config builds SeqCommDFL" in line, line
    assert not (tmp_path / "runs").exists()


def test_checkpoint_of_another_messenger(fit_matrix, tmp_path, capfd, monkeypatch):
    """A TarMAC checkpoint passed by path: under CommNet, one line naming the weights that
    differ; under TarMAC, it resumes (the merged hyperparameters keep the config's messenger)."""
    monkeypatch.chdir(tmp_path)
    tarmac = ("--config", str(CONF / "methods" / "tarmac.yaml"))
    run = fit_matrix(*tarmac, f"--data.total_frames={matrix_frames(3)}",
                     "--trainer.val_check_interval=3")
    ckpt = str(run / "checkpoints" / "last.ckpt")
    capfd.readouterr()
    line = one_line_exit_2(fit_args(tmp_path, "--ckpt_path", ckpt,
                                    configs=("methods/commnet.yaml",)), capfd)
    assert "does not fit the configured QLearner (CommNet messenger)" in line, line
    assert "weights differ" in line and str(run / "config.yaml") in line
    assert not (tmp_path / "runs").exists()
    # (the checkpoint ends a finished run: resumed with the same budget, it has nothing left)
    resumed = fit_matrix(*tarmac, f"--data.total_frames={matrix_frames(3)}", "--ckpt_path", ckpt)
    assert resumed != run and read_summary(resumed)["updates"] == 3
    assert "TarMAC" in (resumed / "config.yaml").read_text()


def test_checkpoint_with_obsolete_hyperparameters(fit_matrix, tmp_path, capfd, monkeypatch):
    """A SeqCommDFL checkpoint from before its world model and critic became class_path
    components holds the flat ``model_hidden`` / ``critic_hidden``: one line naming them and
    saying to start a new run, exit 2, nothing written (LightningCLI would pass them to the
    model and fail on the first)."""
    monkeypatch.chdir(tmp_path)
    dfl = ("--config", str(CONF / "methods" / "seqcomm_dfl.yaml"))
    run = fit_matrix(*dfl, f"--data.total_frames={matrix_frames(3)}",
                     "--trainer.val_check_interval=3")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    ckpt["hyper_parameters"].update(model_hidden=64, critic_hidden=128)
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    capfd.readouterr()
    line = one_line_exit_2(fit_args(tmp_path, "--ckpt_path", str(old),
                                    configs=("methods/seqcomm_dfl.yaml",)), capfd)
    assert "SeqCommDFL no longer takes (critic_hidden, model_hidden" in line, line
    assert "start a new run" in line
    assert not (tmp_path / "runs").exists()
