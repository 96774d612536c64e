"""Every ablation YAML on every task, the method on every task and each baseline method file
(docs/method.md §4), through ``seqcomm fit`` in this process.

Parsing (``--print_config``) covers every task x ablation; a few training updates cover every
ablation on a short hospital, the default method on each trainable task and every baseline
in conf/methods/ on the matrix game. Each run checks that its losses are finite, that a
summary.json appears and that its switch changed what the learner does (the metrics it logs).
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, latest_version, read_metrics, read_summary
from omegaconf import OmegaConf

from seqcomm.cli import main
from seqcomm.envs.base import env_info
from seqcomm.envs.smacv2 import missing_requirements

METHOD = ROOT / "conf" / "methods" / "seqcomm_dfl.yaml"
ABLATIONS = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("ablations/*/*.yaml"))
TASKS = ["matrix", "maze", "hospital", "microcombat_3m", "smac_3m", "vmas_spread"]
TRAINABLE = [t for t in TASKS if t != "smac_3m"]  # StarCraft II is not installed here
# shorter episodes (same observation, state and action sizes) keep each run to ~1-2 s
SHORT = {
    "hospital": ["--data.env.init_args.episode_limit=5"],
    "microcombat_3m": ["--data.env.init_args.episode_limit=10"],
    "vmas_spread": ["--data.env.init_args.max_steps=5"],
}
UPDATES = 3  # one collection of 4 chunks, then 3 updates of 4 chunks
TINY = [
    "--data.num_envs=4", "--data.batch_size=4", "--data.warmup_chunks=4",
    "--data.buffer_size=8", f"--data.updates_per_collect={UPDATES}", "--data.total_frames=1",
    "--data.eval_envs=2", "--data.eval_episodes=2", "--trainer.val_check_interval=2",
    "--trainer.log_every_n_steps=1",
]


def task(name: str) -> str:
    return str(ROOT / "conf" / f"{name}.yaml")


def stack(*files: str | Path) -> list[str]:
    return [arg for f in files for arg in ("--config", str(ROOT / f))]


# -- parsing ------------------------------------------------------------------------------
def resolve(class_path: str):
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def assert_contains(printed, expected, where: str = "") -> None:
    """Every leaf of ``expected`` has the same value in ``printed`` (class paths compared by
    the class they name: jsonargparse prints the shortest import path)."""
    if isinstance(expected, dict):
        assert isinstance(printed, dict), f"{where}: {printed!r} is not a mapping"
        for key, value in expected.items():
            assert key in printed, f"{where}.{key} missing from the printed config"
            assert_contains(printed[key], value, f"{where}.{key}")
    elif where.endswith("class_path"):
        assert resolve(printed) is resolve(expected), f"{where}: {printed} != {expected}"
    else:
        assert printed == expected, f"{where}: {printed!r} != {expected!r}"


def merge_stacked(base, new):
    """``new`` stacked on ``base`` as LightningCLI does: mappings merge key by key, except a
    component whose ``class_path`` names another class, which starts from its own arguments."""
    if not (isinstance(base, dict) and isinstance(new, dict)):
        return new
    if "class_path" in new and "class_path" in base and \
            resolve(new["class_path"]) is not resolve(base["class_path"]):
        return new
    return {**base, **{k: merge_stacked(base.get(k), v) for k, v in new.items()}}


def stacked_config(files, *extra: dict) -> dict:
    """The config ``--config f1 --config f2 ...`` should resolve to (``extra``: overrides)."""
    merged = {}
    for part in [OmegaConf.to_container(OmegaConf.load(f)) for f in files] + list(extra):
        merged = merge_stacked(merged, part)
    return merged


#: every ablation file once, the tasks in turn (every task with three or more files): the
#: merge is the same for every task, and every ablation also trains on hospital (below)
PRINTED = [(TASKS[i % len(TASKS)], a) for i, a in enumerate(ABLATIONS)]


@pytest.mark.parametrize(("task_name", "ablation"), PRINTED)
def test_print_config_composes_task_method_and_ablation(task_name, ablation, capsys):
    """Task, then method, then ablation: the last file wins and nothing else is lost."""
    files = [task(task_name), METHOD, ROOT / ablation]
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *stack(*files), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert_contains(printed, stacked_config(files))
    assert resolve(printed["model"]["class_path"]).__name__ == "SeqCommDFL"


# -- training -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fit(tmp_path_factory):
    """``fit(*config_files, *overrides)``: a few updates of ``seqcomm fit``; returns the run's
    version directory (each distinct argument list runs once per module)."""
    runs: dict[tuple[str, ...], Path] = {}

    def run(*args: str) -> Path:
        if args not in runs:
            root = tmp_path_factory.mktemp("fit")
            main(["fit", *args, *TINY, "--wandb", "false", "--trainer.enable_progress_bar",
                  "false", "--trainer.default_root_dir", str(root), "--run_name", "run"])
            runs[args] = latest_version(root, "run")
        return runs[args]

    return run


def check_run(run: Path) -> tuple[dict[str, dict[int, float]], dict, dict]:
    """Metrics, summary and resolved config of a finished run; asserts what every run owes."""
    metrics, summary = read_metrics(run), read_summary(run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert "loss/td" in metrics and "eval/return" in metrics
    for key, series in metrics.items():
        if key.startswith(("loss/", "dfl/", "comm/")):
            assert all(math.isfinite(v) for v in series.values()), f"{key}: {series}"
    assert math.isfinite(summary["eval"]["return"])
    assert summary["episodes"] == 2
    return metrics, summary, config


def values(metrics: dict, key: str) -> list[float]:
    return list(metrics.get(key, {}).values())


def msg_args(config: dict) -> dict:
    return config["model"]["init_args"]["comm"]["init_args"]


def n_agents(config: dict) -> int:
    """Agents of the run's environment, built from its resolved config."""
    env = config["data"]["env"]
    module, name = env["class_path"].rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    return env_info(cls(num_envs=1, seed=0, device="cpu", **env.get("init_args", {}))).n_agents


