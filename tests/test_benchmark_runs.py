"""The benchmark scripts' run lookup (``benchmarks/hospital_decisions.run_directory``): a
run's ``version_k`` directory or its parent, and one line naming what is there otherwise; and
``benchmarks/late_evaluations.late_figures`` and ``benchmarks/learning_signals.windowed`` on a
hand-written run; ``benchmarks/update_cost.breakdown`` on a profiled call; the hospital
read-out's per-receiver shares and its routing probe on hand-made data; the base-round
attention read-out's weights and their sharpness; the maze diagnostic's bit of each state and
its exact-bit labels, uninformative until a late update; the labels' per-step agreement with
the bit over a replay."""

from __future__ import annotations

import argparse
import cProfile
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, matrix_dfl_step
from tensordict import TensorDict

sys.path.insert(0, str(ROOT / "benchmarks"))
import maze_true_bit  # noqa: E402
from base_attention_use import base_weights, sharpness  # noqa: E402
from hospital_decisions import balanced_accuracy, run_directory, shares  # noqa: E402
from late_evaluations import late_figures  # noqa: E402
from learning_signals import windowed  # noqa: E402
from maze_label_use import replay_agreement  # noqa: E402
from maze_true_bit import Bits, patch_observation_labels  # noqa: E402
from update_cost import breakdown  # noqa: E402

from seqcomm.agent import RNNAgent  # noqa: E402
from seqcomm.comm.ordering import order_entropy, precedence_from_order  # noqa: E402
from seqcomm.comm.rgmcomm import RGMComm  # noqa: E402
from seqcomm.envs.base import OBS  # noqa: E402
from seqcomm.rgmcomm_learner import RGMCommLearner  # noqa: E402


def finished_run(path: Path) -> Path:
    (path / "checkpoints").mkdir(parents=True)
    (path / "checkpoints" / "last.ckpt").write_bytes(b"")
    return path


def test_a_run_is_found_from_its_version_or_its_parent(tmp_path):
    run = finished_run(tmp_path / "s0" / "version_0")
    assert run_directory(run) == run
    assert run_directory(tmp_path / "s0") == run


def test_several_or_no_runs_are_named_in_one_line(tmp_path):
    runs = [finished_run(tmp_path / f"s{s}" / "version_0") for s in (0, 1)]
    with pytest.raises(SystemExit, match="runs below it: .*s0/version_0, .*s1/version_0") as err:
        run_directory(tmp_path)
    assert "\n" not in str(err.value) and str(runs[0]) in str(err.value)
    with pytest.raises(SystemExit, match="runs below it: none"):
        run_directory(tmp_path / "missing")


def hand_written_run(path: Path) -> Path:
    """8 updates; evaluations at updates 2, 4, 6, 8; training win rates at every update."""
    rows = ["step,eval/win_rate,train/win_rate,perf/env_steps"]
    rows += [f"{u},,{u / 10},{100 * u}" for u in range(1, 9)]
    rows += [f"{u},{w},," for u, w in ((2, 0.1), (4, 0.5), (6, 0.2), (8, 0.4))]
    (path / "metrics.csv").write_text("\n".join(rows) + "\n")
    summary = {"eval": {"win_rate": 0.05}, "updates": 8, "env_steps": 800}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_late_figures_of_a_hand_written_run(tmp_path):
    hand_written_run(tmp_path)
    got = late_figures(tmp_path, "win_rate", last=2)
    assert got["final"] == 0.05  # summary.json, not the last logged evaluation
    assert got["last_mean"] == pytest.approx(0.3)  # (0.2 + 0.4) / 2
    assert got["late_swing"] == pytest.approx(0.2)  # second half 0.2 -> 0.4
    assert got["train_late"] == pytest.approx(0.75)  # updates 7 and 8: from 7/8 of the run


def test_learning_signals_average_each_span_of_updates(tmp_path):
    got = windowed(hand_written_run(tmp_path), ["train/win_rate", "eval/win_rate"], windows=4)
    # updates 1-2, 3-4, 5-6, 7-8
    assert got["train/win_rate"] == pytest.approx([0.15, 0.35, 0.55, 0.75])
    assert got["eval/win_rate"] == pytest.approx([0.1, 0.5, 0.2, 0.4])
    spans = windowed(tmp_path, ["eval/win_rate"], windows=16)["eval/win_rate"]
    assert [v for v in spans if v == v] == pytest.approx([0.1, 0.5, 0.2, 0.4])  # rest empty


def test_the_breakdown_lists_package_functions_by_cumulative_time_per_update():
    order = torch.arange(3).repeat(64, 1)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(4):
        precedence_from_order(order)
        order_entropy(order)
    profiler.disable()
    rows = breakdown(profiler, argparse.Namespace(updates=4, breakdown=5))
    names = [name for name, _, _ in rows]
    assert {"ordering.precedence_from_order", "ordering.order_entropy"} <= set(names)
    assert not any(name.startswith(("torch", "test_")) for name in names)  # the package only
    times = [ms for _, ms, _ in rows]
    assert times == sorted(times, reverse=True) and times[-1] > 0
    assert rows[0][2] == 1.0 and all(0 < share <= 1 for _, _, share in rows)


