"""Every device path on CUDA (issue 9): the environments, the collector, the replay buffer and
the learners run on the GPU under ``--trainer.accelerator=gpu`` (``data.device: auto``), and a
learner's losses on CUDA equal its losses on CPU up to float rounding. Marked ``gpu``: run
with ``pytest -m gpu`` where a CUDA device exists (CI has none)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import yaml
from conftest import ROOT, latest_version
from tensordict import TensorDictBase
from test_ablations import SHORT, TINY, check_run, resolve

from seqcomm.cli import SeqcommCLI, main
from seqcomm.collector import ChunkCollector
from seqcomm.data import EpisodeData
from seqcomm.envs.base import ACTION
from seqcomm.envs.reference import random_policy
from seqcomm.learner import QLearner
from seqcomm.policy import HIDDEN, PREV_ACTION

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TASKS = ["matrix", "maze", "hospital", "microcombat_3m", "vmas_spread"]
METHODS = ["qmix", "full_obs", "oracle", "commnet", "tarmac", "rgmcomm", "seqcomm", "omd",
           "seqcomm_dfl"]
GRADIENTS = ["implicit_cg", "implicit_minres", "implicit_neumann", "unrolled", "mle"]


def conf(name: str) -> str:
    return str(ROOT / "conf" / f"{name}.yaml")


def tensors(td: TensorDictBase) -> list[torch.Tensor]:
    return [v for v in td.values(include_nested=True, leaves_only=True)]


def fit_gpu(tmp_path, *args: str):
    main(["fit", *args, *TINY, "--trainer.accelerator=gpu", "--trainer.devices=1",
          "--wandb", "false", "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(tmp_path), "--run_name", "run"])
    run = latest_version(tmp_path, "run")
    checkpoint = torch.load(next(run.glob("checkpoints/*.ckpt")), weights_only=False)
    return run, checkpoint


def assert_on_cuda(checkpoint: dict) -> None:
    """The saved weights and the saved replay storage are CUDA tensors."""
    weights = list(checkpoint["state_dict"].values())
    assert weights and all(w.is_cuda for w in weights)
    stored = checkpoint[EpisodeData.__qualname__]["buffer"]["_storage"]["_storage"]
    assert stored and all(t.is_cuda for t in stored.values())


@pytest.mark.parametrize("task", TASKS)
def test_environment_steps_on_cuda(task):
    """Reset and a full episode of random available actions: every output on the GPU."""
    spec = yaml.safe_load(open(conf(task)))["data"]["env"]
    env = resolve(spec["class_path"])(num_envs=4, seed=0, device="cuda",
                                      **spec.get("init_args", {}))
    td = env.reset()
    assert all(t.is_cuda for t in tensors(td))
    for _ in range(3):
        td.set(ACTION, random_policy(td))
        td = env.step(td)["next"]
        assert all(t.is_cuda for t in tensors(td))
        assert torch.isfinite(td["reward"]).all()


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_on_cuda(method, tmp_path):
    """hospital x every method file: the run finishes with finite losses and its weights and
    replay storage live on the GPU (``data.device: auto`` followed the trainer)."""
    run, checkpoint = fit_gpu(tmp_path, "--config", conf("hospital"), "--config",
                              conf(f"methods/{method}"), *SHORT["hospital"])
    check_run(run)
    assert_on_cuda(checkpoint)


@pytest.mark.parametrize("task", [t for t in TASKS if t != "hospital"])
def test_seqcomm_dfl_trains_on_cuda_on_every_task(task, tmp_path):
    run, checkpoint = fit_gpu(tmp_path, "--config", conf(task), "--config",
                              conf("methods/seqcomm_dfl"), *SHORT.get(task, []))
    check_run(run)
    assert_on_cuda(checkpoint)


def test_one_bit_messages_train_on_cuda(tmp_path):
    run, checkpoint = fit_gpu(tmp_path, "--config", conf("matrix"), "--config",
                              conf("methods/seqcomm_dfl"), "--config",
                              conf("methods/seqcomm_dfl_1bit"))
    check_run(run)
    assert_on_cuda(checkpoint)


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_world_model_gradients_on_cuda(gradient, tmp_path):
    run, checkpoint = fit_gpu(tmp_path, "--config", conf("hospital"), "--config",
                              conf("methods/seqcomm_dfl"), "--config",
                              str(ROOT / "ablations" / "gradient" / f"{gradient}.yaml"),
                              *SHORT["hospital"])
    check_run(run)
    assert_on_cuda(checkpoint)


@pytest.mark.parametrize("method", ["qmix", "seqcomm_dfl"])
def test_losses_on_cuda_equal_losses_on_cpu(method):
    """The same weights and replay batch give the same TD and message losses on both
    devices (float rounding apart)."""
    cli = SeqcommCLI(QLearner, EpisodeData, subclass_mode_model=True, run=False,
                     save_config_callback=None, auto_configure_optimizers=False,
                     parser_kwargs={"parser_mode": "omegaconf"},
                     args=["--config", conf("hospital"), "--config", conf(f"methods/{method}"),
                           "--wandb=false", "--trainer.accelerator=cpu"])
    model, data = cli.model, cli.datamodule
    collector = ChunkCollector(data.make_env(8, 0, "cpu"), model.policy, data.info.episode_limit)
    batch = next(collector).exclude(HIDDEN, ("next", HIDDEN), PREV_ACTION, ("next", PREV_ACTION))
    on_cuda = copy.deepcopy(model).cuda()
    losses = {}
    for device, learner in (("cpu", model), ("cuda", on_cuda)):
        td, cache = learner.td_loss(batch.to(device))
        losses[device] = {"td": td}
        if hasattr(learner, "message_losses"):
            losses[device].update({k: v for k, v in learner.message_losses(
                batch.to(device), cache).items() if torch.is_tensor(v) and v.dim() == 0})
    assert losses["cpu"].keys() == losses["cuda"].keys()
    assert len(losses["cpu"]) > 1 or method == "qmix"  # the message losses were compared too
    for name, value in losses["cpu"].items():
        got = losses["cuda"][name].cpu()
        assert math.isfinite(value.item())
        torch.testing.assert_close(got, value.detach(), rtol=1e-4, atol=1e-5, msg=name)
