"""Matmul precision of curvature computations: full float32 unless the caller asks otherwise.

On NVIDIA GPUs since Ampere (A100, H100, H200), JAX computes float32 matmuls and convolutions with
TensorFloat-32 inputs (10 mantissa bits, relative rounding ~5e-4) unless told otherwise; TPUs use
bfloat16 passes. That is fine for training but not for a second derivative: on an H200, M1's and
C1's data-set HVPs at JAX's default precision were 0.6 % and 1.7 % off their float32 values, and
λ_max 1.2–5.1e-4 off, more than the Lanczos default tolerance of 1e-4
(benchmarks/matmul_precision.py; docs/benchmarks.md, "On an NVIDIA H200"). This module's default
took 1.01× (M1) and 1.09× (C1) the time per HVP there. On CPUs every setting is float32 and
nothing changes.

So the curvature entry points trace the model under :data:`CURVATURE_PRECISION` ("float32"):
:func:`hessjax.make_loss_fn` (every weight-Hessian tool takes its loss),
:func:`hessjax.gauss_newton_operator` and :func:`hessjax.input_hessian_eigenvalues` take
``precision=`` (None: the caller's ``jax.default_matmul_precision``, e.g. TF32 for speed).
Attacks and training keep the caller's precision. The precision is fixed when a function is
traced (``lax.dot_general`` records it), so derivatives of the model inherit it and an outer
``jax.jit`` cannot undo it.

The solvers' own products (Lanczos's Gram-Schmidt and Ritz vectors, power iteration's and the
trace estimators' dot products, sketches and projections) are traced at the same precision
(:func:`exact`): on TPUs JAX's default float32 product is one bfloat16 pass, which would undo the
orthogonality Lanczos relies on. They never trace the matvec, so ``precision=None`` on the model
still means the caller's setting.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import jax

#: Default ``precision`` of the curvature entry points (a ``jax.default_matmul_precision`` value).
CURVATURE_PRECISION: str | None = "float32"


def scope(precision: str | None) -> contextlib.AbstractContextManager:
    """``jax.default_matmul_precision(precision)``, or nothing for None (the caller's setting)."""
    if precision is None:
        return contextlib.nullcontext()
    return jax.default_matmul_precision(precision)


def _call_at(fn: Callable, precision: str, *args: Any, **kwargs: Any) -> Any:
    with scope(precision):
        return fn(*args, **kwargs)


@functools.lru_cache(maxsize=64)
def at(fn: Callable, precision: str | None) -> Callable:
    """``fn`` traced under ``precision`` (``fn`` itself for None). One wrapper per ``(fn,
    precision)``, so compiled functions that take it as a static argument are reused."""
    if precision is None:
        return fn
    return functools.partial(_call_at, fn, precision)


def exact(fn: Callable) -> Callable:
    """Decorator: ``fn``'s products traced at :data:`CURVATURE_PRECISION` (for solver linear
    algebra that never calls the model; put it below ``jax.jit``)."""
    return functools.wraps(fn)(functools.partial(_call_at, fn, CURVATURE_PRECISION))
