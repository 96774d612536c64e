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

``--per-agent`` prints every column per receiver (the leader of a fixed order first).
``--probe`` asks, per receiver j, whether the bit it needs (bed k's risk is j-1's, so the bed is
j's to treat) can be read at all on its ambiguous beds: balanced held-out accuracy of a small
classifier from ``h_j`` (chance), from ``[h_j, ctx_j]`` (what the messages delivered) and from
``[h_j, h_{j-1}]`` (what the one sender who knows holds). Delivered but not acted on is the
receivers' take-up; held but not delivered is the channel.

    python benchmarks/hospital_decisions.py runs/ladder_hospital/tarmac_s0/version_0
    python benchmarks/hospital_decisions.py RUN --per-agent --probe
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


def require_head_messages(run: Path, model: QLearner) -> None:
    """Exit with one line when the run's messages enter the recurrent input (read-outs that
    mask messages at the utility head would report masked = delivered)."""
    if model.net.comm.input_dim:
        raise SystemExit(f"{run}: its messages enter the recurrent input (RGMComm into: "
                         "input); this read-out masks them at the utility head")


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
def decisions(model: QLearner, n_envs: int, seed: int,
              **ward) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per receiver ``[n]`` counts of ambiguous beds (see ``shares``) and the rollout's
    recorded ``h``, ``ctx`` ``[T*E, n, .]``, ``needed`` (bed k's risk is j-1's) and
    ``ambiguous`` ``[T*E, n, K]`` for ``routing_probe``."""
    env = Hospital(num_envs=n_envs, seed=seed, **ward)
    net, n, K = model.net, env.n_agents, env.n_beds
    td = env.reset()
    h = torch.zeros(n_envs, n, net.agent.hidden_dim)
    counts: dict[str, torch.Tensor] = {}
    record: dict[str, list[torch.Tensor]] = {"h": [], "ctx": [], "needed": [], "ambiguous": []}

    def add(key: str, value: torch.Tensor) -> None:  # summed over copies and beds
        counts[key] = counts.get(key, 0) + value.sum((0, 2)).float()

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
        q, out = net.utilities(h)
        for key, value in (("h", h), ("ctx", out.ctx), ("needed", treatable),
                           ("ambiguous", ambiguous)):
            record[key].append(value)
        action = masked_argmax(q, td[MASK])
        if critic is not None:  # RGMComm's critic reads the joint observations
            joint_obs = isinstance(model, RGMCommLearner)
            values = critic.switch_values(td[OBS].flatten(-2) if joint_obs else td[STATE],
                                          action)  # [E, n, A]
            says_treat = values[..., 1:K + 1] > values[..., :1]
            add("critic right", (says_treat == treatable) & ambiguous)
        td["agents", "action"] = action
        td = env.step_and_maybe_reset(td)[1]
    return counts, {k: torch.cat(v) for k, v in record.items()}


def shares(counts: dict[str, torch.Tensor], per_agent: bool) -> dict[str, torch.Tensor]:
    """The module docstring's columns from ``decisions``' counts: per receiver ``[n]``, or
    pooled over receivers (scalars)."""
    total = (lambda c: c) if per_agent else (lambda c: c.sum())
    out = {f"{name}: treat if {truth}": total(counts[f"{name} treat|{key}"]) / total(counts[key])
           for name in ("messages", "masked")
           for truth, key in (("ok", "treatable"), ("not", "not"))}
    if "critic right" in counts:
        out["critic right"] = total(counts["critic right"]) / total(counts["treatable"]
                                                                     + counts["not"])
    return out


def balanced_accuracy(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                      train: torch.Tensor, updates: int = 800) -> float:
    """Held-out balanced accuracy on the ``mask`` entries of a one-hidden-layer classifier
    ``x [R, D]`` -> bits ``y [R, K]`` fitted on the ``train`` rows."""
    torch.manual_seed(0)
    x = (x - x[train].mean(0)) / x[train].std(0).clamp_min(1e-6)
    probe = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, y.shape[1]))
    opt = torch.optim.Adam(probe.parameters(), lr=3e-3)
    xt, yt, mt = x[train], y[train].float(), mask[train].float()
    with torch.enable_grad():
        for _ in range(updates):
            idx = torch.randint(len(xt), (1024,))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                probe(xt[idx]), yt[idx], weight=mt[idx], reduction="sum") / mt[idx].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    test = ~train
    said, truth, seen = probe(x[test]) > 0, y[test], mask[test]
    hit = (said == truth) & seen
    return 0.5 * float((hit & truth).sum() / (truth & seen).sum()
                       + (hit & ~truth).sum() / (~truth & seen).sum())


def routing_probe(record: dict[str, torch.Tensor], n_envs: int) -> dict[str, torch.Tensor]:
    """Per receiver j ``[n]``: can the bits j needs be read from ``h_j``, ``[h_j, ctx_j]``,
    ``[h_j, h_{j-1}]`` (held out: the last quarter of the copies)?"""
    h, ctx, needed, ambiguous = (record[k] for k in ("h", "ctx", "needed", "ambiguous"))
    train = torch.arange(len(h)) % n_envs < (3 * n_envs) // 4
    n = h.shape[1]
    inputs = {"probe: from h_j": lambda j: h[:, j],
              "probe: from [h_j, ctx_j]": lambda j: torch.cat([h[:, j], ctx[:, j]], -1),
              "probe: from [h_j, h_j-1]": lambda j: torch.cat([h[:, j], h[:, (j - 1) % n]], -1)}
    return {name: torch.tensor([balanced_accuracy(x(j), needed[:, j], ambiguous[:, j], train)
                                for j in range(n)]) for name, x in inputs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (version_k)")
    parser.add_argument("--envs", type=int, default=256)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--per-agent", action="store_true",
                        help="one value per receiver in every cell (the leader first)")
    parser.add_argument("--probe", action="store_true",
                        help="also the routing probe: can each receiver read the bit it needs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for run in args.runs:
        model = load(run)
        require_head_messages(run, model)
        counts, record = decisions(model, args.envs, args.seed, **ward(run_directory(run)))
        row = shares(counts, args.per_agent)
        if args.probe:
            row.update({k: v if args.per_agent else v.mean()
                        for k, v in routing_probe(record, args.envs).items()})
        rows.append((run, row))
    keys = sorted({k for _, r in rows for k in r})
    print("| run | " + " | ".join(keys) + " |")
    print("| --- |" + " ---: |" * len(keys))
    for run, r in rows:
        cells = (" ".join(f"{v:.2f}" for v in r[k].reshape(-1).tolist()) if k in r else ""
                 for k in keys)
        print(f"| {run} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
