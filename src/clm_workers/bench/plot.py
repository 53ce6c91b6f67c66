"""docs/benchmarks.png: wall time against N, one line per strategy, one panel per scenario.

matplotlib is the ``bench`` extra, not a dependency: CLM never plots, and the
tables and JSON need nothing but the standard library.  It is imported here,
at call time, so ``clm-workers bench`` (and its CI smoke run) works without it.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

from .model import STRATEGIES
from .runner import BenchResult

_STYLE = {
    "sequential": {"color": "#7f7f7f", "marker": "s"},
    "threadpool": {"color": "#d62728", "marker": "^"},
    "clm-workers": {"color": "#1f77b4", "marker": "o"},
    "clm-workers/reg": {"color": "#2ca02c", "marker": "D"},
}

_SECONDS_TICKS = [0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256]


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _pyplot() -> Any:
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        raise PlotUnavailable(
            "matplotlib is not installed; `pip install -e '.[bench]'` (or `nox -s bench`) adds it"
        ) from None
    matplotlib.use("Agg")  # files only, no display
    return importlib.import_module("matplotlib.pyplot")


def write_plot(result: BenchResult, path: Path) -> Path:
    plt = _pyplot()
    ticker = importlib.import_module("matplotlib.ticker")
    scenarios = [s for s in result.options.scenarios if any(c.scenario == s.name for c in result.cells)]
    fig, axes = plt.subplots(1, len(scenarios), figsize=(6.2 * len(scenarios), 4.8), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        cells = sorted((c for c in result.cells if c.scenario == scenario.name), key=lambda c: c.workers)
        sizes = [c.workers for c in cells]
        for name in STRATEGIES:
            points = [(c.workers, c.strategies[name]) for c in cells if name in c.strategies]
            if not points:
                continue
            xs = [n for n, _ in points]
            mid = [s.wall_median for _, s in points]
            low = [max(0.0, s.wall_median - s.wall_min) for _, s in points]
            high = [max(0.0, s.wall_max - s.wall_median) for _, s in points]
            ax.errorbar(xs, mid, yerr=[low, high], label=name, capsize=3, linewidth=1.6, markersize=5,
                        **_STYLE.get(name, {}))
        # A line needs two sizes; a lone size shows its bounds as ticks.
        bound_marker = {"marker": "_", "markersize": 14} if len(sizes) == 1 else {}
        ax.plot(sizes, [c.bounds.ideal for c in cells], color="black", linestyle="--", linewidth=1,
                label="lower bound (ideal)", **bound_marker)
        ax.plot(sizes, [c.bounds.machine for c in cells], color="black", linestyle=":", linewidth=1,
                label="bound incl. every worker's start CPU", **bound_marker)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_yscale("log")
        walls = [s.wall_median for c in cells for s in c.strategies.values() if not math.isnan(s.wall_median)]
        if walls:
            bottom, top = min(walls + [c.bounds.ideal for c in cells]) * 0.7, max(walls) * 1.5
            ax.set_ylim(bottom, top)
            # Plain seconds on a doubling scale read better than 2x10^0.
            ax.set_yticks([t for t in _SECONDS_TICKS if bottom <= t <= top])
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("workers (N)")
        ax.set_ylabel("seconds until all registered (median, min-max)")
        ax.set_title(f"{scenario.name}: {scenario.label}")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(
        f"Worker pool startup, concurrency {result.options.concurrency}, "
        f"{result.machine.cores} cores ({result.machine.cpu_model}), {result.date}", fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