def bits(config: dict, n: int = 3) -> float:
    """SeqCommMessenger's documented count with n agents: the base message, the refined
    message of n-1 of the n speakers (the last one's is heard by nobody), + 32 bits of
    guidance potential when the order is prosocial; with ``base_message: hidden`` the base
    round's 32-bit hidden state replaces the base message, which only the refinement of the
    first n-2 speakers reads."""
    comm = msg_args(config)
    hidden = comm.get("base_message", "encoded") == "hidden"
    base = 1.0 if comm.get("base_round", True) and not hidden else (n - 2) / n
    per_message = (math.log2(comm["n_labels"]) if comm["message"] == "discrete"
                   else 32.0 * comm["msg_dim"])
    shared = 32.0 * config["model"]["init_args"]["hidden_dim"] if hidden else 0.0
    return ((base + 1 - 1 / n) * per_message + shared
            + (32.0 if comm["ordering"] == "prosocial" else 0.0))


def gradient_switch(name: str):
    def check(metrics, config):
        hp = config["model"]["init_args"]
        assert hp["world_model_gradient"] == name.split("_")[0]
        if name == "none":  # model-free: no world model, no outer step
            assert not [k for k in metrics if k.startswith("dfl/") or k == "loss/model_mle"]
            assert set(values(metrics, "loss/model_td")) == {0.0}
            return
        assert min(values(metrics, "dfl/outer_grad_norm")) > 0  # theta gets a gradient
        assert min(values(metrics, "loss/model_td")) > 0  # w learns from imagined steps
        assert min(values(metrics, "loss/model_mle")) > 0
        assert min(values(metrics, "dfl/target_error")) > 0  # the imagined-target read-out
        assert ("dfl/cg_residual" in metrics) == name.startswith("implicit")
        if name.startswith("implicit"):
            assert hp["implicit"]["init_args"]["solver"] == name.split("_")[1]
        if name in ("implicit_minres", "implicit_cg"):
            # MINRES on the indefinite Hessian, CG on the PSD Gauss-Newton matrix: both use
            # more than one iteration (CG on the exact Hessian stopped after one)
            assert min(values(metrics, "dfl/cg_iters")) > 1
            assert hp["implicit"]["init_args"]["curvature"] == (
                "hessian" if name == "implicit_minres" else "gauss_newton")
    return check


def messages_switch(name: str):
    def check(metrics, config):
        args = msg_args(config)
        assert args["message"] == ("continuous" if name == "norm_bound" else name)
        assert args["bound"] == ("norm" if name == "norm_bound" else "tanh")
        logged = values(metrics, "comm/bits_per_step")
        assert logged == pytest.approx([bits(config)] * len(logged)) and logged
        mi = values(metrics, "loss/mi")  # label information: discrete labels only
        assert (min(mi) < 0) if name == "discrete" else set(mi) == {0.0}
        at_bound = values(metrics, "comm/messages_at_bound")
        if name == "discrete":
            assert set(at_bound) == {0.0}
        else:  # a share; a fresh encoder's messages are inside their bound
            assert at_bound and all(0 <= v < 0.5 for v in at_bound)
    return check


