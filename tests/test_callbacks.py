"""The bookkeeping callbacks ``seqcomm fit`` installs (docs/method.md §7-8): collection
statistics, the throughput clock, and the random generators' seeding and restore."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from seqcomm.callbacks import CollectionStatistics, RandomGenerators, Throughput


class Module:
    """What the callbacks read of a learner: its policy, and ``log`` (recorded)."""

    def __init__(self) -> None:
        self.policy = SimpleNamespace(epsilon=0.25, generator=torch.Generator())
        self.logged: dict[str, tuple[float, bool]] = {}

    def log(self, name: str, value: float, prog_bar: bool = False, batch_size: int = 1) -> None:
        self.logged[name] = (value, prog_bar)


class Data:
    """What the callbacks read of ``EpisodeData``; counts ``restore_generators`` calls."""

    def __init__(self) -> None:
        self.frames, self.last_episodes, self.restored = 0, {}, 0

    def restore_generators(self) -> None:
        self.restored += 1


def trainer(step: int = 0, rank: int = 0) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, log_every_n_steps=10, global_rank=rank,
                           datamodule=Data())


def batch_end(callback, t, module) -> None:
    callback.on_train_batch_end(t, module, None, None, 0)


def test_throughput_logs_env_steps_and_rates_on_the_clock():
    now = [100.0]
    clock = Throughput(clock=lambda: now[0])
    t, module = trainer(step=10), Module()
    t.datamodule.frames = 320
    clock.on_train_start(t, module)
    batch_end(clock, t, module)  # the first logging update: env steps, no rate yet
    assert module.logged == {"perf/env_steps": (320.0, True)}

    now[0], t.global_step, t.datamodule.frames = 104.0, 15, 480
    module.logged.clear()
    batch_end(clock, t, module)  # not a logging update (log_every_n_steps=10)
    assert module.logged == {}

    now[0], t.global_step, t.datamodule.frames = 108.0, 20, 640
    batch_end(clock, t, module)  # 320 env steps and 10 updates in 8 s
    assert module.logged == {"perf/env_steps": (640.0, True),
                             "perf/env_steps_per_s": (40.0, False),
                             "perf/updates_per_s": (1.25, False)}

    module.logged.clear()
    clock.on_validation_epoch_end(t, module)  # an evaluation, 8 s after training started
    assert module.logged == {"eval/wall_seconds": (8.0, False)}

    clock.on_train_start(t, module)  # a new fit (e.g. resumed): the clock starts anew
    module.logged.clear()
    now[0], t.global_step = 500.0, 30
    batch_end(clock, t, module)
    assert set(module.logged) == {"perf/env_steps"}
    clock.on_validation_epoch_end(t, module)
    assert module.logged["eval/wall_seconds"] == (392.0, False)


def test_collection_statistics_log_the_latest_episodes_and_epsilon():
    stats, t, module = CollectionStatistics(), trainer(step=20), Module()
    t.datamodule.last_episodes = {"return": -3.5, "won": 0.5}
    batch_end(stats, t, module)
    assert module.logged == {"train/return": (-3.5, True), "train/win_rate": (0.5, False),
                             "train/epsilon": (0.25, False)}
    module.logged.clear()
    t.global_step = 21
    batch_end(stats, t, module)
    assert module.logged == {}


@pytest.mark.parametrize("rank", [0, 1])
def test_random_generators_seed_the_policy_per_rank(rank):
    gens, module = RandomGenerators(), Module()
    gens.setup(trainer(rank=rank), module, "fit")
    expected = torch.Generator().manual_seed(torch.initial_seed() + 7919 * rank)
    assert torch.equal(module.policy.generator.get_state(), expected.get_state())


def test_random_generators_restore_the_policy_state_from_a_checkpoint():
    """The policy's draws after a checkpoint are drawn again by a run resumed from it, whose
    own setup reseeded the generator; the data module's generators are put back too."""
    before, t = Module(), trainer()
    saver = RandomGenerators()
    saver.setup(t, before, "fit")
    torch.rand(5, generator=before.policy.generator)  # training went on a while
    state = saver.state_dict()
    expected = torch.rand(5, generator=before.policy.generator)

    after, resumed = Module(), RandomGenerators()
    resumed.setup(t, after, "fit")
    resumed.load_state_dict(state)
    resumed.on_train_start(t, after)
    assert t.datamodule.restored == 1
    assert torch.equal(torch.rand(5, generator=after.policy.generator), expected)

    # a checkpoint written before this callback held the state at its top level
    legacy, old = Module(), RandomGenerators()
    old.setup(t, legacy, "fit")
    old.on_load_checkpoint(t, legacy, {"policy_rng": state["policy_rngs"][0]})
    old.on_train_start(t, legacy)
    assert torch.equal(torch.rand(5, generator=legacy.policy.generator), expected)


def test_random_generators_leave_a_fresh_run_seeded():
    gens, t, module = RandomGenerators(), trainer(), Module()
    gens.setup(t, module, "fit")
    seeded = module.policy.generator.get_state()
    gens.on_train_start(t, module)  # no checkpoint: nothing to put back but the data's
    assert t.datamodule.restored == 1
    assert torch.equal(module.policy.generator.get_state(), seeded)


@pytest.mark.parametrize("rank", [0, 1])
def test_random_generators_fall_back_to_rank_0s_state(rank, monkeypatch, capsys):
    """A checkpoint of one state (written by one process, or before states were kept per rank:
    ``policy_rng``) resumed on 2 ranks: every rank takes that state, and rank 0 alone says so
    in one line."""
    monkeypatch.setattr("seqcomm.distributed.world_size", lambda: 2)
    monkeypatch.setattr("seqcomm.distributed.rank", lambda: rank)
    saved = torch.Generator().manual_seed(3).get_state()
    for state in ({"policy_rngs": [saved]}, {"policy_rng": saved}):
        t, module, gens = trainer(rank=rank), Module(), RandomGenerators()
        gens.setup(t, module, "fit")
        gens.load_state_dict(state)
        gens.on_train_start(t, module)
        assert torch.equal(module.policy.generator.get_state(), saved)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == (2 if rank == 0 else 0)
    assert all("states of 1 rank(s), not 2" in line for line in lines)