def test_hospital_shares_per_receiver_and_pooled():
    counts = {"messages treat|treatable": torch.tensor([1.0, 3.0]),
              "messages treat|not": torch.tensor([0.0, 1.0]),
              "masked treat|treatable": torch.tensor([2.0, 2.0]),
              "masked treat|not": torch.tensor([2.0, 2.0]),
              "treatable": torch.tensor([2.0, 6.0]), "not": torch.tensor([4.0, 4.0])}
    per_agent = shares(counts, per_agent=True)
    assert per_agent["messages: treat if ok"].tolist() == [0.5, 0.5]
    assert per_agent["messages: treat if not"].tolist() == [0.0, 0.25]
    pooled = shares(counts, per_agent=False)
    assert pooled["messages: treat if ok"].item() == 0.5  # 4 of 8 beds, not a mean of shares
    assert pooled["masked: treat if ok"].item() == 0.5  # (2 + 2) / (2 + 6)
    assert pooled["masked: treat if not"].item() == 0.5
    assert "critic right" not in pooled


def test_the_routing_probe_reads_a_bit_that_is_there_and_not_one_that_is_not():
    torch.manual_seed(0)
    bits = torch.rand(4000, 3) < 0.5
    mask = torch.rand(4000, 3) < 0.7
    noise = torch.randn(4000, 8)
    train = torch.arange(4000) < 3000
    held = torch.cat([noise, bits.float() * 2 - 1], -1)  # the bits among noise columns
    assert balanced_accuracy(held, bits, mask, train, updates=300) > 0.97
    assert abs(balanced_accuracy(noise, bits, mask, train, updates=300) - 0.5) < 0.05


def test_base_weights_skip_the_receiver_and_sharpness_tells_uniform_from_one_sender():
    n, d = 4, 8
    uniform = base_weights(torch.zeros(2, n, d), torch.randn(2, n, d))
    assert torch.allclose(uniform, (1 - torch.eye(n)) / (n - 1))  # nobody weighs itself
    assert sharpness(uniform) == pytest.approx((1.0, 1 / (n - 1), 0.0))
    key = torch.eye(n, d) * 100  # receiver j's query matches sender (j + 1) % n's key only
    query = key.roll(-1, dims=0)
    one = base_weights(query, key)
    assert one.argmax(-1).tolist() == [(j + 1) % n for j in range(n)]
    entropy, largest, sharp = sharpness(one)
    assert entropy < 1e-3 and largest > 0.999 and sharp == 1.0


def test_imagined_targets_from_the_real_next_step_are_the_real_targets():
    """``imagined_targets.target_gaps``: fed the batch's own (terminal) next step, the
    imagined path gives the real TD targets; an untrained world model's do not, and the trust
    region only brings them closer."""
    from imagined_targets import target_gaps

    model, batch = matrix_dfl_step()
    gaps = target_gaps(model, batch)
    assert gaps["perfect_raw_abs"] < 1e-6
    assert gaps["model_raw_abs"] > 1e-3
    assert gaps["model_clipped_abs"] <= gaps["model_raw_abs"] + 1e-6


def test_world_model_rules_step_the_model_only_and_restore_the_settings():
    """``imagined_targets.continue_world_model``: each rule moves the world model and not the
    value networks, leaves the learner's settings as they were, and the prediction-loss rule
    lowers that loss on the batch it steps on; ``tensor_ratios`` reads the per-tensor cap."""
    from imagined_targets import continue_world_model, held_out_gap, tensor_ratios

    model, batch = matrix_dfl_step()
    values = {k: v.clone() for k, v in model.net.state_dict().items()}
    settings = dict(model.hparams)
    start = {k: v.clone() for k, v in model.world_model.state_dict().items()}
    before = held_out_gap(model, [batch])[1]
    for rule in ("run", "hypergradient", "per_tensor"):
        model.world_model.load_state_dict(start)
        continue_world_model(model, rule, [batch])
        assert any(not torch.equal(v, start[k]) for k, v in model.world_model.state_dict().items())
    model.world_model.load_state_dict(start)
    continue_world_model(model, "mle", [batch] * 30)
    assert held_out_gap(model, [batch])[1] < 0.5 * before
    assert all(torch.equal(v, values[k]) for k, v in model.net.state_dict().items())
    assert dict(model.hparams) == settings
    model.hparams.update(hypergradient_ratio=0.01, hypergradient_per_tensor=True)
    ratios, _ = tensor_ratios(model, [batch, batch])
    assert set(ratios) == {n for n, _ in model.world_model.named_parameters()}
    assert max(ratios.values()) <= 0.01 + 1e-4


def maze_obs(cell: torch.Tensor, t: torch.Tensor, size: int = 4, steps: int = 3) -> torch.Tensor:
    """Maze observations (4x4, 3 steps unless told): own cell one-hot, then the step one-hot."""
    return torch.cat([torch.nn.functional.one_hot(cell, size * size),
                      torch.nn.functional.one_hot(t, steps + 1)], -1).float()


