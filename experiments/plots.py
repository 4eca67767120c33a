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


def layer_curvature_figure(config, per_batch: dict, path: pathlib.Path) -> pathlib.Path:
    """Per-layer λ_max and trace of the Hessian blocks against the batch size, and λ_max of the
    Hessian beside the GGN's. ``per_batch``: ``{batch size: {"curvature": {...}}}`` as the batch
    sweep's summary holds it."""
    plt = pyplot()
    rows = {int(b): row["curvature"] for b, row in per_batch.items() if "curvature" in row}
    bs = sorted(rows)
    names = list(rows[bs[0]]["layers"])
    colors = plt.cm.tab10(np.arange(len(names)) % 10)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, key, label in (
        (axes[0], "lambda_max", r"$\lambda_{max}$ of the layer's Hessian block"),
        (axes[1], "trace", "trace of the layer's Hessian block"),
    ):
        values = []
        for name, col in zip(names, colors, strict=True):
            ys = [rows[b]["layers"][name][key] for b in bs]
            values += ys
            ax.plot(bs, ys, "o-", color=col, label=name)
        value_scale(ax, values)
        ax.set(xlabel="batch size", ylabel=label)
    values = []
    for key, label, style in (
        ("hessian_lambda_max", r"Hessian $\lambda_{max}$", "o-"),
        ("ggn_lambda_max", r"Gauss-Newton $\lambda_{max}$", "s--"),
    ):
        ys = [rows[b][key] for b in bs]
        values += ys
        axes[2].plot(bs, ys, style, label=label)
    value_scale(axes[2], values)
    axes[2].set(xlabel="batch size", ylabel=r"$\lambda_{max}$ (whole model)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(bs, [str(b) for b in bs])
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, title="layer", title_fontsize=8)
    axes[2].legend(fontsize=8)
    n = rows[bs[0]]["samples"]
    fig.suptitle(
        f"{config.name}: curvature per layer and Gauss-Newton vs Hessian ({n} train samples)"
    )
    fig.tight_layout()
    return save(fig, path)
