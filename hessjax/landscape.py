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
from jax.sharding import Mesh

from hessjax._internal import ApplyFn
from hessjax.evaluation import evaluate

__all__ = ["interpolate", "interpolation", "landscape_1d", "landscape_2d", "shift"]


def shift(params: Any, vectors: Any, coefficients: Sequence[float]) -> Any:
    """``θ + Σ_j c_j·v_j``; ``vectors`` is a pytree like ``params`` with a leading axis ≥ len(c)
    (e.g. ``EigenResult.vectors``), ``coefficients`` one number per direction used."""
    out = params
    for j, c in enumerate(coefficients):
        out = jax.tree_util.tree_map(
            lambda p, v, c=c, j=j: p + (c * v[j]).astype(p.dtype), out, vectors
        )
    return out


def _loss_at(apply_fn, variables, params, x, y, batch_size, mesh) -> float:
    return evaluate(apply_fn, {**variables, "params": params}, x, y, batch_size, mesh=mesh)[0]


def landscape_1d(
    apply_fn: ApplyFn,
    variables: Any,
    x,
    y,
    vectors: Any,
    ts: Sequence[float],
    *,
    batch_size: int = 1000,
    mesh: Mesh | None = None,
) -> np.ndarray:
    """(T,) ``L(θ + tᵢ·v₁)`` for every ``tᵢ`` in ``ts``; ``v₁ = vectors[0]`` (docs/paper.md,
    Fig. 2). ``variables`` are the model's (``params`` = θ, BN statistics kept fixed)."""
    params = variables["params"]
    return np.array(
        [
            _loss_at(apply_fn, variables, shift(params, vectors, [t]), x, y, batch_size, mesh)
            for t in ts
        ]
    )


def landscape_2d(
    apply_fn: ApplyFn,
    variables: Any,
    x,
    y,
    vectors: Any,
    ts: Sequence[float],
    *,
    batch_size: int = 1000,
    mesh: Mesh | None = None,
) -> np.ndarray:
    """(T, T) ``loss[i, j] = L(θ + tᵢ·v₁ + tⱼ·v₂)`` (docs/paper.md, Fig. 3)."""
    params = variables["params"]
    return np.array(
        [
            [
                _loss_at(
                    apply_fn, variables, shift(params, vectors, [a, b]), x, y, batch_size, mesh
                )
                for b in ts
            ]
            for a in ts
        ]
    )


def interpolate(variables_a: Any, variables_b: Any, alpha: float) -> Any:
    """``(1 − α)·a + α·b`` leaf by leaf: params and every other collection (BN statistics)."""
    return jax.tree_util.tree_map(
        lambda a, b: (1.0 - alpha) * a + alpha * b, variables_a, variables_b
    )


def interpolation(
    apply_fn: ApplyFn,
    variables_a: Any,
    variables_b: Any,
    x,
    y,
    alphas: Sequence[float],
    *,
    batch_size: int = 1000,
    mesh: Mesh | None = None,
) -> dict[str, np.ndarray]:
    """``{"loss": (A,), "accuracy": (A,)}`` of the model :func:`interpolate` (a, b, αᵢ) on
    ``(x, y)`` for every ``αᵢ`` (α = 0: model a, α = 1: model b; docs/paper.md, Fig. 5)."""
    values = [
        evaluate(
            apply_fn, interpolate(variables_a, variables_b, float(a)), x, y, batch_size, mesh=mesh
        )
        for a in alphas
    ]
    return {
        "loss": np.array([v[0] for v in values]),
        "accuracy": np.array([v[1] for v in values]),
    }
