"""The report's figures (matplotlib, no display needed): IQM learning curves with 95% CI bands
per task, and an aggregate interval plot (IQM and CI per method, raw per task and normalised
over the tasks with references)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from seqcomm.study.intervals import Estimate

Curve = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # steps, iqm, low, high


def _colours(methods: list[str]) -> dict[str, str]:
    return {m: f"C{i % 10}" for i, m in enumerate(methods)}


def _dashes(methods: list[str]) -> dict[str, str]:
    """A line style per method, so that methods whose colours repeat (more than 10) differ."""
    return {m: ("-", "--", ":", "-.")[i // 10 % 4] for i, m in enumerate(methods)}


def curves_png(curves: dict[str, dict[str, Curve]], methods: list[str],
               metrics: dict[str, str], path: Path) -> None:
    """``curves[task][method] = (env steps, IQM, CI low, CI high)``: one panel per task with
    its legend beside it, ``metrics[task]`` its eval key."""
    colour, dash = _colours(methods), _dashes(methods)
    longest = max((len(by_method) for by_method in curves.values()), default=1)
    fig = Figure(figsize=(7.5 * max(len(curves), 1), max(3.6, 0.22 * longest + 0.8)),
                 layout="constrained")
    for ax, (task, by_method) in zip(fig.subplots(1, max(len(curves), 1), squeeze=False)[0],
                                     curves.items(), strict=False):
        for method, (steps, iqm, low, high) in by_method.items():
            ax.plot(steps, iqm, color=colour[method], linestyle=dash[method], label=method)
            ax.fill_between(steps, low, high, color=colour[method], alpha=0.15, linewidth=0)
        ax.set_title(task)
        ax.set_xlabel("env steps")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 400k, not 400000 run together
        ax.set_ylabel(f"eval {metrics[task]} (IQM, 95% CI)")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, dpi=120)


def aggregate_png(panels: dict[str, dict[str, Estimate]], methods: list[str], path: Path) -> None:
    """``panels[title][method] = IQM estimate``: one interval plot per panel."""
    colour = _colours(methods)
    fig = Figure(figsize=(4.0 * max(len(panels), 1), 0.5 * len(methods) + 1.5),
                 layout="constrained")
    for ax, (title, by_method) in zip(fig.subplots(1, max(len(panels), 1), squeeze=False)[0],
                                      panels.items(), strict=False):
        names = [m for m in methods if m in by_method]
        for y, m in enumerate(names):
            e = by_method[m]
            ax.barh(y, e.high - e.low, left=e.low, height=0.6, color=colour[m], alpha=0.6)
            ax.plot([e.value, e.value], [y - 0.3, y + 0.3], color="black")
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_title(title)
        ax.set_xlabel("IQM (95% CI)")
    fig.savefig(path, dpi=120)
