"""Trace and spectral density of a symmetric operator from matvecs alone.

* :func:`trace`: Hutchinson, ``tr(A) ≈ (1/s) Σᵢ zᵢᵀ A zᵢ`` with Rademacher ``zᵢ``
  (Hutchinson 1990; PyHessian ``hessian.trace``). Variance ``2 Σ_{i≠j} A_ij² / s``.
* :func:`density`: stochastic Lanczos quadrature (Golub & Meurant; Ghorbani et al. 2019; PyHessian
  ``hessian.density``): each run does ``num_steps`` Lanczos steps from a random unit vector ``v``;
  the Ritz values ``θ_j`` and squared first components ``w_j = (s_j)₀²`` of ``T``'s eigenvectors
  form a quadrature for ``vᵀ f(A) v``, so ``ρ(t) ≈ mean_runs Σ_j w_j N(t; θ_j, σ²)``.

Both stop at the first matvec that returns NaN or inf and raise
:class:`~hessjax.lanczos.NonFiniteError` (a ``FloatingPointError``) naming the likely causes.
Under an outer ``jax.jit`` nothing can be raised: the loop stops there and the results are NaN.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from hessjax import lanczos, loops, precision, tree
from hessjax._internal import as_partial as _as_partial
from hessjax.lanczos import NonFiniteError

__all__ = [
    "NonFiniteError",
    "Quadrature",
    "density",
    "smooth_density",
    "spectral_quadrature",
    "trace",
    "trace_samples",
]

_TRACE = "hessjax.trace / trace_samples"
_DENSITY = "hessjax.density / spectral_quadrature"


def _trace_samples_impl(matvec, params, key, *, num_samples, host):
    flat = tree.flat_spec(params)
    probe = lambda i: jax.random.rademacher(jax.random.fold_in(key, i), flat.shape, flat.dtype)

    @precision.exact
    def update(carry, az):
        i, samples = carry
        return i + 1, samples.at[i].set(jnp.vdot(probe(i), az))

    (count, samples), bad = lanczos.guarded_matvec_loop(
        tree.flat_matvec(matvec, params),
        lambda c: probe(c[0]),
        update,
        lambda c: c[0] < num_samples,
        (jnp.zeros((), jnp.int32), jnp.zeros((num_samples,), flat.dtype)),
        host=host,
        solver=_TRACE,
    )
    if bad is not False:  # one XLA program: all NaN after a non-finite matvec
        samples = jnp.where(bad, jnp.nan, samples)
    return samples, bad, count


_trace_samples_compiled = jax.jit(
    functools.partial(_trace_samples_impl, host=False), static_argnames=("num_samples",)
)


def trace(matvec: Callable, params: Any, *, num_samples: int, key: jax.Array) -> jax.Array:
    """Hutchinson estimate of ``tr(A)`` from ``num_samples`` Rademacher probes (one matvec each).

    Returns a scalar; :func:`trace_samples` gives the per-probe values ``zᵢᵀ A zᵢ`` for error bars.
    Raises ``NonFiniteError`` at the first matvec returning NaN/inf (NaN under an outer jit).
    """
    return jnp.mean(trace_samples(matvec, params, num_samples=num_samples, key=key))


def trace_samples(matvec: Callable, params: Any, *, num_samples: int, key: jax.Array) -> jax.Array:
    """(num_samples,) values ``zᵢᵀ A zᵢ``; their mean is the trace estimate, std/√s its error."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    with lanczos.explain_nonfinite(matvec):
        if loops.solver_on_host((matvec, params, key), "hessjax.trace"):
            return _trace_samples_impl(matvec, params, key, num_samples=num_samples, host=True)[0]
        samples, bad, count = _trace_samples_compiled(
            _as_partial(matvec), params, key, num_samples=num_samples
        )
        lanczos.raise_if_bad(bad, _TRACE, count)
    return samples


class Quadrature(NamedTuple):
    """SLQ nodes and weights, (num_runs, num_steps) each; each run's weights sum to 1."""

    nodes: jax.Array
    weights: jax.Array


