"""``seqcomm study`` and ``seqcomm report`` (issue 10): the runner on the tiny matrix study with
2 workers (every cell once; a rerun redoes only a missing cell; failures recorded, not scored),
the report on synthetic summaries with known IQM and CIs, missing runs shown as missing, the
W&B sweep and SLURM (submitit) emitters without a cluster, and bad input."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import pytest
import submitit  # first import here: it binds log handlers to the streams of the moment
import yaml
from conftest import ROOT

from seqcomm.cli import main
from seqcomm.study import cell as cells
from seqcomm.study.emit import SLURM_DEFAULTS, slurm_executor, submit_slurm, write_wandb_sweep
from seqcomm.study.report import analyse, write_report
from seqcomm.study.results import read_study
from seqcomm.study.runner import next_cell, run_study
from seqcomm.study.spec import Study, load_study
from seqcomm.study.twins import same_as

SMOKE = "studies/smoke.yaml"
REPS = 200  # bootstrap replications: enough for the checks, fast


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)  # study files name configs relative to the repository


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Study, Path, dict[str, str], float]:
    """studies/smoke.yaml run once with 2 workers: (study, study dir, result, wall seconds)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        mp.setenv("WANDB_MODE", "offline")
        study = load_study(SMOKE)
        study_dir = tmp_path_factory.mktemp("studies") / study.name
        start = time.perf_counter()
        result = run_study(study, study_dir, ROOT, workers=2, out=io.StringIO())
        wall = time.perf_counter() - start
    print(f"tiny study: {len(result)} cells, 2 workers, {wall:.1f} s wall")
    return study, study_dir, result, wall


def test_every_cell_ran_once(smoke):
    study, study_dir, result, _ = smoke
    assert sorted(result) == sorted(["matrix/no_comm/0", "matrix/full_obs/0",
                                     "matrix/no_comm/1", "matrix/full_obs/1"])
    assert set(result.values()) == {"done"}
    for c in study.cells():
        assert [p.name for p in (study_dir / c.run_name).iterdir()] == ["version_0"]
        log = cells.log_path(study_dir, c).read_text().splitlines()
        assert [line for line in log if line.startswith("seqcomm fit --config")] == [log[0]]
        summary = json.loads((cells.run_dir(study_dir, c) / "summary.json").read_text())
        assert summary["seed"] == c.seed and summary["env_steps"] == 320
        config = yaml.safe_load((cells.run_dir(study_dir, c) / "config.yaml").read_text())
        assert config["model"]["init_args"]["full_obs"] == (c.method.name == "full_obs")
    assert yaml.safe_load((study_dir / "study.yaml").read_text()) == study.source


def test_rerun_after_interruption_runs_only_the_missing_cell(smoke):
    study, study_dir, _, _ = smoke
    lost = study.cell("matrix/full_obs/1")
    (cells.run_dir(study_dir, lost) / "summary.json").unlink()  # as if killed before the end
    out = io.StringIO()
    result = run_study(study, study_dir, ROOT, workers=2, out=out)
    assert result == {c.id: "done" if c == lost else "skipped" for c in study.cells()}
    assert [p.name for p in (study_dir / lost.run_name).iterdir()] == ["version_0"]
    lines = out.getvalue().splitlines()
    assert "3/4 done (3 skipped), 0 running, 0 failed, 1 queued; ETA --" in lines[0]
    assert lines[-1].endswith("4/4 done (3 skipped), 0 running, 0 failed, 0 queued; ETA 0:00:00")


def test_only_runs_the_cells_its_patterns_match(smoke, tmp_path, monkeypatch):
    study, study_dir, _, _ = smoke
    copy = tmp_path / study_dir.name  # the fixture's finished study, left as it is
    shutil.copytree(study_dir, copy)
    lost = [study.cell("matrix/full_obs/1"), study.cell("matrix/no_comm/0")]
    for c in lost:
        (cells.run_dir(copy, c) / "summary.json").unlink()
    started = []

    def summary_only(self, cell, d, py):  # a run that only writes its summary
        started.append(cell.id)
        path = str(cells.run_dir(d, cell) / "summary.json")
        return [py, "-c", f"import pathlib; p = pathlib.Path({path!r}); "
                          "p.parent.mkdir(parents=True); p.write_text('{}')"]

    monkeypatch.setattr(Study, "command", summary_only)
    result = run_study(study, copy, ROOT, workers=2, out=io.StringIO(), only=["*/full_obs/*"])
    assert result == {"matrix/full_obs/0": "skipped", "matrix/full_obs/1": "done"}
    assert started == ["matrix/full_obs/1"]
    assert cells.status(copy, lost[1]) == "missing"  # not matched: left alone
    assert [c.id for c in study.selected(["matrix/no_comm/0", "*/1"])] == [
        "matrix/no_comm/0", "matrix/no_comm/1", "matrix/full_obs/1"]


