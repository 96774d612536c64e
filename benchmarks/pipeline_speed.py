"""Throughput of the whole seqcomm pipeline (``seqcomm fit``: LightningCLI + Trainer +
``EpisodeData`` + ``QLearner``) on VMAS, optionally next to TorchRL's own QMIX reference.

Each run is a fresh ``python -m seqcomm.cli fit --config <generated yaml>`` subprocess, the
same code path as the ``seqcomm`` command, with one extra callback (``Throughput``) that
times a window of updates after a warm-up, so start-up (imports, env and collector creation,
buffer warm-up, first calls) is excluded. Inside the window it also times
``EpisodeData.collect`` (env stepping + policy + buffer write), ``buffer.sample``,
``QLearner.training_step``, ``QLearner.log_training`` and the logging callbacks
(``seqcomm.callbacks.CollectionStatistics`` and ``Throughput``, after each update), which
splits the cost into collection, replay sampling, learner, logging and Lightning's own loop
(see ``split``).
Rates are given per wall second and per CPU second of the process (steadier on a shared
machine).

    python benchmarks/pipeline_speed.py --compare --repeats 2

prints a markdown table (env steps/s, updates/s, the per-frame / per-update split) and the
machine. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import lightning as L

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable from the repo
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.torchrl_qmix_reference import Stopwatch  # noqa: E402
from seqcomm import callbacks  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = ("simple_spread", "navigation")


class Throughput(L.Callback):
    """Times updates ``(warmup_updates, warmup_updates + window_updates]``, writes the result
    as JSON to ``out`` and stops training.

    Args:
        warmup_updates: optimiser updates before the window opens.
        window_updates: optimiser updates inside the window.
        out: path of the JSON result.
    """

    def __init__(self, warmup_updates: int, window_updates: int, out: str) -> None:
        self.warmup, self.window, self.out = warmup_updates, window_updates, out
        self.watch = Stopwatch()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = trainer.datamodule
        collect, sample = data.collect, data.buffer.sample

        def timed_collect() -> None:
            with self.watch.phase("collect"):
                collect()

        def timed_sample(*args, **kwargs):
            with self.watch.phase("sample"):
                return sample(*args, **kwargs)

        step = pl_module.training_step

        def timed_step(dataloader_iter):  # the name tells Lightning to pass the iterator
            with self.watch.phase("train_step"):  # holds collect and sample too
                return step(dataloader_iter)

        log = pl_module.log_training

        def timed_log(*args, **kwargs) -> None:
            with self.watch.phase("log"):
                log(*args, **kwargs)

        # instance attributes shadow the methods EpisodeData.batches and Lightning call
        data.collect, data.buffer.sample = timed_collect, timed_sample
        pl_module.training_step, pl_module.log_training = timed_step, timed_log
        for callback in trainer.callbacks:  # their logging runs after training_step
            if isinstance(callback, (callbacks.CollectionStatistics, callbacks.Throughput)):
                callback.on_train_batch_end = self.timed(callback.on_train_batch_end)

    def timed(self, hook: Callable[..., None]) -> Callable[..., None]:
        """``hook`` timed as the phase ``log_callbacks``."""

        def timed_hook(*args, **kwargs) -> None:
            with self.watch.phase("log_callbacks"):
                hook(*args, **kwargs)

        return timed_hook

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs,
                           batch, batch_idx: int) -> None:
        step, frames = trainer.global_step, trainer.datamodule.frames
        if step == self.warmup:
            self.watch.open(frames, step)
        elif self.watch.start is not None and step == self.warmup + self.window:
            with open(self.out, "w") as f:
                json.dump(self.watch.result(frames, step), f)
            trainer.should_stop = True


def seqcomm_config(args: argparse.Namespace, scenario: str, root: str, out: str) -> dict:
    """The ``seqcomm fit`` config of one run (the YAML a user would write, plus the timer)."""
    return {
        "seed_everything": args.seed, "run_name": f"bench_{scenario}", "wandb": False,
        "threads": args.threads,
        "trainer": {
            "default_root_dir": root,
            "val_check_interval": 10**9,  # no evaluation inside the window
            "accelerator": "gpu" if args.device.startswith("cuda") else "cpu",
            "callbacks": [{"class_path": "benchmarks.pipeline_speed.Throughput",
                           "init_args": {"warmup_updates": args.warmup_updates,
                                         "window_updates": args.window_updates, "out": out}}],
        },
        "data": {
            "env": {"class_path": "seqcomm.envs.vmas.VmasTask",
                    "init_args": {"scenario": scenario, "n_agents": args.n_agents,
                                  "max_steps": args.max_steps}},
            "num_envs": args.num_envs, "total_frames": 10**9,
            "buffer_size": args.buffer_chunks, "batch_size": args.batch_size,
            "warmup_chunks": args.batch_size, "updates_per_collect": args.updates_per_collect,
            "eval_envs": 2, "eval_episodes": 2, "device": args.device,
        },
        "model": {"class_path": "seqcomm.learner.QLearner",
                  "init_args": {"hidden_dim": args.hidden, "mixer_embed_dim": args.mixer_embed,
                                "target_tau": args.tau, "agent_body": args.agent_body}},
    }


def run_seqcomm(args: argparse.Namespace, scenario: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out, cfg = os.path.join(tmp, "result.json"), os.path.join(tmp, "bench.yaml")
        with open(cfg, "w") as f:
            json.dump(seqcomm_config(args, scenario, tmp, out), f)  # JSON is valid YAML
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(REPO), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([sys.executable, "-m", "seqcomm.cli", "fit", "--config", cfg],
                              cwd=REPO, env=env, capture_output=True, text=True)
        if not os.path.exists(out):
            raise RuntimeError(f"seqcomm fit ({scenario}) gave no result:\n{proc.stderr[-3000:]}")
        with open(out) as f:
            return {"pipeline": "seqcomm fit", "scenario": scenario, **json.load(f)}


def run_reference(args: argparse.Namespace, scenario: str) -> dict:
    cmd = [sys.executable, str(REPO / "benchmarks" / "torchrl_qmix_reference.py"), "--json",
           "--scenario", scenario, "--n-agents", str(args.n_agents),
           "--num-envs", str(args.num_envs), "--max-steps", str(args.max_steps),
           "--minibatch", str(args.batch_size * args.max_steps),
           "--buffer-frames", str(args.buffer_chunks * args.max_steps),
           "--updates-per-collect", str(args.updates_per_collect),
           "--hidden", str(args.hidden), "--mixer-embed", str(args.mixer_embed),
           "--tau", str(args.tau), "--warmup-updates", str(args.warmup_updates),
           "--window-updates", str(args.window_updates), "--threads", str(args.threads),
           "--device", args.device, "--seed", str(args.seed)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"reference ({scenario}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def machine(args: argparse.Namespace) -> str:
    import tensordict
    import torch
    import torchrl

    model = platform.processor() or "?"
    if os.path.exists("/proc/cpuinfo"):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                 if line.startswith("model name")]
        model = names[0] if names else model
    return (f"{os.cpu_count()} CPUs ({model}), torch {torch.__version__}, torchrl "
            f"{torchrl.__version__}, tensordict {tensordict.__version__}, lightning "
            f"{L.__version__}, device {args.device}, torch threads {args.threads}")


def split(row: dict, clock: int = 1) -> dict[str, float]:
    """Per-frame / per-update cost of a row in ms (``clock`` 1 = CPU time, 0 = wall time):
    ``collect`` per 1000 frames; per update ``sample`` (replay), ``learner`` (loss, backward,
    clip, optimiser, target update), ``log`` (seqcomm's ``self.log`` calls: the learner's,
    inside ``training_step``, and the logging callbacks', after it) and ``loop`` (Lightning's
    loop around ``training_step``); the plain reference loop has no log or loop."""
    phases, n = row["phases"], row["window_updates"]
    total = row["cpu_s"] if clock else row["wall_s"]
    get = {k: v[clock] for k, v in phases.items()}.get
    collect, sample, log = get("collect", 0.0), get("sample", 0.0), get("log", 0.0)
    inner, outer_log = get("train_step", total), get("log_callbacks", 0.0)
    return {"collect": 1e6 * collect / row["window_frames"], "sample": 1e3 * sample / n,
            "learner": 1e3 * (inner - collect - sample - log) / n,
            "log": 1e3 * (log + outer_log) / n, "loop": 1e3 * (total - inner - outer_log) / n}


def table(rows: list[dict]) -> str:
    head = ("| pipeline | scenario | run | env steps/s | updates/s | env steps/CPU-s "
            "| collect CPU-ms/1k frames | sample CPU-ms/update | learner CPU-ms/update "
            "| log CPU-ms/update | loop CPU-ms/update | load avg |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        c = split(r)
        lines.append(f"| {r['pipeline']} | {r['scenario']} | {r['run']} "
                     f"| {r['env_steps_per_s']:.0f} | {r['updates_per_s']:.2f} "
                     f"| {r['env_steps_per_cpu_s']:.0f} | {c['collect']:.0f} "
                     f"| {c['sample']:.1f} | {c['learner']:.1f} | {c['log']:.1f} | {c['loop']:.1f} "
                     f"| {r['load']:.1f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    p.add_argument("--n-agents", type=int, default=3)
    p.add_argument("--num-envs", type=int, default=32, help="parallel VMAS copies")
    p.add_argument("--max-steps", type=int, default=25,
                   help="episode limit; frames per collection = num_envs x max_steps")
    p.add_argument("--batch-size", type=int, default=32,
                   help="episode chunks per update (the reference samples x max_steps "
                        "transitions)")
    p.add_argument("--buffer-chunks", type=int, default=5000, help="replay capacity in chunks")
    p.add_argument("--updates-per-collect", type=int, default=1)
    p.add_argument("--hidden", type=int, default=64, help="agent width (GRU / MLP cells)")
    p.add_argument("--agent-body", choices=["gru", "mlp"], default="gru",
                   help="seqcomm's agent: recurrent (the default) or feed-forward like the "
                        "reference's (model.init_args.agent_body)")
    p.add_argument("--mixer-embed", type=int, default=32)
    p.add_argument("--tau", type=float, default=0.005, help="target Polyak rate (both)")
    p.add_argument("--warmup-updates", type=int, default=10)
    p.add_argument("--window-updates", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="runs of each pipeline")
    p.add_argument("--compare", action="store_true",
                   help="also run benchmarks/torchrl_qmix_reference.py at equal settings")
    p.add_argument("--json", type=str, default=None, help="also write the rows to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    runners = [run_seqcomm] + ([run_reference] if args.compare else [])
    rows = []
    for scenario in args.scenarios:
        for run in range(1, args.repeats + 1):
            # alternate the order so that drifting machine load hits both pipelines alike
            for runner in runners if run % 2 else runners[::-1]:
                row = {**runner(args, scenario), "run": run, "load": os.getloadavg()[0]}
                rows.append(row)
                print(f"  {row['pipeline']:16s} {scenario:13s} run {run}: "
                      f"{row['env_steps_per_s']:.0f} env steps/s, "
                      f"{row['updates_per_s']:.2f} updates/s", file=sys.stderr)
    rows.sort(key=lambda r: (r["scenario"], r["pipeline"], r["run"]))
    settings = (f"settings: {args.n_agents} agents, {args.num_envs} envs x {args.max_steps} "
                f"steps = {args.num_envs * args.max_steps} frames per collection, "
                f"{args.updates_per_collect} update(s) per collection, batch {args.batch_size} "
                f"chunks = {args.batch_size * args.max_steps} transitions, hidden "
                f"{args.hidden}, seqcomm agent {args.agent_body}, mixer {args.mixer_embed}, tau "
                f"{args.tau}, window "
                f"{args.window_updates} updates after {args.warmup_updates} warm-up")
    print(f"machine: {machine(args)}\n{settings}\n\n{table(rows)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(args), "settings": settings, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