def _quadrature_impl(matvec, params, key, *, num_steps, num_runs, host):
    flat = tree.flat_spec(params)
    mv = tree.flat_matvec(matvec, params)

    def one_run(k, bad, done):
        v0 = jax.random.rademacher(k, flat.shape, flat.dtype)
        key_run = jax.random.fold_in(k, 1)
        state, bad = lanczos.run(
            mv, v0, num_steps, key_run, host=host, solver=_DENSITY, bad=bad, done=done
        )
        values, vectors, _ = lanczos.ritz(state)
        return (values, vectors[0] ** 2), bad, state.step

    keys = jax.random.split(key, num_runs)
    if host:
        runs = [one_run(k, False, i * num_steps)[0] for i, k in enumerate(keys)]
        quad = Quadrature(*(jnp.stack(parts) for parts in zip(*runs, strict=True)))
        return quad, False, num_runs * num_steps

    def body(carry, k):  # a run started after a non-finite matvec runs no matvec
        bad, count = carry
        out, bad, steps = one_run(k, bad, 0)
        return (bad, count + steps), out

    init = (jnp.zeros((), bool), jnp.zeros((), jnp.int32))
    (bad, count), (nodes, weights) = jax.lax.scan(body, init, keys)
    nodes, weights = (jnp.where(bad, jnp.nan, a) for a in (nodes, weights))
    return Quadrature(nodes, weights), bad, count


_quadrature_compiled = jax.jit(
    functools.partial(_quadrature_impl, host=False), static_argnames=("num_steps", "num_runs")
)


def spectral_quadrature(
    matvec: Callable, params: Any, *, num_steps: int, num_runs: int, key: jax.Array
) -> Quadrature:
    """Stochastic Lanczos quadrature nodes/weights (``num_steps`` matvecs per run).

    Raises ``NonFiniteError`` at the first matvec returning NaN/inf (NaN under an outer jit).
    """
    n = tree.flat_spec(params).shape[0]
    if not 1 <= num_steps <= n:
        raise ValueError(f"num_steps must be in [1, {n}] (the operator's size), got {num_steps}")
    if num_runs < 1:
        raise ValueError(f"num_runs must be >= 1, got {num_runs}")
    options = dict(num_steps=num_steps, num_runs=num_runs)
    with lanczos.explain_nonfinite(matvec):
        if loops.solver_on_host((matvec, params, key), "hessjax.density"):
            return _quadrature_impl(matvec, params, key, **options, host=True)[0]
        quad, bad, count = _quadrature_compiled(_as_partial(matvec), params, key, **options)
        lanczos.raise_if_bad(bad, _DENSITY, count)
    return quad


def smooth_density(
    quadrature: Quadrature, *, grid_size: int = 1000, sigma: float | None = None, margin=0.01
) -> tuple[jax.Array, jax.Array]:
    """Gaussian-smoothed density of a quadrature on a uniform grid.

    ``σ² = 1e-5 (λ_max − λ_min)²`` by default (PyHessian's ``sigma_squared=1e-5`` in units of the
    spectral range); the grid spans ``[λ_min, λ_max]`` widened by ``margin`` of the range.
    Returns ``(grid, density)`` of shape (grid_size,), ``density`` integrating to ~1.
    """
    nodes, weights = quadrature.nodes, quadrature.weights
    lo, hi = jnp.min(nodes), jnp.max(nodes)
    width = jnp.maximum(hi - lo, 1e-12 * jnp.maximum(jnp.abs(hi), 1.0))
    if sigma is None:
        sigma = jnp.sqrt(1e-5) * width
    grid = jnp.linspace(lo - margin * width - 3 * sigma, hi + margin * width + 3 * sigma, grid_size)
    gauss = jnp.exp(-0.5 * ((grid[:, None] - nodes.reshape(-1)[None]) / sigma) ** 2)
    gauss = gauss / (sigma * jnp.sqrt(2 * jnp.pi))
    return grid, gauss @ weights.reshape(-1) / nodes.shape[0]


def density(
    matvec: Callable,
    params: Any,
    *,
    num_steps: int,
    num_runs: int,
    key: jax.Array,
    grid_size: int = 1000,
    sigma: float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Spectral density of ``A`` by SLQ -> ``(grid, density)``; see :func:`smooth_density`."""
    quad = spectral_quadrature(matvec, params, num_steps=num_steps, num_runs=num_runs, key=key)
    return smooth_density(quad, grid_size=grid_size, sigma=sigma)