def test_a_cell_that_repeats_a_finished_one_copies_its_results(smoke, tmp_path, monkeypatch):
    """A method restating a default (gamma 0.99) resolves to no_comm's configuration: copied,
    not run; one that changes it (gamma 0.9) runs; the report marks the copies."""
    study, study_dir, _, _ = smoke
    source = dict(study.source, methods={
        "no_comm": ["conf/methods/qmix.yaml"],
        "restated": {"configs": ["conf/methods/qmix.yaml"],
                     "overrides": ["--model.init_args.gamma=0.99"]},
        "changed": {"configs": ["conf/methods/qmix.yaml"],
                    "overrides": ["--model.init_args.gamma=0.9"]}},
        compare=[["restated", "no_comm"]])
    twin_dir = tmp_path / "twins"
    for seed in (0, 1):
        shutil.copytree(study_dir / "matrix" / "no_comm" / f"s{seed}",
                        twin_dir / "matrix" / "no_comm" / f"s{seed}")
    (tmp_path / "twins.yaml").write_text(yaml.safe_dump(source))
    twins = load_study(tmp_path / "twins.yaml")
    started = []
    real = Study.command

    def recorded(self, cell, d, py):
        started.append(cell.id)
        return real(self, cell, d, py)

    monkeypatch.setattr(Study, "command", recorded)
    monkeypatch.setenv("WANDB_MODE", "offline")
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        result = run_study(twins, twin_dir, ROOT, workers=2, out=io.StringIO())
    # resolving a cell's configuration is quiet (LightningCLI warns of args beside sys.argv)
    assert not [w for w in shown if "LightningCLI" in str(w.message)]
    assert result == {"matrix/restated/0": "copied", "matrix/restated/1": "copied",
                      "matrix/changed/0": "done", "matrix/changed/1": "done",
                      "matrix/no_comm/0": "skipped", "matrix/no_comm/1": "skipped"}
    assert sorted(started) == ["matrix/changed/0", "matrix/changed/1"]
    for seed in (0, 1):
        copied = cells.run_dir(twin_dir, twins.cell(f"matrix/restated/{seed}"))
        original = cells.run_dir(twin_dir, twins.cell(f"matrix/no_comm/{seed}"))
        assert same_as(copied) == f"matrix/no_comm/{seed}"
        assert (copied / "summary.json").read_text() == (original / "summary.json").read_text()
    plotted = {}
    monkeypatch.setattr("seqcomm.study.plots.curves_png",
                        lambda curves, *args: plotted.update(curves["matrix"]))
    _, table = write_report(twin_dir, tmp_path / "report", reps=REPS)
    assert sorted(plotted) == ["changed", "no_comm"]  # a copy's curve would hide its source's
    assert "| matrix | restated (= no_comm) |" in table
    assert "Cells: 6 of 6 finished (2 of them copied from a twin), 0 failed" in table
    assert "| matrix | restated | no_comm | the same runs | the same configuration |" in table


def test_a_twin_of_a_running_cell_waits_for_it(smoke):
    """The runner starts the first queued cell that does not repeat a running one; the
    repeat stays queued (to be copied when its twin finishes)."""
    study = smoke[0]
    running, twin, other = (study.cell(i) for i in ("matrix/no_comm/0", "matrix/full_obs/0",
                                                     "matrix/no_comm/1"))

    class Repeats:  # full_obs/0 repeats no_comm/0; nothing else repeats anything
        def of(self, cell, busy=()):
            return running if cell == twin and running in busy else None

    queue = [twin, other]
    started = cells.Running(running, process=None, log=None, started=0.0)
    assert next_cell(queue, [started], Repeats()) == other and queue == [twin]
    assert next_cell(queue, [started], Repeats()) is None and queue == [twin]
    assert next_cell(queue, [], Repeats()) == twin and queue == []