def ordering_switch(name: str):
    def check(metrics, config):
        assert msg_args(config)["ordering"] == name
        logged = values(metrics, "comm/bits_per_step")
        assert logged == pytest.approx([bits(config)] * len(logged)) and logged
        entropy = values(metrics, "comm/order_entropy")
        if name == "fixed":  # one leader everywhere
            assert set(entropy) == {0.0}
        elif name == "random":  # every agent leads some steps
            assert min(entropy) > 0
        # psi regresses on guidance potential where the order reads it: the method file
        # turns the regression off, the prosocial file back on
        gp = values(metrics, "loss/gp")
        if name == "prosocial":
            assert config["model"]["init_args"]["lambda_gp"] > 0 and min(gp) > 0
        else:
            assert config["model"]["init_args"]["lambda_gp"] == 0 and set(gp) == {0.0}
    return check


def value_aware_switch(name: str):
    def check(metrics, config):
        on = name == "on"
        assert config["model"]["init_args"]["value_aware"] is on
        recon, va, inf = (values(metrics, k) for k in ("loss/recon", "loss/va", "loss/inf"))
        if on:
            assert set(recon) == {0.0} and any(v != 0 for v in va + inf)
        else:  # messages reconstruct the sender's observation instead
            assert min(recon) > 0 and set(va) == set(inf) == {0.0}
    return check


def evaluator_switch(name: str):
    def check(metrics, config):
        critic = resolve(config["model"]["init_args"]["critic"]["class_path"])
        assert critic.__name__ == {"joint": "TeamCritic", "factored": "FactoredCritic"}[name]
        assert min(values(metrics, "loss/critic")) > 0  # the evaluator regresses
    return check


def confidence_switch(name: str):
    def check(metrics, config):
        weight = values(metrics, "comm/va_confidence")
        assert config["model"]["init_args"]["va_confidence"] is (name == "on") and weight
        if name == "on":  # a fresh critic's error dwarfs its spread: a weight well below 1
            assert all(0 < w < 0.9 for w in weight), weight
        else:
            assert set(weight) == {1.0}
    return check


def receiver_state_switch(name: str):
    def check(metrics, config):
        weight = config["model"]["init_args"]["lambda_state"]
        state = values(metrics, "loss/state")
        assert state and weight == (1.0 if name == "on" else 0.0)
        if name == "on":  # the receivers' unexplained share of the state's variance
            assert all(v > 0 for v in state)
        else:
            assert set(state) == {0.0}
    return check


def channel_switch(name: str):
    def check(metrics, config):
        cls = config["model"]["init_args"]["comm"]["class_path"].rsplit(".", 1)[-1]
        bits = values(metrics, "comm/bits_per_step")
        assert cls == {"sequential": "SeqCommMessenger", "broadcast": "CommNet"}[name]
        # CommNet broadcasts the 64-d hidden state in 32-bit floats; the messenger's base round
        # the same, and its followers also hear 16-d refined messages
        assert bits and (set(bits) == {32.0 * 64} if name == "broadcast" else min(bits) > 32 * 64)
        assert values(metrics, "loss/va"), "the value-aware loss did not run"
    return check


def refinement_switch(name: str):
    def check(metrics, config):
        args = msg_args(config)
        assert args["refinement"] is (name != "off")
        assert args["refinement_gate"] is (name == "gate")
        assert args["refinement_dropout"] == (0.2 if name == "dropout" else 0.0)
        logged = values(metrics, "comm/bits_per_step")
        # without the refinement the receivers hear the base round's hidden states alone
        hidden = 32.0 * config["model"]["init_args"]["hidden_dim"]
        assert logged and set(logged) == {hidden if name == "off" else bits(config)}
        assert name == "off" or bits(config) > hidden
        assert values(metrics, "loss/va"), "the value-aware loss did not run"
    return check


def base_pool_switch(name: str):
    def check(metrics, config):
        args = msg_args(config)  # the context's width per pool: tests/test_seqcomm_messenger.py
        attends = name.startswith("attention")  # unpooled states (pool: mean unused)
        assert args["base_pool"] == ("mean" if attends else name)
        assert args["base_attention"] is attends
        assert args["base_attention_detach"] is (name == "attention_detached")
        assert args["base_query_zero_init"] is (name == "attention_from_mean")
        assert args["base_message"] == "hidden"
        logged = values(metrics, "comm/bits_per_step")  # the same states broadcast either way
        assert logged and set(logged) == {bits(config)}
        assert values(metrics, "loss/va"), "the value-aware loss did not run"
    return check


