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


def legend_right(ax) -> None:
    """Legend right of the axes, one entry a line (two columns past 24 entries), so it never hides a curve nor
    runs into the next panel; constrained layout makes room for it."""
    n = len(ax.get_legend_handles_labels()[0])
    ax.legend(fontsize=6, title="framework:strategy [kernel]", title_fontsize=6, loc="center left",
              bbox_to_anchor=(1.02, 0.5), ncol=1 if n <= 24 else 2, frameon=False)


def grid_fig(panels: int, ncols: int = 2, w: float = 10.0, h: float = 4.2):
    """A figure of `panels` axes, at most `ncols` a row (fewer when there are fewer panels: no blank columns),
    each w x h inches with room for a legend on its right; the unused axes of the last row are hidden."""
    ncols = max(1, min(ncols, panels))
    fig, axes = new_fig(ncols, -(-max(panels, 1) // ncols), w=w, h=h)
    for ax in axes[panels:]:
        ax.set_axis_off()
    return fig, axes


def barh_panels(panels: list[tuple[str, pd.Series, pd.Series]], xlabel: str, log: bool = False):
    """Horizontal bar charts stacked one above the other, each as tall as its bars need: [(title, labels,
    values)]; the labels (long: framework:strategy [kernel] (device)) get the width they need."""
    from matplotlib.figure import Figure

    heights = [0.9 + 0.2 * max(len(labels), 1) for _, labels, _ in panels]
    fig = Figure(figsize=(11, sum(heights)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights}).ravel()
    for ax, (title, labels, values) in zip(axes, panels, strict=True):
        ax.barh(list(labels), list(values))
        ax.set(title=title, xlabel=xlabel)
        ax.tick_params(axis="y", labelsize=7)
        if log:
            ax.set_xscale("log")
    return fig


def errbar(ax, g: pd.DataFrame, x: str, label: str) -> None:
    g = g.sort_values(x)
    y = g["valid_tokens"] / g["median_s"]
    lo = y - g["valid_tokens"] / g["p75_s"]
    hi = g["valid_tokens"] / g["p25_s"] - y
    ax.errorbar(g[x], y, yerr=[lo.clip(lower=0), hi.clip(lower=0)], marker="o", capsize=3, label=label)