def test_a_failed_cell_is_recorded_with_its_log_and_reported_as_failed(smoke, tmp_path,
                                                                       monkeypatch):
    study, study_dir, _, _ = smoke
    bad = study.cell("matrix/no_comm/1")
    monkeypatch.setattr(Study, "command", lambda self, cell, d, py: [
        py, "-c", "print('boom'); raise SystemExit(3)"])
    (cells.run_dir(study_dir, bad) / "summary.json").unlink()
    result = run_study(study, study_dir, ROOT, workers=2, out=io.StringIO())
    assert result[bad.id] == "failed"
    record = json.loads(cells.failed_path(study_dir, bad).read_text())
    assert record["returncode"] == 3 and "boom" in cells.log_path(study_dir, bad).read_text()
    assert cells.status(study_dir, bad) == "failed"

    out, table = write_report(study_dir, tmp_path / "report", reps=REPS)
    row = next(line for line in table.splitlines() if line.startswith("| matrix | no_comm |"))
    assert row.split(" | ")[2] == "1/2" and row.rstrip(" |").endswith("failed")
    runs = json.loads((out / "marl_eval.json").read_text())["smoke"]["matrix"]
    assert sorted(runs["no_comm"]) == ["run_0"] and sorted(runs["full_obs"]) == ["run_0", "run_1"]
    for name in ("curves.png", "aggregate.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _synthetic(study_dir: Path, values: dict[str, list[float | None]]) -> None:
    """A study directory whose runs are summary.json files with the given returns."""
    study = {"seeds": list(range(8)), "tasks": {"t": {"configs": ["conf/matrix.yaml"],
                                                      "reference": {"low": 0, "high": 10}}},
             "methods": {m: ["conf/methods/qmix.yaml"] for m in values},
             "compare": [["a", "b"]]}
    study_dir.mkdir(parents=True)
    (study_dir / "study.yaml").write_text(yaml.safe_dump(study))
    parsed = load_study(study_dir / "study.yaml", name=study_dir.name)
    for c in parsed.cells():
        value = values[c.method.name][c.seed]
        if value is None:
            continue
        run = cells.run_dir(study_dir, c)
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps(
            {"eval": {"return": value}, "env_steps": 100, "updates": 10}))
        (run / "metrics.csv").write_text(
            "epoch,eval/return,perf/env_steps,step\n0,,50,4\n0,"
            f"{value / 2},,4\n0,{value},,10\n")


def test_report_iqm_and_intervals_on_known_values(tmp_path):
    a = [0, 1, 2, 3, 4, 5, 6, 100]  # mean 15.125, IQM (middle half: 2..5) 3.5
    b = [5, 5, 5, 5, 5, 5, None, 5]  # seed 6 never ran
    _synthetic(tmp_path / "syn", {"a": a, "b": b})
    study, runs = read_study(tmp_path / "syn")
    result = analyse(study, runs, reps=REPS)
    ra, rb = result["tasks"]["t"]["a"], result["tasks"]["t"]["b"]
    assert ra["mean"].value == pytest.approx(15.125)
    assert ra["iqm"].value == pytest.approx(3.5)
    assert 0 <= ra["iqm"].low <= 3.5 <= ra["iqm"].high <= 100
    assert ra["mean"].low <= 15.125 <= ra["mean"].high
    assert ra["normalised_iqm"].value == pytest.approx(0.35)
    assert (rb["iqm"].value, rb["iqm"].low, rb["iqm"].high) == (5, 5, 5)  # no spread, no width
    assert rb["runs"][6] == "missing"
    assert analyse(study, runs, reps=REPS)["tasks"]["t"]["a"]["iqm"] == ra["iqm"]  # seeded
    # the normalised aggregate needs every run: b is incomplete, not a number
    assert result["normalised"]["b"] == "incomplete"
    assert result["normalised"]["a"]["iqm"].value == pytest.approx(0.35)
    (p,) = result["improvement"]
    assert p["p"].value == pytest.approx(17.5 / 56)  # (2 wins + 1 tie / 2) x 7 b-runs of 8 x 7
    curve = result["curves"]["t"]["a"]
    assert list(curve[0]) == [50, 100]  # env steps of the evaluations at updates 4 and 10

    out, table = write_report(tmp_path / "syn", reps=REPS)
    assert out == tmp_path / "syn" / "report"
    assert sorted(p.name for p in out.iterdir()) == [
        "aggregate.png", "curves.png", "marl_eval.json", "stats.json", "table.md"]
    row_b = next(line for line in table.splitlines() if line.startswith("| t | b |"))
    assert row_b.split(" | ")[2] == "7/8" and " missing |" in row_b
    assert "| b | incomplete |" in table
    marl = json.loads((out / "marl_eval.json").read_text())["syn"]["t"]
    assert "run_6" not in marl["b"] and len(marl["a"]) == 8
    assert marl["a"]["run_7"]["absolute_metrics"] == {"return": [100.0]}
    assert marl["a"]["run_7"]["step_1"] == {"step_count": 100, "return": [100.0]}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["tasks"]["t"]["a"]["iqm"]["value"] == pytest.approx(3.5)



