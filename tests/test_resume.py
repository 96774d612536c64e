"""Reproducibility (docs/method.md §7): a seed fixes a run, and a run interrupted at a
checkpoint then resumed with ``--ckpt_path last`` logs exactly what the uninterrupted run logs."""

from __future__ import annotations

import pytest
import torch
from conftest import matrix_frames, read_metrics, read_summary

# what a run does: optimisation, collection (returns, epsilon, env steps), greedy evaluation
KEYS = ("loss/td", "train/grad_norm", "train/return", "train/epsilon", "perf/env_steps",
        "eval/return")


def logged(run, after: int = -1) -> dict[str, dict[int, float]]:
    metrics = read_metrics(run)
    return {k: {s: v for s, v in metrics[k].items() if s > after} for k in KEYS}


def test_same_seed_same_metrics(fit_matrix):
    args = (f"--data.total_frames={matrix_frames(100)}", "--trainer.val_check_interval=50")
    one, two = fit_matrix(*args, run_name="one"), fit_matrix(*args, run_name="two")
    other = fit_matrix(*args, "--seed_everything=1", run_name="other")
    assert logged(one) == logged(two)
    assert len(logged(one)["loss/td"]) == 10
    assert logged(one)["loss/td"] != logged(other)["loss/td"]  # the seed does matter


def to_single_state(path) -> None:
    """Rewrite a checkpoint as written before generator states were kept per rank: one state,
    the policy's under ``policy_rng``, the data module's at its top level."""
    ckpt = torch.load(path, weights_only=False)
    gens = ckpt["callbacks"]["RandomGenerators"]
    gens["policy_rng"] = gens.pop("policy_rngs")[0]
    data = ckpt["EpisodeData"]
    rngs = data.pop("rngs")[0]
    data["env_rngs"], data["torch_rng"] = rngs["env_rngs"], rngs["torch_rng"]
    torch.save(ckpt, path)


@pytest.mark.parametrize("single_state", [False, True])
def test_resumed_run_equals_uninterrupted_run(fit_matrix, tmp_path, single_state):
    """Run B stops at update 100 by ``--trainer.max_steps``, before its first periodic
    checkpoint (200) and halfway through its frame budget, then resumes from the last.ckpt
    written as it stopped into version_1; updates 101..200 must match run A's, which never
    stopped. So too from a checkpoint of the older single-state format. (That checkpoint once
    counted the run's one Lightning epoch finished, so the resumed run ended at once.)"""
    args = (f"--data.total_frames={matrix_frames(200)}", "--trainer.val_check_interval=100")
    full = fit_matrix(*args, run_name="A")
    cut = fit_matrix(*args, "--trainer.max_steps=100", run_name="B")
    assert read_summary(cut)["updates"] == 100
    assert (cut / "checkpoints" / "last.ckpt").is_file()
    if single_state:
        to_single_state(cut / "checkpoints" / "last.ckpt")
    resumed = fit_matrix(*args, "--ckpt_path", "last", run_name="B")
    assert resumed == tmp_path / "B" / "version_1"

    before = {k: {s: v for s, v in d.items() if s <= 100} for k, d in logged(full).items()}
    assert logged(cut) == before  # identical up to the interruption
    after = logged(resumed)
    assert min(after["loss/td"]) > 100  # it went on from update 100, it did not start over
    assert after == logged(full, after=100)
    assert len(after["loss/td"]) == 10 and len(after["eval/return"]) == 2  # 199 and the end
    a, b = read_summary(full), read_summary(resumed)
    assert (b["updates"], b["env_steps"], b["eval"]) == (a["updates"], a["env_steps"], a["eval"])


def test_last_checkpoint_holds_the_final_update(fit_matrix):
    """A run that ends at its frame budget between periodic checkpoints (every 200 updates)
    saves ``last.ckpt`` at its final update: the policy its ``summary.json`` scores. Resumed
    with a larger budget, it trains on to that budget."""
    run = fit_matrix(f"--data.total_frames={matrix_frames(330)}", run_name="end")
    assert read_summary(run)["updates"] == 330
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 330
    longer = fit_matrix(f"--data.total_frames={matrix_frames(400)}", "--ckpt_path", "last",
                        run_name="end")
    assert longer != run and read_summary(longer)["updates"] == 400
