"""Learning check (slow, about 15 minutes on 2 CPU cores): SeqComm-DFL leaves hospital's idle
policy and uses what the other specialists know.

The command is exactly the ladder's `seqcomm_dfl` cell for seed 0
(`python benchmarks/comm_ladder.py --rungs seqcomm_dfl --seeds 0`; docs/results.md, 5).
Without communication QMIX settles on idling: about -177 with nobody treated.
"""

from __future__ import annotations

import pytest
from conftest import ROOT, latest_version, read_summary

from seqcomm.cli import main

IDLE = -177.0


@pytest.mark.slow
def test_seqcomm_dfl_moves_off_the_idle_policy_on_hospital(tmp_path):
    main(["fit", "--config", str(ROOT / "conf" / "hospital.yaml"),
          "--config", str(ROOT / "conf" / "methods" / "seqcomm_dfl.yaml"),
          "--seed_everything=0", "--wandb", "false", "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(tmp_path), "--run_name", "run"])
    result = read_summary(latest_version(tmp_path, "run"))["eval"]
    assert result["return"] > IDLE + 30, result  # well clear of idling
    assert result["treated"] > 10, result  # specialists treat patients
    assert result["adverse_events"] < 10, result  # ... and mostly the right ones