def test_curves_keep_the_last_of_two_evaluations_at_one_env_step(tmp_path):
    """Updates between two collections log the same env step: a run's in-training evaluation
    and its final one can share it, and the curve must still line up with the other runs."""
    _synthetic(tmp_path / "syn", {"a": [1.0] * 8, "b": [2.0] * 8})
    run = next((tmp_path / "syn").glob("t/a/s0/version_0"))
    (run / "metrics.csv").write_text(  # updates 8 and 10 both at env step 100
        "epoch,eval/return,perf/env_steps,step\n0,,50,4\n0,0.5,,4\n0,,100,8\n0,0.7,,8\n"
        "0,1.0,,10\n")
    study, runs = read_study(tmp_path / "syn")
    steps, iqm, _, _ = analyse(study, runs, reps=REPS)["curves"]["t"]["a"]
    assert list(steps) == [50, 100] and len(iqm) == 2
    assert iqm[1] == pytest.approx(1.0)  # the last evaluation at step 100 on every run

def test_one_run_has_no_interval_and_no_verdict(tmp_path):
    """A bootstrap of one run has zero width: the report says so instead of printing it."""
    _synthetic(tmp_path / "syn", {"a": [1.0] + [None] * 7, "b": [2.0, 3.0] + [None] * 6})
    study, runs = read_study(tmp_path / "syn")
    result = analyse(study, runs, reps=REPS)
    ra, rb = result["tasks"]["t"]["a"], result["tasks"]["t"]["b"]
    assert ra["iqm"].value == 1.0 and ra["iqm"].text() == "1 (1 run: no CI)"
    assert ra["normalised_iqm"].as_dict() == {"value": 0.1, "ci_low": None, "ci_high": None}
    assert rb["mean"].low < rb["mean"].high  # two runs: an interval
    assert result["improvement"] == [{"task": "t", "x": "a", "y": "b", "p": "1 run: no test",
                                      "verdict": "too few runs"}]
    _, table = write_report(tmp_path / "syn", reps=REPS)
    assert "| t | a | b | 1 run: no test | too few runs |" in table


def test_a_task_ranked_by_its_own_metric(tmp_path):
    """A task's ``metric`` (e.g. combat's win rate) replaces the study's for that task only."""
    _synthetic(tmp_path / "syn", {"a": [1.0] * 8, "b": [2.0] * 8})
    data = yaml.safe_load((tmp_path / "syn" / "study.yaml").read_text())
    data["tasks"]["t"]["metric"] = "win_rate"
    (tmp_path / "syn" / "study.yaml").write_text(yaml.safe_dump(data))
    for summary in (tmp_path / "syn").glob("t/*/s*/version_0/summary.json"):
        found = json.loads(summary.read_text())
        found["eval"]["win_rate"] = found["eval"]["return"] / 10
        summary.write_text(json.dumps(found))
    study, runs = read_study(tmp_path / "syn")
    assert study.metric == "return" and study.metric_of("t") == "win_rate"
    result = analyse(study, runs, reps=REPS)
    assert result["tasks"]["t"]["b"]["iqm"].value == pytest.approx(0.2)
    assert result["metrics"] == {"t": "win_rate"}
    assert "t" not in result["curves"]  # metrics.csv logs no eval/win_rate: no curve, no guess
    _, table = write_report(tmp_path / "syn", reps=REPS)
    assert table.splitlines()[0].endswith("eval/return (t: eval/win_rate)")


