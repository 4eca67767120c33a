"""The loss around a trained model: along Hessian eigenvectors, and between two models.

docs/paper.md, "Loss landscape": Figs. 2 and 3 plot ``L(θ + t₁v₁ + t₂v₂)`` for the top Hessian
eigenvectors ``v₁, v₂`` (unit norm); Figs. 5, 10 and 11 plot the loss on the line
``(1 − α)·θ_a + α·θ_b`` between an original and a robust model, BatchNorm statistics interpolated
the same way. Every loss is the data-set mean cross-entropy in inference mode
(:func:`hessjax.evaluation.evaluate`: batched, padded, optionally sharded; one compilation serves
every point).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from hessjax._internal import ApplyFn
from hessjax.evaluation import evaluate

__all__ = [
    "interpolate",
    "interpolation",
    "landscape_1d",
    "landscape_2d",
    "losses_at",
    "shift",
]


def shift(params: Any, vectors: Any, coefficients: Sequence[float]) -> Any:
    """``θ + Σ_j c_j·v_j``; ``vectors`` is a pytree like ``params`` with a leading axis ≥ len(c)
    (e.g. ``EigenResult.vectors``), ``coefficients`` one number per direction used."""
    out = params
    for j, c in enumerate(coefficients):
        out = jax.tree_util.tree_map(
            lambda p, v, c=c, j=j: p + (c * v[j]).astype(p.dtype), out, vectors
        )
    return out


def losses_at(
    apply_fn: ApplyFn, variables: Any, x, y, vectors: Any, coefficients, **eval_kw
) -> np.ndarray:
    """(P,) ``L(θ + Σ_j c_pj·v_j)`` for every row ``c_p`` of ``coefficients`` (P, k), BN
    statistics of ``variables`` fixed. ``eval_kw``: ``batch_size``, ``mesh`` of
    :func:`hessjax.evaluation.evaluate`."""
    params = variables["params"]
    shifted = lambda c: {**variables, "params": shift(params, vectors, c)}
    return np.array([evaluate(apply_fn, shifted(c), x, y, **eval_kw)[0] for c in coefficients])


def landscape_1d(apply_fn: ApplyFn, variables: Any, x, y, vectors: Any, ts, **eval_kw):
    """(T,) ``L(θ + tᵢ·v₁)`` for every ``tᵢ`` in ``ts``; ``v₁ = vectors[0]`` (docs/paper.md,
    "Loss landscape", Fig. 2). ``variables`` are the model's (``params`` = θ, BN statistics
    fixed); ``eval_kw``: ``batch_size``, ``mesh``."""
    return losses_at(apply_fn, variables, x, y, vectors, [[t] for t in ts], **eval_kw)


def landscape_2d(apply_fn: ApplyFn, variables: Any, x, y, vectors: Any, ts, **eval_kw):
    """(T, T) ``loss[i, j] = L(θ + tᵢ·v₁ + tⱼ·v₂)`` (docs/paper.md, "Loss landscape", Fig. 3)."""
    grid = [[a, b] for a in ts for b in ts]
    losses = losses_at(apply_fn, variables, x, y, vectors, grid, **eval_kw)
    return losses.reshape(len(ts), len(ts))


def interpolate(variables_a: Any, variables_b: Any, alpha: float) -> Any:
    """``(1 − α)·a + α·b`` leaf by leaf: params and every other collection (BN statistics)."""
    return jax.tree_util.tree_map(
        lambda a, b: (1.0 - alpha) * a + alpha * b, variables_a, variables_b
    )


def interpolation(
    apply_fn: ApplyFn, variables_a: Any, variables_b: Any, x, y, alphas, **eval_kw
) -> dict[str, np.ndarray]:
    """``{"loss": (A,), "accuracy": (A,)}`` of the model :func:`interpolate` (a, b, αᵢ) on
    ``(x, y)`` for every ``αᵢ`` (α = 0: model a, α = 1: model b; docs/paper.md, Fig. 5).
    ``eval_kw``: ``batch_size``, ``mesh`` of :func:`hessjax.evaluation.evaluate`."""
    mix = lambda a: interpolate(variables_a, variables_b, float(a))
    values = [evaluate(apply_fn, mix(a), x, y, **eval_kw) for a in alphas]
    return {
        "loss": np.array([v[0] for v in values]),
        "accuracy": np.array([v[1] for v in values]),
    }
