"""Learned one-bit communication on RGMComm's matrix game (docs/method.md §2 and §6.1).

Agent 2 (index 1) sees o2 and can only help by telling agent 1 one bit about it; the best
labelling, {o21, o23} vs {o22, o24}, is worth 38.05 (no communication: 33.325, full
observability: 39.15). Evaluation enumerates the 8 (o1, o2) pairs (conf/matrix.yaml's
exhaustive eval env), so ``eval/return`` is the exact expected return.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import ROOT, matrix_frames, read_summary

from seqcomm.comm.messages import MessageEncoder
from seqcomm.comm.stackelberg import SeqCommMessenger
from seqcomm.envs.base import env_info
from seqcomm.envs.matrix import RGMCOMM_TABLE, MatrixGame, best_message_value, random_table
from seqcomm.seqcomm_dfl import SeqCommDFL

BEST_1BIT, NO_COMM = 38.05, 33.325
#: seed 0 in the default suite, seed 1 under ``slow``; seeds 2-9 behaved the same (below)
SEEDS = [0, pytest.param(1, marks=pytest.mark.slow)]
#: every one of seeds 0-9 reached 38.05 by update 500 (and kept it to 1250, conf/matrix.yaml's
#: budget, on seeds 0-3); 600 leaves a margin at about 17-30 s per seed
UPDATES = 600
METHODS = ROOT / "conf" / "methods"


def test_best_one_bit_message_value():
    value, labels = best_message_value(RGMCOMM_TABLE, 2)
    assert value == pytest.approx(BEST_1BIT, abs=1e-4)
    assert labels[0] == labels[2] != labels[1] == labels[3]


@pytest.mark.parametrize("straight_through", [True, False])
def test_labels_without_straight_through_pass_no_gradient_to_their_logits(straight_through):
    torch.manual_seed(0)
    enc = MessageEncoder(8, "discrete", msg_dim=4, n_labels=2, straight_through=straight_through)
    msg, labels = enc(torch.randn(16, 2, 8))
    assert torch.equal(labels.sum(-1), torch.ones(16, 2))  # still exactly one-hot
    (msg * torch.randn_like(msg)).sum().backward()
    assert enc.embed.weight.grad.abs().sum() > 0  # the label embeddings learn either way
    logit_grad = enc.head.weight.grad
    assert (logit_grad is not None and logit_grad.abs().sum() > 0) == straight_through


def test_soft_receiver_needs_the_critic_evaluator():
    comm = functools.partial(SeqCommMessenger, message="discrete", ordering="fixed")
    info = env_info(MatrixGame())
    SeqCommDFL(info, comm=comm, world_model_gradient="none", va_receiver="soft")
    with pytest.raises(ValueError, match="va_evaluator"):
        SeqCommDFL(info, comm=comm, world_model_gradient="none", va_receiver="soft",
                   va_evaluator="target")


@pytest.mark.parametrize("seed", SEEDS)
def test_seqcomm_dfl_one_bit_reaches_the_best_message(fit_matrix, seed):
    """``seqcomm fit --config conf/matrix.yaml --config conf/methods/seqcomm_dfl.yaml --config
    conf/methods/seqcomm_dfl_1bit.yaml``, model-free (no world model), per seed (the slow test
    below covers random tables)."""
    run = fit_matrix(
        "--config", str(METHODS / "seqcomm_dfl.yaml"),
        "--config", str(METHODS / "seqcomm_dfl_1bit.yaml"),
        "--model.init_args.world_model_gradient=none", f"--seed_everything={seed}",
        f"--data.total_frames={matrix_frames(UPDATES)}",
        f"--trainer.val_check_interval={UPDATES}", run_name=f"seed{seed}")
    value = read_summary(run)["eval"]["return"]
    assert abs(value - BEST_1BIT) < 0.05, f"eval return {value}; best 1-bit message {BEST_1BIT}"


@pytest.mark.slow
def test_seqcomm_dfl_one_bit_reaches_the_best_message_on_random_tables(fit_matrix):
    """The same file on seeded random tables of the paper's shape (1249 updates, the task
    file's budget): the brute-force best 1-bit value in at least 8 of 9 runs (docs/results.md
    section 9: 25 of 27 on tables 1-9, 18 of 18 on tables 10-15)."""
    updates, returns, hits = 1249, [], 0
    for table in (1, 8, 16):  # 16: never run while the configuration was chosen
        values = random_table(2, 2, 4, table)
        best, _ = best_message_value(values, 2)
        for seed in range(3):
            env = [f"--data.{e}.init_args.{k}={v}" for e in ("env", "eval_env")
                   for k, v in (("table", "random"), ("table_seed", table))]
            run = fit_matrix(
                "--config", str(METHODS / "seqcomm_dfl.yaml"),
                "--config", str(METHODS / "seqcomm_dfl_1bit.yaml"),
                "--model.init_args.world_model_gradient=none", f"--seed_everything={seed}",
                f"--data.total_frames={matrix_frames(updates)}",
                f"--trainer.val_check_interval={updates}", *env,
                run_name=f"table{table}_seed{seed}")
            got = read_summary(run)["eval"]["return"]
            returns.append((table, seed, got))
            hits += abs(got - best) < 0.05
    assert hits >= 8, returns
