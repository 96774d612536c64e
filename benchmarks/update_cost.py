"""Cost of one SeqComm-DFL update (docs/method.md §3) against a plain QMIX update, per
world-model gradient, and its growth with the number of agents.

Each row is a fresh ``python benchmarks/update_cost.py --row NAME`` subprocess (so peak memory
is the row's own) that builds the LightningModule and ``EpisodeData`` from the YAML files
exactly as ``seqcomm fit`` does (``SeqcommCLI`` with ``run=False``), collects one batch of
episode chunks (32 environment copies x ``episode_limit`` steps), then runs ``--warmup`` +
``--updates`` updates through ``Trainer.fit``. Only ``training_step`` itself is timed: the
replay sample it draws is taken outside the clock, and no collection, validation or
checkpointing happens among the updates.

Reported per row: median wall and CPU milliseconds per update over the timed updates, their
ratio to QMIX (CPU time on CPU: steadier on a shared machine; wall time on CUDA), and the
peak memory of the updates: on CPU the growth of the process's peak resident set (VmHWM,
reset through /proc/self/clear_refs just before the first update) over its size at that
moment; on CUDA ``torch.cuda.max_memory_allocated`` over the allocation at that moment.

    python benchmarks/update_cost.py                      # every row, CPU, one thread
    python benchmarks/update_cost.py --rows qmix cg5 --updates 20
    python benchmarks/update_cost.py --device cuda --json cost.json
    python benchmarks/update_cost.py --rows none cg5 --breakdown 12   # where the time goes

``--breakdown K`` runs the timed updates under ``cProfile`` and lists, per row, the K functions
of the ``seqcomm`` package with the most cumulative time per update (nested: a function's time
holds its callees') and their share of ``training_step``; the profiler inflates every time, so
read the shares, and take the table's milliseconds from a run without it.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import platform
import pstats
import re
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOSPITAL, METHOD = "conf/hospital.yaml", "conf/methods/seqcomm_dfl.yaml"
RGMCOMM, QSTAR = "conf/methods/rgmcomm.yaml", "conf/methods/rgmcomm_qstar.yaml"
NO_MAP = ["--model.init_args.label_map=false"]  # no labels.json / labels.png in the cwd
MAPS = ("3m", "8m", "27m_vs_30m")
BATCH = 32  # episode chunks per update (PyMARL's 32 episodes)


def _dfl(*overrides: str) -> list[str]:
    return [f"--model.init_args.{o}" for o in overrides]


CG5 = _dfl("world_model_gradient=implicit", "implicit.init_args.solver=cg",
           "implicit.init_args.iters=5")
K2 = _dfl("counterfactual_senders=2")  # counterfactual passes for 2 sampled senders
R2 = _dfl("counterfactual_receivers=2")  # the critic's switch values for 2 sampled receivers
GP0 = _dfl("lambda_gp=0")  # no guidance-potential regression (nothing reads it: fixed order)
#: name -> (group, description, config files, overrides)
ROWS: dict[str, tuple[str, str, list[str], list[str]]] = {
    "qmix": ("hospital", "QMIX, no communication (QLearner)", [HOSPITAL], []),
    "none": ("hospital", "SeqComm-DFL, world_model_gradient none", [HOSPITAL, METHOD],
             _dfl("world_model_gradient=none")),
    "identity": ("hospital", "SeqComm-DFL, implicit identity", [HOSPITAL, METHOD],
                 _dfl("world_model_gradient=implicit", "implicit.init_args.solver=identity")),
    "cg5": ("hospital", "SeqComm-DFL, implicit cg 5", [HOSPITAL, METHOD], CG5),
    "cg5gp0": ("hospital", "SeqComm-DFL, implicit cg 5, lambda_gp 0", [HOSPITAL, METHOD],
               [*CG5, *GP0]),
    "nonegp0": ("hospital", "SeqComm-DFL, world_model_gradient none, lambda_gp 0",
                [HOSPITAL, METHOD], [*_dfl("world_model_gradient=none"), *GP0]),
    "cg20": ("hospital", "SeqComm-DFL, implicit cg 20", [HOSPITAL, METHOD],
             _dfl("world_model_gradient=implicit", "implicit.init_args.solver=cg",
                  "implicit.init_args.iters=20")),
    "cg5k2": ("hospital", "SeqComm-DFL, implicit cg 5, 2 counterfactual senders",
              [HOSPITAL, METHOD], [*CG5, *K2]),
    "cg5k2r2": ("hospital", "SeqComm-DFL, implicit cg 5, 2 senders, 2 receivers",
                [HOSPITAL, METHOD], [*CG5, *K2, *R2]),
    "cg5_all": ("hospital", "SeqComm-DFL, implicit cg 5, w = all value parameters",
                [HOSPITAL, METHOD], [*CG5, *_dfl("implicit_params=all")]),
    "unrolled5": ("hospital", "SeqComm-DFL, unrolled k_inner 5", [HOSPITAL, METHOD],
                  _dfl("world_model_gradient=unrolled", "k_inner=5")),
    "td_steps": ("hospital", "SeqComm-DFL, its TD steps alone (dfl_every huge)",
                 [HOSPITAL, METHOD], [*CG5, *_dfl(f"dfl_every={10**9}")]),
    "rgmcomm": ("hospital", "RGMComm, its method file", [HOSPITAL, RGMCOMM], NO_MAP),
    "rgmcomm_qstar": ("hospital", "RGMComm with rgmcomm_qstar.yaml (the Q* critic)",
                      [HOSPITAL, RGMCOMM, QSTAR], NO_MAP),
}
for _k in (4, 8):  # the decision-focused update on every k-th: the mean over whole cycles
    ROWS[f"cg5e{_k}"] = ("hospital", f"SeqComm-DFL, implicit cg 5, dfl_every {_k}",
                         [HOSPITAL, METHOD], [*CG5, *_dfl(f"dfl_every={_k}")])
for _map in MAPS:
    _conf = f"conf/microcombat_{_map}.yaml"
    ROWS[f"qmix_{_map}"] = ("agents", f"QMIX, microcombat {_map}", [_conf], [])
    ROWS[f"cg5_{_map}"] = ("agents", f"SeqComm-DFL implicit cg 5, microcombat {_map}",
                           [_conf, METHOD], CG5)
    ROWS[f"cg5k2_{_map}"] = ("agents", f"SeqComm-DFL implicit cg 5, 2 counterfactual senders, "
                             f"microcombat {_map}", [_conf, METHOD], [*CG5, *K2])
    ROWS[f"cg5k2r2_{_map}"] = ("agents", f"SeqComm-DFL implicit cg 5, 2 senders, 2 receivers, "
                               f"microcombat {_map}", [_conf, METHOD], [*CG5, *K2, *R2])
ROWS["rgm_3m"] = ("agents", "RGMComm, microcombat 3m", ["conf/microcombat_3m.yaml", RGMCOMM],
                  NO_MAP)
ROWS["rgmq_3m"] = ("agents", "RGMComm with rgmcomm_qstar.yaml, microcombat 3m",
                   ["conf/microcombat_3m.yaml", RGMCOMM, QSTAR], NO_MAP)


# -- one row, in its own process -------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(found.group(1)) if found else None


def _meminfo_kib(field: str) -> int | None:
    try:
        found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    except OSError:
        return None
    return int(found.group(1)) if found else None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_row(name: str, args: argparse.Namespace) -> dict:
    """Build the row's module and data as ``seqcomm fit`` does and time its updates."""
    import torch

    from seqcomm.cli import SeqcommCLI
    from seqcomm.data import EpisodeData
    from seqcomm.learner import QLearner

    group, _, files, overrides = ROWS[name]
    cuda = args.device == "cuda"
    if args.max_memory_gib:  # fail with an allocation error, not the machine's OOM killer
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = (_status_kib("VmSize") or 0) * 1024 + int(args.max_memory_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    limit = ([f"--data.env.init_args.episode_limit={args.scaling_limit}"]
             if group == "agents" and args.scaling_limit else [])
    cli_args = [
        *[a for f in files for a in ("--config", str(REPO / f))], *overrides, *limit,
        f"--threads={args.threads}", "--wandb=false", f"--data.device={args.device}",
        f"--data.num_envs={BATCH}", f"--data.batch_size={BATCH}",
        f"--data.buffer_size={BATCH}", f"--data.warmup_chunks={BATCH}",
        f"--data.updates_per_collect={args.warmup + args.updates}", "--data.total_frames=1",
        "--data.eval_envs=1", "--data.eval_episodes=1",
        f"--trainer.accelerator={'gpu' if cuda else 'cpu'}", "--trainer.devices=1",
    ]
    cli = SeqcommCLI(
        QLearner, EpisodeData, subclass_mode_model=True, run=False,
        save_config_callback=None, auto_configure_optimizers=False, args=cli_args,
        parser_kwargs={"parser_mode": "omegaconf"},
        trainer_defaults={"logger": False, "enable_checkpointing": False,
                          "enable_progress_bar": False, "enable_model_summary": False,
                          "max_epochs": 1, "limit_val_batches": 0,
                          "num_sanity_val_steps": 0, "log_every_n_steps": 10**9},
    )
    model, data = cli.model, cli.datamodule
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    wall: list[float] = []
    cpu: list[float] = []
    memory: dict[str, float] = {}
    step = model.training_step
    profiler = cProfile.Profile() if args.breakdown else None

    def training_step(self, dataloader_iter) -> None:  # Lightning looks for this signature
        item = next(dataloader_iter)  # replay sample, outside the clock
        if not wall:  # just before the first update: the memory baseline
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                memory["start"] = torch.cuda.memory_allocated()
            else:
                memory["reset"] = float(_reset_peak_rss())
                memory["start"] = (_status_kib("VmRSS") or 0) * 1024
                memory["ru_start"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        profiled = profiler is not None and len(wall) >= args.warmup
        if profiled:
            profiler.enable()
        step(iter([item]))
        sync()
        if profiled:
            profiler.disable()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)

    model.training_step = types.MethodType(training_step, model)
    cli.trainer.fit(model, datamodule=data)
    if len(wall) != args.warmup + args.updates:
        raise RuntimeError(f"{len(wall)} updates ran, expected {args.warmup + args.updates}")
    if cuda:
        peak = torch.cuda.max_memory_allocated() - memory["start"]
    elif memory["reset"]:
        peak = (_status_kib("VmHWM") or 0) * 1024 - memory["start"]
    else:  # lifetime peak: only meaningful when the updates set it
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - memory["ru_start"]
    info = model.info
    timed = slice(args.warmup, None)
    every = model.hparams.get("dfl_every", 1)
    if 1 < every <= args.updates:  # decision-focused update + (every - 1) TD steps: whole cycles
        whole = args.warmup + args.updates - (args.updates // every) * every
        wall, cpu, timed = wall[whole:], cpu[whole:], slice(None)
        summarise = statistics.fmean  # a cycle's mean, not its typical (TD) step
    else:
        summarise = statistics.median
    return {
        "row": name, "group": group, "n_agents": info.n_agents, "obs_dim": info.obs_dim,
        "state_dim": info.state_dim, "n_actions": info.n_actions,
        "steps": data.info.episode_limit, "batch": BATCH,
        "wall_ms": 1e3 * summarise(wall[timed]),
        "cpu_ms": 1e3 * summarise(cpu[timed]),
        "wall_ms_min": 1e3 * min(wall[timed]), "peak_mib": peak / 2**20,
        "updates": args.updates,
        **({"breakdown": breakdown(profiler, args)} if profiler else {}),
    }


def breakdown(profiler: cProfile.Profile, args: argparse.Namespace) -> list[list]:
    """``[function, ms per update, share of training_step]`` of the ``args.breakdown``
    package functions with the most cumulative time (``training_step`` first)."""
    package = str(REPO / "seqcomm")
    rows = [(f"{Path(file).stem}.{name}", cumulative)
            for (file, _, name), (_, _, _, cumulative, _) in pstats.Stats(profiler).stats.items()
            if file.startswith(package)]
    rows.sort(key=lambda r: -r[1])
    total = max((t for name, t in rows if name.endswith(".training_step")), default=rows[0][1])
    return [[name, 1e3 * t / args.updates, t / total] for name, t in rows[: args.breakdown + 1]]


# -- the table ------------------------------------------------------------------------------
def machine(args: argparse.Namespace) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = names[0] if names else cpu
    except OSError:
        pass
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} logical CPUs, load average (1 min) {load:.2f}; "
            f"device {device}; torch {torch.__version__}; {args.threads} torch thread(s); "
            f"Python {platform.python_version()}")


