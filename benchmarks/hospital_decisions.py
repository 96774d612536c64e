"""Where a trained hospital run loses the information: critic, messages or receivers.

Loads a finished run (its ``config.yaml`` and ``checkpoints/last.ckpt``), plays its greedy
policy on fresh wards and, on every *ambiguous* bed (a risk the specialist does not see itself:
type j-1, its to treat, or type j+1, not), reads:

- ``treat if ok`` / ``treat if not``: how often the receiver's utility of
  treating that bed beats idling, split by the truth, with every message delivered and with
  every message masked. A channel in use shows a gap between the two columns that opens only
  with messages.
- ``critic``: (SeqComm-DFL) how often the team critic ranks "treat this bed" above "idle"
  exactly when the bed is treatable: whether the evaluator of the value-aware losses knows.

    python benchmarks/hospital_decisions.py runs/ladder_hospital/tarmac_s0/version_0
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import yaml

from seqcomm.cli import SeqcommCLI
from seqcomm.data import EpisodeData
from seqcomm.envs.base import MASK, OBS, STATE
from seqcomm.envs.hospital import Hospital
from seqcomm.learner import QLearner
from seqcomm.rgmcomm_learner import RGMCommLearner
from seqcomm.team_q import masked_argmax


def load(run_dir: Path) -> QLearner:
    """The run's trained learner (``checkpoints/last.ckpt``), in eval mode."""
    return load_run(run_dir)[0]


def run_directory(path: Path) -> Path:
    """``path`` if it holds a finished run, else its only ``version_k``; exits with one line
    saying what is missing otherwise."""
    if (path / "checkpoints" / "last.ckpt").exists():
        return path
    versions = sorted(path.glob("version_*/checkpoints/last.ckpt"))
    if len(versions) == 1:
        return versions[0].parents[1]
    found = ", ".join(str(v.parents[1]) for v in sorted(path.rglob("last.ckpt"))) or "none"
    raise SystemExit(f"{path}: no checkpoints/last.ckpt here; runs below it: {found}. Pass "
                     "one run's version_k directory")


def load_run(run_dir: Path, replay: bool = False) -> tuple[QLearner, EpisodeData]:
    """The run's learner and its data module, with the replay buffer restored if ``replay``.
    ``run_dir``: a run's ``version_k`` directory, or its parent when that holds one version."""
    run_dir = run_directory(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    for key in ("ckpt_path", "weights_only"):  # fit-only keys: no trainer run here
        config.pop(key, None)
    tmp = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    yaml.safe_dump(config, tmp)
    tmp.close()
    cli = SeqcommCLI(
        QLearner, EpisodeData, subclass_mode_model=True, run=False, save_config_callback=None,
        auto_configure_optimizers=False, parser_kwargs={"parser_mode": "omegaconf"},
        args=["--config", tmp.name, "--wandb=false",
              "--data.num_envs=2", "--data.eval_envs=1"],
        trainer_defaults={"logger": False, "enable_checkpointing": False})
    model = cli.model
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                            weights_only=False)
    model.on_load_checkpoint(checkpoint)  # the learner's upgrades of older checkpoints
    model.load_state_dict(checkpoint["state_dict"])
    if replay:
        cli.datamodule.load_state_dict(checkpoint["EpisodeData"])
    return model.eval(), cli.datamodule


def ward(run_dir: Path) -> dict:
    """The run's hospital arguments (team size, beds, ...) from its ``config.yaml``."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    return dict(config["data"]["env"].get("init_args", {}))


@torch.no_grad()
def decisions(model: QLearner, n_envs: int, seed: int, **ward) -> dict[str, float]:
    env = Hospital(num_envs=n_envs, seed=seed, **ward)
    net, n, K = model.net, env.n_agents, env.n_beds
    td = env.reset()
    h = torch.zeros(n_envs, n, net.agent.hidden_dim)
    counts: dict[str, torch.Tensor] = {}

    def add(key: str, value: torch.Tensor) -> None:
        counts[key] = counts.get(key, 0) + value.sum().float()

    for _ in range(env.episode_limit):
        j = torch.arange(n).view(1, n, 1)
        r = env.risk.unsqueeze(1)
        treatable = (j == (r + 1) % n).expand(n_envs, n, K)
        ambiguous = env.occupied.unsqueeze(1) & (r < n) & (r != j)
        h = net.agent.encode(net.inputs(td[OBS], td[STATE]), h)
        for name, deliver in (("messages", None), ("masked", h.new_zeros(n))):
            q = net.utilities(h, deliver)[0]
            treat = q[..., 1:K + 1] > q[..., :1]
            add(f"{name} treat|treatable", treat & ambiguous & treatable)
            add(f"{name} treat|not", treat & ambiguous & ~treatable)
        add("treatable", ambiguous & treatable)
        add("not", ambiguous & ~treatable)
        critic = getattr(model, "critic", None)
        q, _ = net.utilities(h)
        action = masked_argmax(q, td[MASK])
        if critic is not None:  # RGMComm's critic reads the joint observations
            joint_obs = isinstance(model, RGMCommLearner)
            values = critic.switch_values(td[OBS].flatten(-2) if joint_obs else td[STATE],
                                          action)  # [E, n, A]
            says_treat = values[..., 1:K + 1] > values[..., :1]
            add("critic right", (says_treat == treatable) & ambiguous)
        td["agents", "action"] = action
        td = env.step_and_maybe_reset(td)[1]
    out = {f"{name}: treat if ok": float(counts[f"{name} treat|treatable"]
                                         / counts["treatable"])
           for name in ("messages", "masked")}
    out.update({f"{name}: treat if not": float(counts[f"{name} treat|not"] / counts["not"])
                for name in ("messages", "masked")})
    if "critic right" in counts:
        out["critic right"] = float(counts["critic right"] / (counts["treatable"]
                                                              + counts["not"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (version_k)")
    parser.add_argument("--envs", type=int, default=256)
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [(run, decisions(load(run), args.envs, args.seed, **ward(run))) for run in args.runs]
    keys = sorted({k for _, r in rows for k in r})
    print("| run | " + " | ".join(keys) + " |")
    print("| --- |" + " ---: |" * len(keys))
    for run, r in rows:
        print(f"| {run} | " + " | ".join(f"{r[k]:.2f}" if k in r else "" for k in keys) + " |")


if __name__ == "__main__":
    main()
