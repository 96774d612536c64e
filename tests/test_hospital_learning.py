"""Learning checks (slow, about 10-15 minutes each on 2 CPU cores): SeqComm-DFL leaves
hospital's idle policy and uses what the other specialists know.

Each command is exactly a cell of the diagnostic ladder for seed 0 (`python
benchmarks/comm_ladder.py --rungs seqcomm_va seqcomm_dfl --seeds 0`; docs/results.md, 5).
Without communication QMIX settles on idling: about -177 with nobody treated.
"""

from __future__ import annotations

import pytest
from conftest import ROOT, latest_version, read_summary

from seqcomm.cli import main

IDLE = -177.0
METHOD = str(ROOT / "conf" / "methods" / "seqcomm_dfl.yaml")
NO_WORLD_MODEL = str(ROOT / "ablations" / "gradient" / "none.yaml")


@pytest.mark.slow
@pytest.mark.parametrize("configs", [
    pytest.param([METHOD, NO_WORLD_MODEL], id="value-aware messages, no world model"),
    pytest.param([METHOD], id="full method"),  # -41.6 on seed 0 (docs/results.md, 5)
])
def test_seqcomm_dfl_moves_off_the_idle_policy_on_hospital(configs, tmp_path):
    args = ["fit", "--config", str(ROOT / "conf" / "hospital.yaml")]
    for config in configs:
        args += ["--config", config]
    main([*args, "--seed_everything=0", "--wandb", "false", "--trainer.enable_progress_bar",
          "false", "--trainer.default_root_dir", str(tmp_path), "--run_name", "run"])
    result = read_summary(latest_version(tmp_path, "run"))["eval"]
    assert result["return"] > IDLE + 30, result  # well clear of idling
    assert result["treated"] > 10, result  # specialists treat patients
    assert result["adverse_events"] < 10, result  # ... and mostly the right ones
