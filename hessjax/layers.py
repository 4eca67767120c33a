"""Curvature per layer: top-k eigenvalues and trace of every layer's Hessian block.

For each layer ``ℓ`` (the leaves under one module, :func:`hessjax.blocks.layer_names`) the block
``H_ℓℓ`` (:func:`hessjax.block_operator`) gets a Lanczos top-k solve (``λ_max``, and ``λ_min``
of the top k, i.e. ``λ_k``) and a trace estimate (XTrace by default; exact when the layer has no
more parameters than the trace budget). The traces of all layers sum to ``tr(H)`` (the diagonal
blocks hold the whole diagonal); the λ_max of the blocks are lower bounds of λ_max(H)
(Cauchy interlacing).

    rows = hessjax.layer_curvature(loss_fn, params, (x, y), batch_size=256, key=key, k=2)
    print("\\n".join(hessjax.layers.markdown(rows)))
    hessjax.layers.figure(rows).savefig("layers.png")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from hessjax import blocks, eigen, estimators, tree

TRACE_METHODS = ("xtrace", "hutchpp", "hutchinson")

__all__ = ["LayerCurvature", "TRACE_METHODS", "figure", "layer_curvature", "markdown"]


@dataclasses.dataclass(frozen=True)
class LayerCurvature:
    """One layer's block ``H_ℓℓ``: ``eigenvalues`` its top ``k`` (largest first; ``lambda_max``
    = the first, ``lambda_min`` = the k-th), ``trace`` ± ``trace_error`` (0 when exact),
    ``num_params``, ``num_matvecs`` (eigen solve + trace), ``converged`` (the eigen solve)."""

    layer: str
    num_params: int
    eigenvalues: tuple[float, ...]
    trace: float
    trace_error: float
    num_matvecs: int
    converged: bool

    @property
    def lambda_max(self) -> float:
        return self.eigenvalues[0]

    @property
    def lambda_min(self) -> float:
        return self.eigenvalues[-1]

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.update(eigenvalues=list(self.eigenvalues), lambda_max=self.lambda_max,
                   lambda_min=self.lambda_min)  # fmt: skip
        return out


def layer_curvature(
    loss_fn: Callable,
    params: Any,
    data: Any,
    *,
    batch_size: int,
    key: jax.Array,
    k: int = 1,
    tol: float = 1e-3,
    max_matvecs: int | None = None,
    trace_matvecs: int = 30,
    trace_method: str = "xtrace",
    layers: Sequence[str] | None = None,
    mesh: Mesh | None = None,
) -> list[LayerCurvature]:
    """Top-``k`` eigenvalues and the trace of each layer's Hessian block, one row per layer.

    Args:
      loss_fn, params, data, batch_size, mesh: as :func:`hessjax.hessian_operator`.
      key: PRNG key (folded with the layer's index for the eigen solve and the trace).
      k, tol, max_matvecs: the Lanczos solve of each block (:func:`hessjax.eigenvalues`;
        ``k`` is capped at the layer's size).
      trace_matvecs, trace_method: the trace estimate of each block (:mod:`hessjax.estimators`:
        ``"xtrace"``, ``"hutchpp"`` or ``"hutchinson"``); exact when the layer has
        ``≤ trace_matvecs`` parameters.
      layers: layer names (default :func:`hessjax.blocks.layer_names` of ``params``).
    """
    if trace_method not in TRACE_METHODS:
        raise ValueError(f"trace_method must be one of {TRACE_METHODS}, got {trace_method!r}")
    names = blocks.layer_names(params) if layers is None else list(layers)
    known = blocks.layer_names(params)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown layers {unknown}; the layers of params are {known}")
    rows = []
    for i, name in enumerate(names):
        op = blocks.block_operator(
            loss_fn, params, data, select=blocks.layer_selector(name), batch_size=batch_size,
            mesh=mesh,
        )  # fmt: skip
        size = tree.flat_spec(op.params).shape[0]
        layer_key = jax.random.fold_in(key, i)
        eig = eigen.eigenvalues(
            op, op.params, k=min(k, size), tol=tol, max_matvecs=max_matvecs, key=layer_key
        )
        estimate = getattr(estimators, trace_method)
        trace_key = jax.random.fold_in(layer_key, 1)
        tr = estimate(op, op.params, num_matvecs=trace_matvecs, key=trace_key)
        rows.append(
            LayerCurvature(
                layer=name,
                num_params=int(size),
                eigenvalues=tuple(float(e) for e in np.asarray(eig.values)),
                trace=float(tr.value),
                trace_error=float(tr.error),
                num_matvecs=int(eig.num_matvecs) + int(tr.num_matvecs),
                converged=bool(eig.converged),
            )
        )
    return rows


def markdown(rows: Sequence[LayerCurvature]) -> list[str]:
    """Lines of a markdown table: layer, #params, λ_max, λ_min of the top k, trace ± error,
    matvecs."""
    k = max(len(r.eigenvalues) for r in rows)
    lines = [
        f"| layer | params | λ_max | λ_{k} (top-{k} min) | trace ± error | matvecs |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        err = f" ± {r.trace_error:.2g}" if r.trace_error else " (exact)"
        mark = "" if r.converged else " (not converged)"
        lines.append(
            f"| {r.layer} | {r.num_params:,} | {r.lambda_max:.4g}{mark} | {r.lambda_min:.4g} | "
            f"{r.trace:.4g}{err} | {r.num_matvecs} |"
        )
    return lines


def figure(rows: Sequence[LayerCurvature], title: str | None = None):
    """A matplotlib figure: λ_max (with λ_min of the top k) and the trace of each layer's block,
    bars side by side per layer (log axis when every value is positive)."""
    import matplotlib.pyplot as plt

    names = [r.layer for r in rows]
    xs = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(rows) + 4), 3.8))
    lam_max = np.array([r.lambda_max for r in rows])
    lam_min = np.array([r.lambda_min for r in rows])
    axes[0].bar(xs - 0.2, lam_max, 0.4, label=r"$\lambda_{max}$")
    if any(len(r.eigenvalues) > 1 for r in rows):
        k = max(len(r.eigenvalues) for r in rows)
        axes[0].bar(xs + 0.2, lam_min, 0.4, label=rf"$\lambda_{{{k}}}$ (top-{k} min)")
    axes[0].set_ylabel("eigenvalue of the layer's block")
    traces = np.array([r.trace for r in rows])
    axes[1].bar(xs, traces, 0.6, yerr=[r.trace_error for r in rows], color="C2")
    axes[1].set_ylabel("trace of the layer's block")
    for ax, values in ((axes[0], np.r_[lam_max, lam_min]), (axes[1], traces)):
        if np.all(values > 0) and values.max() / values.min() > 10:
            ax.set_yscale("log")
        ax.set_xticks(xs, names, rotation=30, ha="right", fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
