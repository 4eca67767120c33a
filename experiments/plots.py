"""Figure helpers shared by the studies: the matplotlib import, axis scales, saving, tables."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np


def pyplot():
    """``matplotlib.pyplot``; the backend is left alone (headless machines fall back to Agg, a
    notebook keeps its inline backend)."""
    import matplotlib.pyplot as plt

    return plt


def value_scale(ax, values, axis: str = "y", decades: float = 1.0) -> None:
    """Log scale when every value is positive and they span at least ``decades`` decades;
    otherwise linear (a log axis over a narrow range only shows tick labels like 2.304×10⁰)."""
    v = np.asarray([a for a in np.ravel(values) if np.isfinite(a)], float)
    log = v.size > 0 and np.all(v > 0) and np.log10(v.max() / v.min()) >= decades
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log" if log else "linear")


def integer_ticks(ax, axis: str = "x") -> None:
    from matplotlib.ticker import MaxNLocator

    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True))


def save(fig, path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines
