"""Figure helpers: matplotlib's object API only (never pyplot's global state)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def new_fig(ncols: int, nrows: int = 1, w: float = 5.2, h: float = 3.8):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes.ravel()


def save(fig, out: Path, name: str) -> str:
    (out / "figures").mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "figures" / name, dpi=110)
    return f"figures/{name}"


def plain_log_x(ax, values) -> None:
    """Log x-axis labelled with the measured values themselves (no overlapping 3x10^1-style minor labels)."""
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(values))))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())


def legend_below(ax) -> None:
    """Legend under the axes, so it never hides a curve."""
    ax.legend(fontsize=7, title="framework:strategy", title_fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)


def errbar(ax, g: pd.DataFrame, x: str, label: str) -> None:
    g = g.sort_values(x)
    y = g["valid_tokens"] / g["median_s"]
    lo = y - g["valid_tokens"] / g["p75_s"]
    hi = g["valid_tokens"] / g["p25_s"] - y
    ax.errorbar(g[x], y, yerr=[lo.clip(lower=0), hi.clip(lower=0)], marker="o", capsize=3, label=label)