def test_each_maze_state_hears_its_own_steps_bit_not_the_last_encoded():
    torch.manual_seed(0)
    agent = RNNAgent(obs_dim=20, n_agents=2, n_actions=5, hidden_dim=8)
    cell = torch.randint(0, 16, (4, 3, 2))
    t = torch.randint(0, 3, (4, 3, 2))
    obs, next_obs = maze_obs(cell, t), maze_obs(15 - cell, t + 1)  # the far corner: bits differ
    bit = (cell // 4 + cell % 4 <= 3 - t).long()
    next_bit = ((15 - cell) // 4 + (15 - cell) % 4 <= 2 - t).long()
    assert (bit != next_bit).any()
    bits = Bits()
    h = agent.unroll(obs, torch.zeros(4, 3, dtype=torch.bool))
    bits.add(obs, h)
    h_next = agent.encode(next_obs, h)  # encoded last, as the learner does
    bits.add(next_obs, h_next)
    assert torch.equal(bits(h), bit) and torch.equal(bits(h_next), next_bit)
    assert torch.equal(bits(h_next[1:3, 2]), next_bit[1:3, 2])
    with pytest.raises(RuntimeError, match="not kept"):
        bits(torch.zeros(1, 2, 8))


def test_exact_bit_labels_are_random_before_the_late_update_and_after_exact_steps(monkeypatch):
    monkeypatch.setattr(RGMComm, "label_logits", RGMComm.label_logits)  # restored afterwards
    monkeypatch.setattr(RGMCommLearner, "training_step", lambda self, batches: None)
    patch_observation_labels(late=5)
    comm = RGMComm(n_agents=2, n_labels=2, into="input")
    comm.observe(20)
    cell, t = torch.arange(16).repeat(3), torch.arange(3).repeat_interleave(16)
    obs = maze_obs(torch.stack([cell, cell.flip(0)], -1), torch.stack([t, t], -1))
    bit = (obs[..., :16].argmax(-1) // 4 + obs[..., :16].argmax(-1) % 4 <= 3 - t[:, None]).long()

    def heard() -> torch.Tensor:
        return comm.heard(obs)[1].labels.argmax(-1)

    early = heard()
    assert 0.3 < (early == bit).float().mean() < 0.7  # neither the bit nor its renaming
    RGMCommLearner.training_step(argparse.Namespace(global_step=4), None)
    assert torch.equal(heard(), early)
    RGMCommLearner.training_step(argparse.Namespace(global_step=5), None)
    assert torch.equal(heard(), bit)
    patch_observation_labels(late=0, exact_steps=1)  # the bit at the first step only
    first = (t == 0)[:, None].expand_as(bit)
    assert torch.equal(heard(), torch.where(first, bit, early))


def test_exact_bit_labels_on_another_maze_size(monkeypatch):
    """``--size 5 --steps 4``: the bit is whether the high corner is within the moves left."""
    monkeypatch.setattr(RGMComm, "label_logits", RGMComm.label_logits)
    monkeypatch.setattr(RGMCommLearner, "training_step", RGMCommLearner.training_step)
    monkeypatch.setattr(maze_true_bit, "SIZE", 5)
    monkeypatch.setattr(maze_true_bit, "STEPS", 4)
    patch_observation_labels()
    comm = RGMComm(n_agents=2, n_labels=2, into="input")
    comm.observe(30)
    cell, t = torch.arange(25).repeat(4), torch.arange(4).repeat_interleave(25)
    obs = maze_obs(torch.stack([cell, cell.flip(0)], -1), torch.stack([t, t], -1), 5, 4)
    bit = (obs[..., :25].argmax(-1) // 5 + obs[..., :25].argmax(-1) % 5 <= 4 - t[:, None])
    assert 0 < bit.float().mean() < 1 and torch.equal(comm.heard(obs)[1].labels.argmax(-1),
                                                      bit.long())


def test_replay_agreement_is_per_step_and_up_to_renaming():
    cell = torch.arange(16).repeat(3)
    t = torch.arange(3).repeat_interleave(16)
    obs = maze_obs(torch.stack([cell, cell], -1), torch.stack([t, t], -1))  # [48, 2, 20]
    bit = (cell // 4 + cell % 4 <= 3 - t).long()
    labels = torch.stack([torch.where(t == 1, 1 - bit, bit), torch.where(t == 2, 0, bit)], -1)
    comm = argparse.Namespace(
        label_logits=lambda o: torch.nn.functional.one_hot(labels[: len(o)], 2).float())
    model = argparse.Namespace(net=argparse.Namespace(comm=comm))
    padded = torch.cat([obs, torch.zeros(4, 2, 20)])  # padding rows are dropped
    data = argparse.Namespace(buffer=TensorDict({OBS: padded}, batch_size=[52]))
    share = replay_agreement(model, data, 4, 3)
    at_two = (bit[t == 2] == 0).float().mean()
    expected = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, max(at_two, 1 - at_two)]])
    assert at_two < 0.9 and torch.allclose(share, expected)