def imagined_switch(name: str):
    def check(metrics, config):
        assert config["model"]["init_args"]["imagined_actions"] == name
        taken = values(metrics, "dfl/imagined_taken")  # share of rows at the replay's action
        assert taken and min(values(metrics, "loss/model_td")) > 0
        if name == "taken":
            assert set(taken) == {1.0}
        else:  # early, near-random collection: some imagined joint actions differ
            assert all(0 <= v <= 1 for v in taken) and min(taken) < 1
    return check


def hypergradient_switch(name: str):
    def check(metrics, config):
        hp = config["model"]["init_args"]
        assert hp["hypergradient_ratio"] == (0.0 if name == "clip" else 0.1)
        assert hp["hypergradient_per_tensor"] is (name == "per_tensor")
        kept = values(metrics, "dfl/hypergradient_kept")  # share of the hypergradient's norm
        assert kept and all(0 < v <= 1 + 1e-6 for v in kept)
        if name == "per_tensor":  # some tensors' hypergradient outgrows their own anchor
            assert max(kept) < 1
    return check


SWITCHES = {"gradient": gradient_switch, "messages": messages_switch,
            "ordering": ordering_switch, "value_aware": value_aware_switch,
            "evaluator": evaluator_switch, "confidence": confidence_switch,
            "receiver_state": receiver_state_switch, "channel": channel_switch,
            "refinement": refinement_switch, "base_pool": base_pool_switch,
            "imagined": imagined_switch, "hypergradient": hypergradient_switch}


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_ablation_trains_on_hospital_and_its_switch_takes_effect(ablation, fit):
    run = fit(*stack(task("hospital"), METHOD, ablation), *SHORT["hospital"])
    metrics, summary, config = check_run(run)
    assert summary["env_steps"] == 4 * 5  # one collection: 4 copies x 5 steps
    switch, value = Path(ablation).parent.name, Path(ablation).stem
    SWITCHES[switch](value)(metrics, config)


def test_world_model_gradients_differ_on_the_same_first_update(fit):
    """Same seed, batch and initial networks (equal first TD loss and prediction loss):
    each world-model gradient gives theta a different first step."""
    first: dict[str, dict[str, float]] = {}
    for name in ("implicit_minres", "implicit_cg", "implicit_neumann", "implicit_identity",
                 "unrolled", "mle"):
        run = fit(*stack(task("hospital"), METHOD, f"ablations/gradient/{name}.yaml"),
                  *SHORT["hospital"])
        metrics = read_metrics(run)
        first[name] = {k: v[min(v)] for k, v in metrics.items()
                       if k in ("loss/td", "loss/model_mle", "dfl/outer_grad_norm")}
    for key in ("loss/td", "loss/model_mle"):
        assert len({round(f[key], 4) for f in first.values()}) == 1, (key, first)
    norms = [f["dfl/outer_grad_norm"] for f in first.values()]
    assert len(set(norms)) == len(norms), first


@pytest.mark.parametrize("task_name", TRAINABLE)
def test_method_trains_on_every_task(task_name, fit):
    run = fit(*stack(task(task_name), METHOD), *SHORT.get(task_name, []))
    metrics, _, config = check_run(run)
    logged = values(metrics, "comm/bits_per_step")
    n = n_agents(config)
    assert logged == pytest.approx([bits(config, n)] * len(logged)) and logged
    assert "dfl/outer_grad_norm" in metrics
    # MINRES spends its iteration budget and leaves less than v = 0's residual (1.0)
    assert min(values(metrics, "dfl/cg_iters")) > 1
    assert max(values(metrics, "dfl/cg_residual")) < 1.0


def test_method_counts_one_update_per_training_step(fit):
    run = fit(*stack(task("hospital"), METHOD), *SHORT["hospital"])
    assert read_summary(run)["updates"] == UPDATES


def test_method_on_starcraft_without_starcraft_exits_2(tmp_path, capfd):
    if not missing_requirements():
        pytest.skip("StarCraft II is installed: the real run is tests/test_smacv2.py's")
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *stack(task("smac_3m"), METHOD), "--wandb", "false",
              "--trainer.default_root_dir", str(tmp_path / "runs")])
    assert exit_.value.code == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("seqcomm: error: ") and "needs StarCraft II" in lines[0]
    assert "conf/microcombat_3m.yaml" in lines[0]  # the way out
    assert not (tmp_path / "runs").exists()