def test_report_into_a_document_replaces_only_the_block_between_its_markers(tmp_path, capsys):
    """``--into``: the table lands in a results page between the study's markers, its headings
    one level down; the text around it is kept, and a second run changes nothing."""
    _synthetic(tmp_path / "syn", {"a": [1.0] * 8, "b": [2.0] * 8})
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nbefore\n<!-- seqcomm report: syn -->\nold table\n"
                   "<!-- /seqcomm report: syn -->\nafter\n")
    main(["report", str(tmp_path / "syn"), "--reps", str(REPS), "--into", str(doc)])
    text = doc.read_text()
    table = (tmp_path / "syn" / "report" / "table.md").read_text()
    assert text.startswith("# Results\n\nbefore\n<!-- seqcomm report: syn -->\n")
    assert text.endswith("<!-- /seqcomm report: syn -->\nafter\n")
    assert "old table" not in text and "\n## Study syn: final greedy eval/return\n" in text
    assert "\n### Probability of improvement\n" in text
    assert next(line for line in table.splitlines() if line.startswith("| t | b |")) in text
    main(["report", str(tmp_path / "syn"), "--reps", str(REPS), "--into", str(doc)])
    assert doc.read_text() == text
    doc.write_text("# Results\nno markers\n")
    shutil.rmtree(tmp_path / "syn" / "report")
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path / "syn"), "--into", str(doc)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs one line '<!-- seqcomm report: syn -->'" in err
    assert doc.read_text() == "# Results\nno markers\n"  # checked before anything is written
    assert not (tmp_path / "syn" / "report").exists()


def test_wandb_sweep_is_a_grid_over_the_cells_that_the_cli_runs(smoke, tmp_path, capsys):
    study, study_dir, _, _ = smoke
    root = str(study_dir.parent)
    path = write_wandb_sweep(study, SMOKE, root, tmp_path / "smoke")
    from wandb.sdk.launch.sweeps.utils import load_sweep_config

    config = load_sweep_config(str(path))
    assert config["method"] == "grid" and config["program"] == "seqcomm"
    assert config["metric"] == {"name": "eval/return", "goal": "maximize"}
    assert config["parameters"] == {"cell": {"values": [c.id for c in study.cells()]}}
    subset = write_wandb_sweep(study, SMOKE, root, tmp_path / "subset", only=["*/no_comm/*"])
    assert load_sweep_config(str(subset))["parameters"]["cell"]["values"] == [
        "matrix/no_comm/0", "matrix/no_comm/1"]
    from seqcomm.commands import sweep_commands  # W&B's own helpers build the agent's commands

    commands = sweep_commands(str(path))
    assert [cmd[-1] for cmd in commands] == [f"--cell={c.id}" for c in study.cells()]
    main(commands[0][1:])  # what `wandb agent` runs; the cell is done, so it is skipped
    assert cells.status(study_dir, study.cells()[0]) == "done"
    main(["study", SMOKE, "--root", str(tmp_path / "emit"), "--emit", "wandb"])
    assert "wandb agent" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "emit" / "smoke").iterdir()) == [
        "study.yaml", "sweep.yaml"]


def test_slurm_job_array_through_submitit_without_a_cluster(smoke, tmp_path, monkeypatch):
    study, study_dir, _, _ = smoke
    bin_dir = tmp_path / "bin"  # stand-ins for SLURM's commands: sbatch answers with a job id
    bin_dir.mkdir()
    for name, body in {"srun": "exit 0", "sbatch": 'echo "Submitted batch job 4242"'}.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    slurm = {"slurm_partition": "cpu", "timeout_min": 30, "slurm_array_parallelism": 2}
    study = Study(**{**study.__dict__, "slurm": slurm})
    target = tmp_path / "smoke"
    executor = slurm_executor(study, target)
    params = executor._executor.parameters
    assert params["partition"] == "cpu" and params["time"] == 30
    assert params["cpus_per_task"] == SLURM_DEFAULTS["cpus_per_task"] == 1
    assert params["array_parallelism"] == 2 and params["job_name"] == "seqcomm-smoke"

    jobs = submit_slurm(executor, study, SMOKE, target, ROOT)
    assert [j.job_id for j in jobs] == [f"4242_{i}" for i in range(4)]
    script = (target / "slurm" / "4242_submission.sh").read_text()
    for line in ("#SBATCH --array=0-3%2", "#SBATCH --cpus-per-task=1", "#SBATCH --time=30",
                 "#SBATCH --partition=cpu", "#SBATCH --job-name=seqcomm-smoke"):
        assert line in script
    delayed = submitit.helpers.DelayedSubmission.load(jobs[2].paths.submitted_pickle)
    assert delayed.function is cells.run_cell_job
    assert delayed.args == (str(ROOT / SMOKE), str(target), study.cells()[2].id, str(ROOT))

    # the job function itself, through submitit's in-process executor, on a finished cell
    debug = slurm_executor(study, study_dir, cluster="debug")
    job = debug.submit(cells.run_cell_job, str(ROOT / SMOKE), str(study_dir),
                       study.cells()[0].id, str(ROOT))
    assert job.result() == "done"


