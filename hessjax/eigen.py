"""Top-k eigenpairs of a symmetric operator given only as a matvec (e.g. a Hessian operator).

Two methods, both compiled end to end (``lax`` loops; the number of iterations never changes
the compiled program):

* ``"lanczos"``: Lanczos with full reorthogonalisation (:mod:`hessjax.lanczos`); stops as soon as
  the k largest Ritz pairs all satisfy ``‖A v − θ v‖ ≤ tol · max|θ|``.
* ``"power"``: the paper's method (Yao et al. 2018; PyHessian ``hessian.eigenvalues``): power
  iteration, one eigenpair after another, each iterate orthonormalised against the eigenvectors
  already found (deflation); stops when ``|λ − λ_prev| ≤ tol · |λ_prev|``. Power iteration finds
  the eigenvalues of largest *magnitude*: the same as the largest algebraic ones when the top of
  the spectrum dominates (trained networks), not when large negative eigenvalues exist.

Both stop at the first matvec that returns NaN or inf and raise :class:`NonFiniteError` (a
``FloatingPointError``) naming the likely causes, instead of iterating on NaN. Under an outer
``jax.jit`` nothing can be raised: the loop still stops there and the results are NaN with
``converged=False``.
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

__all__ = ["METHODS", "EigenResult", "NonFiniteError", "default_max_matvecs", "eigenvalues"]

METHODS = ("lanczos", "power")


class EigenResult(NamedTuple):
    """``values`` (k,) largest algebraic first; ``vectors`` pytree like params with leading axis k,
    unit norm; ``residuals`` (k,) ``‖H v − λ v‖``; ``num_matvecs`` () matvecs used;
    ``converged`` () whether the stopping rule was met within ``max_matvecs``."""

    values: jax.Array
    vectors: Any
    residuals: jax.Array
    num_matvecs: jax.Array
    converged: jax.Array


def _unit(v: jax.Array) -> jax.Array:
    return v / jnp.linalg.norm(v)


def _lanczos_converged(state, k, tol, num_steps):
    """Whether the top-k Ritz pairs satisfy ``|β_j s_{j,i}| ≤ tol · max|θ|``."""
    values, vectors, _ = lanczos.ritz(state)
    last_beta = state.betas[state.step - 1]
    residuals = jnp.abs(last_beta * vectors[state.step - 1, -k:])
    smallest_active = values[num_steps - state.step]
    bound = tol * jnp.maximum(jnp.abs(values[-1]), jnp.abs(smallest_active))
    converged = (state.step >= k) & jnp.all(residuals <= bound)
    # After a breakdown the restarted block explores the orthogonal complement (repeated
    # eigenvalues live there); stop only once its top Ritz pair is converged and below θ_k.
    block_start = lanczos.last_block_start(state)
    block_values, block_vectors, _ = lanczos.ritz(state, block_start)
    block_residual = jnp.abs(last_beta * block_vectors[state.step - 1, -1])
    complement_done = (block_values[-1] <= values[-k] + bound) & (block_residual <= bound)
    return converged & ((block_start == 0) | complement_done)


@functools.partial(jax.jit, static_argnames=("k",))
@precision.exact
def _top_ritz_pairs(state, k):
    values, vectors, _ = lanczos.ritz(state)
    top = vectors[:, ::-1][:, :k]  # (m, k) largest first
    residuals = jnp.abs(state.betas[state.step - 1] * top[state.step - 1])
    ritz_vectors = jax.vmap(_unit)(top.T @ state.basis[:-1])
    return values[::-1][:k], ritz_vectors, residuals


# The solvers' loop pieces are module-level functions (built once per static ``k``) and every
# other setting travels in the carry, so with host loops :func:`hessjax.loops.matvec_loop`
# compiles them once per shape, not once per ``eigenvalues`` call.


def _lanczos_prepare(carry):
    return lanczos.current(carry[0])


def _lanczos_continue(carry):
    state, converged = carry[0], carry[1]
    return (~converged) & (state.step < state.alphas.shape[0])


@functools.cache
def _lanczos_update(k: int):
    def update(carry, w):
        state, _, key, tol = carry
        state = lanczos.absorb(state, w, key)
        return state, _lanczos_converged(state, k, tol, state.alphas.shape[0]), key, tol

    return update


def _solver_name(method: str) -> str:
    return f"hessjax.eigenvalues(method={method!r})"


def _lanczos_top_k(mv, v0, key, k, tol, num_steps, host):
    carry = (lanczos.init(v0, num_steps), jnp.zeros((), bool), key, jnp.asarray(tol, v0.dtype))
    (state, converged, _, _), bad = lanczos.guarded_matvec_loop(
        mv,
        _lanczos_prepare,
        _lanczos_update(k),
        _lanczos_continue,
        carry,
        host=host,
        solver=_solver_name("lanczos"),
    )
    values, vectors, residuals = _top_ritz_pairs(state, k)
    return values, vectors, residuals, state.step, converged, bad


def _deflate(found, w):
    return _unit(lanczos._orthogonalize(found, w))


def _power_prepare(carry):
    return carry[1]["v"]


def _power_continue(carry):
    s = carry[1]
    return (~s["done"]) & (s["it"] < s["max_iters"])


@precision.exact
def _power_update(carry, hv):
    found, s = carry
    lam = jnp.vdot(s["v"], hv)
    converged = (s["it"] > 0) & (jnp.abs(lam - s["lam"]) <= s["tol"] * jnp.abs(s["lam"]))
    hv_norm = jnp.linalg.norm(hv)  # Hv = 0: v spans the null space, λ = 0 is exact
    nxt = jnp.where(hv_norm > 0, hv / jnp.where(hv_norm > 0, hv_norm, 1), s["v"])
    done = converged | (hv_norm == 0)
    s = dict(s, v=_deflate(found, nxt), rq_v=s["v"], hv=hv, lam=lam, it=s["it"] + 1, done=done)
    return found, s


def _power_pair(mv, found, i, key, tol, max_iters, host, bad, done):
    """Eigenpair i by power iteration, orthonormalising each iterate against ``found`` rows.
    ``bad``/``done``: see :func:`hessjax.lanczos.guarded_matvec_loop`."""
    n, dtype = found.shape[1], found.dtype
    start = jax.random.normal(jax.random.fold_in(key, i), (n,), dtype)
    zero = lambda shape, dt=dtype: jnp.zeros(shape, dt)  # distinct buffers (donated carry)
    s = dict(
        v=_deflate(found, start), rq_v=zero(n), hv=zero(n), lam=zero(()), it=zero((), jnp.int32)
    )
    s.update(done=zero((), bool), tol=jnp.asarray(tol, dtype))
    s["max_iters"] = jnp.asarray(max_iters, jnp.int32)
    (found, s), bad = lanczos.guarded_matvec_loop(
        mv,
        _power_prepare,
        _power_update,
        _power_continue,
        (found, s),
        host=host,
        solver=_solver_name("power"),
        bad=bad,
        done=done,
    )
    residual = jnp.linalg.norm(s["hv"] - s["lam"] * s["rq_v"])
    return found, s["rq_v"], s["lam"], residual, s["it"], s["done"], bad


def _power_top_k(mv, key, k, tol, max_iters, n, dtype, host):
    def one_pair(i, carry):
        found, values, residuals, count, all_converged, bad = carry
        done_before = int(count) if host else 0  # host: for the error message only
        found, v, lam, res, its, done, bad = _power_pair(
            mv, found, i, key, tol, max_iters, host, bad, done_before
        )
        return (
            found.at[i].set(v),
            values.at[i].set(lam),
            residuals.at[i].set(res),
            count + its,
            all_converged & done,
            bad,
        )

    carry = (
        jnp.zeros((k, n), dtype),
        jnp.zeros((k,), dtype),
        jnp.zeros((k,), dtype),
        jnp.zeros((), jnp.int32),
        jnp.ones((), bool),
        False if host else jnp.zeros((), bool),
    )
    if host:
        for i in range(k):
            carry = one_pair(i, carry)
    else:  # a pair started after a non-finite matvec runs no matvec (``bad`` is carried)
        carry = jax.lax.fori_loop(0, k, one_pair, carry)
    found, values, residuals, count, converged, bad = carry
    order = jnp.argsort(-values)
    return values[order], found[order], residuals[order], count, converged, bad


def _eigenvalues_impl(matvec, params, key, *, k, method, tol, max_matvecs, host):
    flat = tree.flat_spec(params)
    mv = tree.flat_matvec(matvec, params)
    n, dtype = flat.shape[0], flat.dtype
    if method == "lanczos":
        v0 = jax.random.normal(key, (n,), dtype)
        out = _lanczos_top_k(mv, v0, jax.random.fold_in(key, 1), k, tol, max_matvecs, host)
    else:
        out = _power_top_k(mv, key, k, tol, max_matvecs // k, n, dtype, host)
    values, flat_vectors, residuals, count, converged, bad = out
    if bad is not False:  # one XLA program: NaN results where a matvec was not finite
        values, flat_vectors, residuals = (
            jnp.where(bad, jnp.nan, a) for a in (values, flat_vectors, residuals)
        )
        converged = converged & ~bad
    result = EigenResult(
        values, tree.unravel_rows(flat_vectors, params), residuals, count, converged
    )
    return result, bad


_eigenvalues_compiled = jax.jit(
    functools.partial(_eigenvalues_impl, host=False),
    static_argnames=("k", "method", "tol", "max_matvecs"),
)


def default_max_matvecs(k: int, method: str, n: int) -> int:
    """Lanczos: ``min(n, max(8k, 64))`` basis vectors; power: 100 iterations per eigenpair."""
    return min(n, max(8 * k, 64)) if method == "lanczos" else 100 * k


def eigenvalues(
    matvec: Callable,
    params: Any,
    *,
    k: int = 1,
    method: str = "lanczos",
    tol: float = 1e-4,
    max_matvecs: int | None = None,
    key: jax.Array,
) -> EigenResult:
    """The ``k`` largest eigenvalues (and unit eigenvectors) of the symmetric ``matvec``.

    Args:
      matvec: ``v -> A v`` on pytrees shaped like ``params``, e.g. :func:`hessian_operator`.
      params: defines the vector space (structure, shapes, dtype); its values are not used.
      k: number of eigenpairs.
      method: ``"lanczos"`` (default; fewest matvecs) or ``"power"`` (the paper's deflated power
        iteration; largest-magnitude eigenvalues, see the module docstring).
      tol: Lanczos: ``max_i ‖A vᵢ − θᵢ vᵢ‖ ≤ tol · max|θ|``; power: relative change of each
        eigenvalue between iterations ``≤ tol`` (default 1e-4, a choice: docs/paper.md, "Choices
        where the paper is silent"; the authors' code used 1e-3).
      max_matvecs: Lanczos: Krylov dimension cap (memory ``(max_matvecs + 1) · P`` floats);
        power: total budget, ``max_matvecs // k`` iterations per eigenpair.
        Default :func:`default_max_matvecs`.
      key: PRNG key for the starting vectors.

    Returns:
      :class:`EigenResult`; check ``converged`` and ``residuals``.

    Raises:
      NonFiniteError: (a ``FloatingPointError``) as soon as a matvec returns NaN or inf: NaN/inf
        in params or data, a diverged model, or an operator returning NaN. Under an outer
        ``jax.jit`` it cannot be raised: the solver stops there and returns NaN values and
        residuals with ``converged=False``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    n = tree.flat_spec(params).shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of parameters ({n}), got {k}")
    if tol <= 0:
        raise ValueError(f"tol must be positive, got {tol}")
    if max_matvecs is None:
        max_matvecs = default_max_matvecs(k, method, n)
    if max_matvecs < k:
        raise ValueError(f"max_matvecs={max_matvecs} must be at least k={k}")
    if method == "lanczos":
        max_matvecs = min(max_matvecs, n)
    options = dict(k=k, method=method, tol=float(tol), max_matvecs=max_matvecs)
    with lanczos.explain_nonfinite(matvec):
        if loops.solver_on_host((matvec, params, key), "hessjax.eigenvalues"):
            return _eigenvalues_impl(matvec, params, key, **options, host=True)[0]
        result, bad = _eigenvalues_compiled(_as_partial(matvec), params, key, **options)
        lanczos.raise_if_bad(bad, _solver_name(method), result.num_matvecs)
    return result
