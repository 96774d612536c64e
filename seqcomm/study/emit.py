"""A study's grid for a cluster: a W&B grid sweep (``wandb agent`` runs its cells on any number
of machines) or a SLURM job array submitted through submitit. Each job runs one cell with
``seqcomm study <file> --root <root> --cell <task/method/seed>``; all write under the same
study directory, so it must be on a file system the machines share."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from seqcomm.errors import ConfigError
from seqcomm.study import cell as cells
from seqcomm.study.spec import Study

#: submitit parameters of every job unless the study file's ``slurm`` mapping says otherwise
SLURM_DEFAULTS: dict[str, Any] = {"cpus_per_task": 1, "timeout_min": 240, "nodes": 1,
                                  "tasks_per_node": 1, "slurm_array_parallelism": 64}


def wandb_sweep(study: Study, study_file: str, root: str,
                only: list[str] | None = None) -> dict[str, Any]:
    """A W&B grid sweep over the study's cells (one parameter, ``cell``)."""
    return {
        "program": "seqcomm",
        "method": "grid",
        "metric": {"name": f"eval/{study.metric}", "goal": "maximize"},
        "command": ["${env}", "${program}", "study", study_file, "--root", root, "${args}"],
        "parameters": {"cell": {"values": [c.id for c in study.selected(only)]}},
    }


def write_wandb_sweep(study: Study, study_file: str, root: str, study_dir: Path,
                      only: list[str] | None = None) -> Path:
    """Write ``<study dir>/sweep.yaml`` (and the study copy the report reads)."""
    import yaml

    text = f"# seqcomm study {study_file}: wandb sweep this file, then wandb agent <sweep id>\n"
    text += yaml.safe_dump(wandb_sweep(study, study_file, root, only), sort_keys=False)
    cells.save_study(study, study_dir)
    path = study_dir / "sweep.yaml"
    path.write_text(text)
    return path


def slurm_executor(study: Study, study_dir: Path, cluster: str = "slurm"):
    """A submitit executor for the study's jobs: ``SLURM_DEFAULTS`` updated by the study
    file's ``slurm`` mapping (any submitit parameter, e.g. ``slurm_partition``)."""
    if cluster == "slurm" and not (shutil.which("srun") and shutil.which("sbatch")):
        raise ConfigError("--emit slurm submits from a SLURM login node (srun and sbatch on "
                          "PATH); neither is here. Use --emit wandb, or the local runner")
    import submitit
    executor = submitit.AutoExecutor(folder=study_dir / "slurm", cluster=cluster)
    try:
        executor.update_parameters(name=f"seqcomm-{study.name}",
                                   **(SLURM_DEFAULTS | study.slurm))
    except (ValueError, TypeError, AssertionError) as err:
        raise ConfigError(f"study {study.name!r} slurm: {' '.join(str(err).split())}") from err
    return executor


def submit_slurm(executor, study: Study, study_file: str, study_dir: Path,
                 workdir: Path, only: list[str] | None = None) -> list:
    """Submit every cell (of those matching ``only``) that is not done as one job array;
    return submitit's jobs."""
    cells.save_study(study, study_dir)
    todo = [c for c in study.selected(only) if cells.status(study_dir, c) != "done"]
    if not todo:
        return []
    n = len(todo)
    return executor.map_array(cells.run_cell_job, [str(Path(study_file).resolve())] * n,
                              [str(study_dir)] * n, [c.id for c in todo], [str(workdir)] * n)