@pytest.mark.parametrize("args, message", [
    (["study", "studies/nope.yaml"], "no such study file"),
    (["study", "{bad}", "--workers", "0"], "--workers must be >= 1"),
    (["study", "{bad}", "--emit", "mpi"], "invalid choice: 'mpi'"),
    (["study", "{unknown_key}"], "unknown key 'budgets'"),
    (["study", "{unknown_task_key}"], "task 'matrix': unknown key 'config'"),
    (["study", "{bad_task_metric}"], "task 'matrix' metric: must be a summary.json eval key"),
    (["study", "{missing_config}"], "config 'conf/methods/nope.yaml' does not exist"),
    (["study", "{bad_pair}"], "compare entry ['a', 'nope']"),
    (["study", "{bad_dedupe}"], "'dedupe' must be true or false"),
    (["study", SMOKE, "--cell", "matrix/nope/0"], "is not in study 'smoke'"),
    (["study", SMOKE, "--only", "matrix/*/0", "hospital/*"], "--only 'hospital/*' matches no"),
    (["study", SMOKE, "--emit", "slurm"], "SLURM login node"),
    (["report", "{empty_study}"], "no finished runs yet"),
    (["report", "{tmp}"], "not a study directory"),
    (["report", "{tmp}/none"], "no such study directory"),
    (["report", "{empty_study}", "--into", "{tmp}/none.md"], "none.md: no such file"),
])
def test_bad_input_is_one_line_and_exit_status_2(args, message, tmp_path, capsys):
    base = yaml.safe_load((ROOT / SMOKE).read_text())
    files = {
        "bad": base,
        "unknown_key": base | {"budgets": 3},
        "unknown_task_key": base | {"tasks": {"matrix": {"config": ["conf/matrix.yaml"]}}},
        "bad_task_metric": base | {"tasks": {"matrix": {"configs": ["conf/matrix.yaml"],
                                                        "metric": ["win_rate"]}}},
        "missing_config": base | {"methods": {"a": ["conf/methods/nope.yaml"]}},
        "bad_pair": base | {"methods": {"a": ["conf/methods/qmix.yaml"]},
                            "compare": [["a", "nope"]]},
        "bad_dedupe": base | {"dedupe": "yes"},
    }
    for name, data in files.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data))
    empty = tmp_path / "empty_study"
    empty.mkdir()
    (empty / "study.yaml").write_text(yaml.safe_dump(base))
    subs = {"{tmp}": str(tmp_path), "{empty_study}": str(empty)}
    subs |= {f"{{{name}}}": str(tmp_path / f"{name}.yaml") for name in files}
    argv = []
    for a in args:
        for key, value in subs.items():
            a = a.replace(key, value)
        argv.append(a)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--root", str(tmp_path / "root")] if argv[0] == "study" else argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("seqcomm: error: ") and message in err, err
    assert "Traceback" not in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing new


def test_paper_study_covers_every_method_and_every_ablation_on_hospital():
    study = load_study("studies/paper.yaml")  # config paths checked
    stacks = {tuple(c.method.configs) for c in study.cells() if c.task.name == "hospital"}
    ablations = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("ablations/*/*.yaml"))
    assert sorted(s[-1] for s in stacks if len(s) == 2) == ablations
    methods = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("conf/methods/*.yaml")
                     # settings stacked after a method file: the matrix game's 1 bit,
                     # RGMComm's Q* labels (19x the update on hospital), its return gap
                     if p.stem not in ("seqcomm_dfl_1bit", "rgmcomm_qstar",
                                       "rgmcomm_return_gap"))
    assert sorted(s[0] for s in stacks if len(s) == 1) == methods
    assert study.seeds == [0, 1, 2] and study.tasks["hospital"].reference == (-154.4, -26.7)
    assert study.metric_of("hospital") == "return"
    assert study.metric_of("microcombat_3m_sight") == "win_rate"  # combat ranks by wins
