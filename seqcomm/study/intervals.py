"""Interval estimates by rliable's stratified bootstrap: mean, IQM and optimality gap with 95%
CIs, probability of improvement, and IQM learning curves. Scores are ``(runs, tasks[, points])``
arrays as rliable takes them; a point estimate comes with ``(low, high)``."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from rliable import library as rly
from rliable import metrics


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its 95% confidence interval (NaN bounds: one run, no interval)."""

    value: float
    low: float
    high: float

    def text(self, digits: int = 4) -> str:
        if np.isnan(self.low):
            return f"{self.value:.{digits}g} (1 run: no CI)"
        return f"{self.value:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}]"

    def as_dict(self) -> dict[str, float | None]:
        bounds = [None if np.isnan(b) else b for b in (self.low, self.high)]
        return {"value": self.value, "ci_low": bounds[0], "ci_high": bounds[1]}

    def alone(self) -> Estimate:
        """The same value without an interval (a bootstrap of one run has none)."""
        return Estimate(self.value, float("nan"), float("nan"))


def _estimates(scores: dict, func: Callable[..., np.ndarray], reps: int, seed: int):
    """rliable's ``get_interval_estimates`` (95% percentile CIs), seeded: its stratified
    resampling draws from numpy's global generator, so that is seeded and then restored."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():  # arch: random_state is deprecated (rliable passes it)
            warnings.simplefilter("ignore", FutureWarning)
            return rly.get_interval_estimates(scores, func, reps=reps,
                                              random_state=np.random.RandomState(seed))
    finally:
        np.random.set_state(saved)


def aggregates(scores: dict[str, np.ndarray], reps: int, seed: int = 0,
               optimality_gap: bool = False) -> dict[str, dict[str, Estimate]]:
    """``{method: {"mean": ..., "iqm": ...[, "optimality_gap": ...]}}`` for ``(runs, tasks)``
    score matrices (optimality gap only makes sense on normalised scores: gap below 1)."""
    def func(x: np.ndarray) -> np.ndarray:
        out = [metrics.aggregate_mean(x), metrics.aggregate_iqm(x)]
        return np.array(out + [metrics.aggregate_optimality_gap(x)] if optimality_gap else out)

    names = ["mean", "iqm"] + (["optimality_gap"] if optimality_gap else [])
    points, cis = _estimates(scores, func, reps, seed)
    return {m: {n: Estimate(float(points[m][i]), float(cis[m][0][i]), float(cis[m][1][i]))
                for i, n in enumerate(names)} for m in scores}


def improvement(pairs: dict[str, tuple[np.ndarray, np.ndarray]], reps: int,
                seed: int = 0) -> dict[str, Estimate]:
    """P(X > Y), averaged over tasks, for ``{label: (x, y)}`` with ``(runs, tasks)`` arrays
    (the two may have different numbers of runs)."""
    points, cis = _estimates({k: list(v) for k, v in pairs.items()},
                             metrics.probability_of_improvement, reps, seed)
    return {k: Estimate(float(points[k]), *map(float, np.ravel(cis[k]))) for k in pairs}


def iqm_curves(curves: dict[str, np.ndarray], reps: int,
               seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """IQM over runs at each point of ``(runs, tasks, points)`` curves: ``(iqm, low, high)``."""
    def func(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x[..., i]) for i in range(x.shape[-1])])

    points, cis = _estimates(curves, func, reps, seed)
    return {k: (points[k], cis[k][0], cis[k][1]) for k in curves}