# -- baselines ------------------------------------------------------------------------------
BASELINES = {  # method file(s) stacked on the matrix game -> comm/bits_per_step it must log
    "qmix": (["conf/methods/qmix.yaml"], lambda c: 0.0),
    "full_obs": (["conf/methods/full_obs.yaml"], lambda c: 0.0),
    "commnet": (["conf/methods/commnet.yaml"],
                lambda c: 32.0 * c["model"]["init_args"]["hidden_dim"]),
    "tarmac": (["conf/methods/tarmac.yaml"],
               lambda c: 32.0 * (msg_args(c)["key_dim"] + msg_args(c)["value_dim"])),
    "omd": (["conf/methods/omd.yaml"], lambda c: 0.0),
    "rgmcomm": (["conf/methods/rgmcomm.yaml"], lambda c: math.log2(msg_args(c)["n_labels"])),
    "rgmcomm_qstar": (["conf/methods/rgmcomm.yaml", "conf/methods/rgmcomm_qstar.yaml"],
                      lambda c: math.log2(msg_args(c)["n_labels"])),
    "rgmcomm_return_gap": (["conf/methods/rgmcomm.yaml", "conf/methods/rgmcomm_return_gap.yaml"],
                           lambda c: math.log2(msg_args(c)["n_labels"])),
    # hidden-state message + intention value (floats), and the leader's action: 1 of 2 agents
    # sends log2 2 bits on the matrix game
    "seqcomm": (["conf/methods/seqcomm.yaml"],
                lambda c: 32.0 * (msg_args(c)["msg_dim"] + 1) + 0.5),
    "seqcomm_dfl_1bit": ([METHOD, "conf/methods/seqcomm_dfl_1bit.yaml"],
                         lambda c: bits(c, n=2)),
}


@pytest.mark.parametrize("name", list(BASELINES))
def test_baseline_trains_on_matrix(name, fit):
    files, expected_bits = BASELINES[name]
    metrics, summary, config = check_run(fit(*stack(task("matrix"), *files)))
    assert summary["env_steps"] == 4  # one collection of the one-step game
    assert set(values(metrics, "comm/bits_per_step")) == {expected_bits(config)}
    hp = config["model"]["init_args"]
    if name == "full_obs":
        assert hp["full_obs"] is True
    if name == "omd":  # the world model without messages
        assert hp["comm"] is None and "dfl/cg_residual" in metrics
    if name == "rgmcomm_qstar":  # the setting reaches the learner: Q*'s own target critic
        assert (hp["critic_target"], hp["cluster_until"]) == ("optimal", 0.3)
        critic = values(metrics, "loss/critic")
        assert critic and all(math.isfinite(v) for v in critic)
    if name == "rgmcomm_return_gap":  # the setting reaches the learner: a gap, never negative
        assert (hp["objective"], hp["cluster_samples"]) == ("return_gap", 8192)
        assert all(v >= -1e-4 for v in values(metrics, "loss/cluster"))
    if name == "rgmcomm":  # labels trained by the clustering loss, no world model
        for key in ("loss/cluster", "comm/epsilon", "comm/q_max", "comm/return_gap_bound"):
            assert all(math.isfinite(v) for v in values(metrics, key))
        assert "dfl/outer_grad_norm" not in metrics
    if name == "seqcomm_dfl_1bit":  # one bit from agent 2 (the leader) to agent 1
        assert msg_args(config)["n_labels"] == 2
        assert set(values(metrics, "comm/order_entropy")) == {0.0}


def test_hypergradient_ratio_caps_the_decision_focused_step_against_the_anchor(fit):
    """With ``hypergradient_ratio`` near 0 the implicit world model follows its prediction
    anchor alone (Adam's steps do not depend on the anchor's weight): its prediction losses
    equal the ``mle`` ablation's update by update; the uncapped default departs from them."""
    def model_mle(*extra: str) -> list[float]:
        run = fit(*stack(task("hospital"), METHOD), *extra, *SHORT["hospital"])
        return values(read_metrics(run), "loss/model_mle")

    pure = model_mle(*stack("ablations/gradient/mle.yaml"))
    capped = model_mle("--model.init_args.hypergradient_ratio=1e-9")
    per_tensor = model_mle("--model.init_args.hypergradient_ratio=1e-9",
                           "--model.init_args.hypergradient_per_tensor=true")
    default = model_mle()
    assert len(pure) > 1 and capped == pytest.approx(pure, rel=1e-6)
    assert per_tensor == pytest.approx(pure, rel=1e-6)
    assert default != pytest.approx(pure, rel=1e-6)
