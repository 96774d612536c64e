"""The benchmark scripts' run lookup (``benchmarks/hospital_decisions.run_directory``): a
run's ``version_k`` directory or its parent, and one line naming what is there otherwise."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from hospital_decisions import run_directory  # noqa: E402


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