def run_rows(args: argparse.Namespace) -> list[dict]:
    results = []
    for name in args.rows:
        cmd = [sys.executable, __file__, "--row", name, "--updates", str(args.updates),
               "--warmup", str(args.warmup), "--device", args.device, "--threads",
               str(args.threads), "--scaling-limit", str(args.scaling_limit),
               "--max-memory-gib", str(args.max_memory_gib), "--breakdown", str(args.breakdown)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        rows = [line[4:] for line in proc.stdout.splitlines() if line.startswith("ROW ")]
        if proc.returncode != 0 or not rows:
            errors = [ln.strip() for ln in proc.stderr.splitlines() if "Error" in ln]
            error = (errors[-1] if errors else f"exit status {proc.returncode}"
                     + (" (killed: out of memory?)" if proc.returncode < 0 else ""))
            results.append({"row": name, "group": ROWS[name][0], "error": error})
        else:
            results.append(json.loads(rows[-1]))
        print(f"  {name}: " + (f"{results[-1]['cpu_ms']:.1f} ms" if "cpu_ms" in results[-1]
                               else results[-1]["error"]), file=sys.stderr, flush=True)
    return results


def table(results: list[dict], args: argparse.Namespace) -> str:
    key = "wall_ms" if args.device == "cuda" else "cpu_ms"
    by_name = {r["row"]: r for r in results if "error" not in r}
    lines = ["| group | row | agents | batch | wall ms/update | CPU ms/update | "
             f"x QMIX ({'wall' if key == 'wall_ms' else 'CPU'}) | peak MiB |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in results:
        desc = ROWS[r["row"]][1]
        if "error" in r:
            lines.append(f"| {r['group']} | {desc} | | | failed: {r['error'][:120]} | | | |")
            continue
        base = "qmix" if r["group"] == "hospital" else f"qmix_{r['row'].split('_', 1)[1]}"
        ref = by_name.get(base)
        ratio = f"{r[key] / ref[key]:.2f}" if ref else ""
        lines.append(f"| {r['group']} | {desc} | {r['n_agents']} | {r['batch']} x {r['steps']} | "
                     f"{r['wall_ms']:.1f} | {r['cpu_ms']:.1f} | {ratio} | {r['peak_mib']:.1f} |")
    return "\n".join(lines)


def breakdown_table(results: list[dict]) -> str:
    lines = ["| row | function (cumulative) | ms/update | share of the update |",
             "| --- | --- | ---: | ---: |"]
    for r in results:
        for name, ms, share in r.get("breakdown", []):
            lines.append(f"| {r['row']} | `{name}` | {ms:.1f} | {share:.0%} |")
    return "\n".join(lines)


def verdicts(results: list[dict], args: argparse.Namespace) -> list[str]:
    """The issue's targets, as measured: cg 5 <= 2.5x QMIX; growth at most n^1.1."""
    key = "wall_ms" if args.device == "cuda" else "cpu_ms"
    by_name = {r["row"]: r for r in results if "error" not in r}
    out = []
    for row in ("cg5", "cg5gp0", "cg5k2", "cg5k2r2", "cg5e4", "cg5e8"):
        if row in by_name and "qmix" in by_name:
            ratio = by_name[row][key] / by_name["qmix"][key]
            out.append(f"- {ROWS[row][1]} / QMIX on hospital: {ratio:.2f}x (target <= 2.5x: "
                       f"{'holds' if ratio <= 2.5 else 'does not hold'})")
    for prefix in ("cg5", "cg5k2", "cg5k2r2", "qmix"):
        pts = [(by_name[f"{prefix}_{m}"]["n_agents"], by_name[f"{prefix}_{m}"][key])
               for m in MAPS if f"{prefix}_{m}" in by_name]
        if len(pts) >= 2:
            xs, ys = [math.log(n) for n, _ in pts], [math.log(t) for _, t in pts]
            mx, my = statistics.fmean(xs), statistics.fmean(ys)
            slope = (sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
                     / sum((x - mx) ** 2 for x in xs))
            (n0, t0), (n1, t1) = pts[0], pts[-1]
            label = {"cg5": "SeqComm-DFL cg 5", "cg5k2": "SeqComm-DFL cg 5, 2 senders",
                     "cg5k2r2": "SeqComm-DFL cg 5, 2 senders, 2 receivers",
                     "qmix": "QMIX"}[prefix]
            verdict = "holds" if slope <= 1.1 else "does not hold"
            out.append(f"- {label} on microcombat: time grows x{t1 / t0:.1f} from {n0} to "
                       f"{n1} agents (x{n1 / n0:.1f} agents); fitted exponent t ~ n^{slope:.2f}"
                       + (f" (target: at most n^1.1: {verdict})" if prefix != "qmix" else ""))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--updates", type=int, default=10, help="timed updates per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates first")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--scaling-limit", type=int, default=60,
                        help="episode_limit of every microcombat map in the agent-scaling "
                             "rows, so only the team size changes (0: each map's own)")
    parser.add_argument("--max-memory-gib", type=float, default=None,
                        help="address-space limit of each row's process beyond its size at "
                             "start (default: half the memory available now; 0: none)")
    parser.add_argument("--json", help="also write the raw rows to this file")
    parser.add_argument("--breakdown", type=int, default=0, metavar="K",
                        help="profile the timed updates and list each row's K costliest "
                             "package functions (cumulative; inflated times, read the shares)")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: one row, this process
    args = parser.parse_args()
    if (args.updates < 1 or args.warmup < 1 or args.threads < 1 or args.scaling_limit < 0
            or args.breakdown < 0):
        parser.error("--updates, --warmup and --threads must be >= 1, --scaling-limit and "
                     "--breakdown >= 0")
    if args.row:
        try:
            row = measure_row(args.row, args)
        except (MemoryError, RuntimeError) as err:  # torch's allocators raise RuntimeError
            if not isinstance(err, MemoryError) and "memory" not in str(err):
                raise
            row = {"row": args.row, "group": ROWS[args.row][0],
                   "error": f"out of memory (limit {args.max_memory_gib:.1f} GiB)"}
        print("ROW " + json.dumps(row), flush=True)
        return
    if args.max_memory_gib is None:
        available = _meminfo_kib("MemAvailable")
        args.max_memory_gib = 0.5 * available / 2**20 if available else 0.0
    results = run_rows(args)
    print(f"Machine: {machine(args)}\n")
    limit = (f"episode_limit {args.scaling_limit} on every map" if args.scaling_limit
             else "each map's own episode_limit")
    print(f"Batch: {BATCH} episode chunks x episode_limit steps per update (hospital: 25 "
          f"steps; microcombat: {limit}); median of {args.updates} timed updates after "
          f"{args.warmup} warm-up updates (dfl_every k rows: the mean over the last whole "
          "k-update cycles); peak = "
          + ("max_memory_allocated growth" if args.device == "cuda" else "peak RSS growth")
          + " over the updates.\n")
    print(table(results, args))
    print()
    print("\n".join(verdicts(results, args)))
    if args.breakdown:
        print("\nUnder cProfile (times inflated; read the shares):\n")
        print(breakdown_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(args), "rows": results},
                                              indent=2))


if __name__ == "__main__":
    main()
