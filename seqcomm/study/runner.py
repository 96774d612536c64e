"""Run a study's cells locally: ``workers`` ``seqcomm fit`` processes at a time (one torch
thread each), done cells skipped, a cell that repeats a finished one copied (study/twins.py),
progress and an ETA printed as cells start and end."""

from __future__ import annotations

import datetime
import sys
import time
from pathlib import Path
from typing import TextIO

from seqcomm.study import cell as cells
from seqcomm.study.spec import Cell, Study
from seqcomm.study.twins import Twins, copy_twin


class Progress:
    """Counts of done / running / failed / queued cells, and an ETA from finished cells."""

    def __init__(self, total: int, skipped: int, workers: int) -> None:
        self.total, self.skipped, self.workers = total, skipped, workers
        self.done, self.failed = skipped, 0
        self.durations: list[float] = []

    def finished(self, ok: bool, seconds: float | None) -> None:
        """A cell ended; ``seconds`` is None for a copied one (no run to time)."""
        self.done += ok
        self.failed += not ok
        if seconds is not None:
            self.durations.append(seconds)

    def eta(self, queued: int, elapsed: list[float]) -> float | None:
        """Seconds left: queued cells and the rest of running ones at the mean cell time."""
        if not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        left = queued * mean + sum(max(mean - e, 0.0) for e in elapsed)
        return left / self.workers

    def line(self, queued: int, elapsed: list[float]) -> str:
        eta = self.eta(queued, elapsed)
        eta_text = "--" if eta is None else str(datetime.timedelta(seconds=round(eta)))
        return (f"{self.done}/{self.total} done ({self.skipped} skipped), {len(elapsed)} running, "
                f"{self.failed} failed, {queued} queued; ETA {eta_text}")


def run_study(study: Study, study_dir: Path, workdir: Path, workers: int,
              out: TextIO = sys.stdout, heartbeat: float = 60.0,
              only: list[str] | None = None) -> dict[str, str]:
    """Run every cell (of those matching ``only``) that is not done; return
    ``{cell id: skipped | done | copied | failed}``."""
    cells.save_study(study, study_dir)
    grid = study.selected(only)
    result = {c.id: "skipped" for c in grid if cells.status(study_dir, c) == "done"}
    queue = [c for c in grid if c.id not in result]
    progress = Progress(len(grid), len(result), workers)
    running: list[cells.Running] = []
    twins = Twins(study, study_dir, workdir) if study.dedupe else None

    def say(text: str) -> None:
        now = time.monotonic()
        line = progress.line(len(queue), [now - r.started for r in running])
        print(f"study {study.name}: {text}{'; ' if text else ''}{line}", file=out, flush=True)

    say(f"{len(grid)} cells under {study_dir}")
    last = time.monotonic()
    try:
        while queue or running:
            while len(running) < workers and (cell := next_cell(queue, running, twins)):
                twin = twins.of(cell) if twins else None
                if twin is not None:  # finished meanwhile, or before this runner started
                    copy_twin(study_dir, cell, twin)
                    result[cell.id] = "copied"
                    progress.finished(True, None)
                    say(f"copied {cell.id} from {twin.id} (the same configuration)")
                    continue
                running.append(cells.start(study, cell, study_dir, workdir))
                say(f"started {cell.id}")
            time.sleep(0.2)
            for r in [r for r in running if r.process.poll() is not None]:
                running.remove(r)
                state = cells.finish(r, study_dir)
                result[r.cell.id] = state
                progress.finished(state == "done", time.monotonic() - r.started)
                where = "" if state == "done" else f" (log: {cells.log_path(study_dir, r.cell)})"
                say(f"{state} {r.cell.id}{where}")
                last = time.monotonic()
            if time.monotonic() - last > heartbeat:
                say("")
                last = time.monotonic()
    except KeyboardInterrupt:
        for r in running:  # our own children; their partial runs are redone on the next start
            r.process.terminate()
        for r in running:
            r.process.wait()
            r.log.close()
        raise SystemExit(f"study {study.name}: interrupted; run the same command again to "
                         "finish the missing cells") from None
    return result


def next_cell(queue: list[Cell], running: list[cells.Running], twins: Twins | None) -> Cell | None:
    """Take the first queued cell that does not repeat a running one (it waits for it)."""
    busy = [r.cell for r in running]
    for i, cell in enumerate(queue):
        twin = twins.of(cell, busy) if twins and busy else None
        if twin is None or twin.id not in {c.id for c in busy}:
            return queue.pop(i)
    return None
