"""Trace and diagonal of a symmetric operator from a budget of matvecs, with error estimates.

Same calling convention as :func:`hessjax.trace`: ``(matvec, params, *, num_matvecs, key)``;
``num_matvecs`` is the exact number of matvecs spent. Probes ``ω`` have ``E ωωᵀ = I``:
Rademacher, except XTrace's Gaussian ones. ``A`` is ``n × n``, ``n`` the size of the raveled
``params``.

* :func:`hutchinson`: ``(1/m) Σᵢ ωᵢᵀAωᵢ`` (as :func:`hessjax.trace`, plus its standard error).
* :func:`hutchpp`: Hutch++ (Meyer, Musco, Musco & Woodruff 2021): ``Q = orth(A S)`` from
  ``m/3`` probes, ``tr(QᵀAQ)`` exactly, plus Hutchinson on the deflated
  ``(I − QQᵀ)A(I − QQᵀ)`` with the remaining probes. Error: the standard error of that
  Hutchinson part (the low-rank part is exact).
* :func:`xtrace`: XTrace (Epperly, Tropp & Webber 2024), the exchangeable Hutch++: ``k = m/2``
  Gaussian probes ``Ω``, ``Y = AΩ = QR``, ``Z = AQ``; for each ``i``, ``Q₍ᵢ₎`` spans ``AΩ``
  without column ``i`` (``Q(I − sᵢsᵢᵀ)`` with ``sᵢ`` the unit ``i``-th column of ``R⁻ᵀ``), and
  ``tᵢ = tr(Q₍ᵢ₎ᵀAQ₍ᵢ₎) + γᵢ ωᵢᵀ(I − P₍ᵢ₎)A(I − P₍ᵢ₎)ωᵢ`` is unbiased (``ωᵢ`` is independent of
  ``P₍ᵢ₎``), with the resphering factor ``γᵢ = (n − k + 1)/‖(I − P₍ᵢ₎)ωᵢ‖²`` (Epperly 2025); the
  estimate is ``mean tᵢ``, its error ``std(tᵢ)/√k``. After the ``m`` matvecs everything is
  ``k × k`` algebra plus a few ``(k, n)`` products.
* :func:`xnystrace`: XNysTrace (Epperly, Tropp & Webber 2024), for **PSD** ``A`` only (GGN,
  Fisher, softmax regression's Hessian): all ``m`` matvecs go into one Gaussian sketch
  ``Y = AΩ``. The Nyström approximation ``Â = Y H⁺ Yᵀ`` (``H = ΩᵀY``, ``m × m``) reproduces
  ``A`` on the span of ``Ω``; leaving out probe ``i`` changes it by a rank-one term,
  ``Â₍ᵢ₎ = Â − zᵢzᵢᵀ`` with ``zᵢ = Y H⁺eᵢ / √(H⁺)ᵢᵢ``, and because ``A − Â₍ᵢ₎`` vanishes on
  the other probes, ``ωᵢᵀ(A − Â₍ᵢ₎)ωᵢ = (zᵢᵀωᵢ)²`` needs no further matvec. Samples
  ``tᵢ = tr Â₍ᵢ₎ + γᵢ (zᵢᵀωᵢ)²`` with XTrace's resphering ``γᵢ = (n − m + 1)/‖(I − P₍ᵢ₎)ωᵢ‖²``
  (``P₍ᵢ₎`` the projector on the other probes); estimate ``mean tᵢ``, error ``std(tᵢ)/√m``.
  ``H⁺`` drops eigenvalues below ``m·ε·λ_max(H)``; a probe whose removal does not change the
  rank of ``H`` has ``zᵢ = 0``. On an indefinite ``A`` the result is meaningless.
* :func:`diagonal`: ``diag(A)``: ``method="hutchinson"`` (Bekas, Kokiopoulou & Saad 2007):
  ``mean ωᵢ ⊙ Aωᵢ``; ``method="xdiag"`` (Epperly et al. 2024): with ``Q₍ᵢ₎`` as in XTrace,
  ``dᵢ = diag(P₍ᵢ₎A) + ωᵢ ⊙ (I − P₍ᵢ₎)Aωᵢ``, estimate ``mean dᵢ``, error ``std(dᵢ)/√(m/2)``
  per entry.

When ``n ≤ num_matvecs`` each function returns the exact value from the ``n`` unit vectors
(``n`` matvecs, error 0): a small block of a Hessian costs no more than its estimate.

Like the other solvers, these stop at the first matvec returning NaN/inf and raise
:class:`~hessjax.NonFiniteError` (NaN results under an outer ``jax.jit``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from hessjax import lanczos, linalg, loops, precision, tree
from hessjax._internal import as_partial, check_positive_int

__all__ = [
    "DiagonalEstimate",
    "TraceEstimate",
    "diagonal",
    "hutchinson",
    "hutchpp",
    "xnystrace",
    "xtrace",
]

#: Fewest matvecs per method (XTrace / XDiag need two probes for their error estimate).
MIN_MATVECS = {
    "hutchinson": 2,
    "hutchpp": 3,
    "xtrace": 4,
    "xnystrace": 2,
    "hutchinson_diag": 2,
    "xdiag": 4,
}


class TraceEstimate(NamedTuple):
    """``value`` () the trace estimate; ``error`` () its estimated standard error;
    ``num_matvecs`` () matvecs spent."""

    value: jax.Array
    error: jax.Array
    num_matvecs: jax.Array


class DiagonalEstimate(NamedTuple):
    """``value`` and ``error`` (per-entry standard error) are pytrees shaped like the params;
    ``num_matvecs`` () matvecs spent."""

    value: Any
    error: Any
    num_matvecs: jax.Array


# ----------------------------------------------------------------------------- matvec blocks


def _row_prepare(carry):
    return carry[1][carry[0]]


def _row_update(carry, w):
    i, rows, out = carry
    return i + 1, rows, out.at[i].set(w.astype(out.dtype))


def _row_continue(carry):
    return carry[0] < carry[1].shape[0]


def _apply_rows(mv, rows, *, host, solver, bad, done):
    """``A rows`` row by row, (m, n) -> (m, n), through the guarded loop: ``(rows, out, bad)``
    (``rows`` is returned because host loops donate the loop carry)."""
    carry = (jnp.zeros((), jnp.int32), rows, jnp.zeros_like(rows))
    (_, rows, out), bad = lanczos.guarded_matvec_loop(
        mv, _row_prepare, _row_update, _row_continue, carry,
        host=host, solver=solver, bad=bad, done=done,
    )  # fmt: skip
    return rows, out, bad


# ----------------------------------------------------------------------------- the estimators


def _mean_and_error(samples):
    """Mean over axis 0 and its standard error ``std/√m`` (sample std, ddof=1)."""
    m = samples.shape[0]
    return samples.mean(0), samples.std(0, ddof=1) / jnp.sqrt(m)


# The pieces between the blocks of matvecs are compiled once per shape (with host loops they
# would otherwise run op by op); inside an outer jit they are inlined.


@functools.partial(jax.jit, static_argnames=("method", "num_matvecs", "n", "dtype"))
def _probes(key, *, method, num_matvecs, n, dtype):
    """The random rows of ``method``: Hutchinson's probes (those of :func:`hessjax.trace`), the
    Hutch++ sketch and its deflated probes, or the XTrace/XDiag probes."""
    if method in ("hutchinson", "hutchinson_diag"):
        keys = jax.vmap(functools.partial(jax.random.fold_in, key))(jnp.arange(num_matvecs))
        return jax.vmap(lambda k: jax.random.rademacher(k, (n,), dtype))(keys), None
    if method == "hutchpp":
        k = num_matvecs // 3
        g = jax.random.rademacher(jax.random.fold_in(key, 1), (num_matvecs - 2 * k, n), dtype)
        return jax.random.rademacher(key, (k, n), dtype), g
    if method == "xtrace":  # rotation-invariant probes: the residual term is resphered
        return jax.random.normal(key, (num_matvecs // 2, n), dtype), None
    if method == "xnystrace":  # one Gaussian sketch of all the matvecs
        return jax.random.normal(key, (num_matvecs, n), dtype), None
    return jax.random.rademacher(key, (num_matvecs // 2, n), dtype), None


@jax.jit
def _qr(y):
    """``Y = AΩ`` rows (k, n) -> ``(Qᵀ, R)``: Qᵀ (k, n) orthonormal rows, R (k, k)."""
    q, r = linalg.qr(y.T)
    return q.T, r


@jax.jit
@precision.exact
def _deflate(rows, qt):
    """``rows (I − QQᵀ)`` for ``Qᵀ`` (k, n) with orthonormal rows."""
    return rows - (rows @ qt.T) @ qt


@functools.partial(jax.jit, static_argnames=("diag",))
def _finish_hutchinson(probes, y, *, diag):
    return _mean_and_error(probes * y if diag else jnp.sum(probes * y, axis=1))


@jax.jit
def _finish_hutchpp(qt, z, g, ag):
    mean, error = _mean_and_error(jnp.sum(g * _deflate(ag, qt), axis=1))
    return jnp.sum(qt * z) + mean, error


def _inverse_transpose(r):
    """``R⁻ᵀ`` of an upper-triangular ``R`` (k, k); its ``i``-th column is orthogonal to every
    column of ``R`` but the ``i``-th (the leave-one-out direction of a QR factorisation)."""
    return linalg.solve_upper_triangular(r, jnp.eye(r.shape[0], dtype=r.dtype)).T


def _exchangeable(probes, y, z, q, r):
    """Pieces shared by XTrace and XDiag: ``S`` (unit columns of ``R⁻ᵀ``), ``H = QᵀAQ``,
    ``W = QᵀΩ``. ``probes``/``y`` (k, n) rows ``ωᵢ`` / ``Aωᵢ``; ``q``/``z`` (n, k) ``Q`` /
    ``AQ``; ``r`` (k, k)."""
    s = _inverse_transpose(r)
    s = s / jnp.linalg.norm(s, axis=0)
    return s, q.T @ z, q.T @ probes.T


def _xtrace(probes, y, z, q, r):
    """(k,) exchangeable samples ``tᵢ`` (see the module docstring)."""
    s, h, w = _exchangeable(probes, y, z, q, r)
    t = z.T @ probes.T  # T[:, i] = Zᵀωᵢ = QᵀAωᵢ
    d = jnp.sum(probes * y, axis=1)  # ωᵢᵀAωᵢ
    hs, hw = h @ s, h @ w
    col = lambda a, b: jnp.sum(a * b, axis=0)
    shs, c = col(s, hs), col(s, w)
    # ωᵢ − P₍ᵢ₎ωᵢ = (I − QQᵀ)ωᵢ + cᵢQsᵢ, expanded with Aωᵢ = yᵢ, AQ = Z:
    residual = d - 2 * col(t, w) + col(w, hw) + 2 * c * (col(t, s) - col(w, hs)) + c**2 * shs
    # Resphering (Epperly 2025; matfree's default): the Gaussian ωᵢ projected on the residual
    # space (dimension n − k + 1) is rescaled to squared norm n − k + 1 (still unbiased).
    n, k = probes.shape[1], probes.shape[0]
    projected = jnp.sum(probes**2, axis=1) - (col(w, w) - c**2)  # ‖(I − P₍ᵢ₎)ωᵢ‖²
    scale = (n - k + 1) / jnp.where(projected > 0, projected, 1)
    return jnp.trace(h) - shs + scale * residual


@jax.jit
@precision.exact
def _finish_xnystrace(probes, y):
    """(mean, error) of the ``m`` XNysTrace samples ``tᵢ`` (module docstring); ``probes``/``y``
    (m, n) rows ``ωᵢ`` / ``Aωᵢ``."""
    m, n = probes.shape
    h = probes @ y.T
    vals, vecs = linalg.eigh((h + h.T) / 2)
    keep = vals > m * jnp.finfo(vals.dtype).eps * vals[-1]
    root = jnp.where(keep, vecs / jnp.sqrt(jnp.where(keep, vals, 1)), 0)  # L: LLᵀ = H⁺
    f = y.T @ root  # Â = FFᵀ
    row_norms = jnp.linalg.norm(root, axis=1)  # √(H⁺)ᵢᵢ
    essential = jnp.sum(jnp.where(keep, vecs, 0) ** 2, axis=1) > 1 - jnp.sqrt(
        jnp.finfo(vals.dtype).eps
    )
    z = (f @ root.T) / jnp.where(essential, row_norms, 1)
    z = jnp.where(essential, z, 0)  # (n, m): Â₍ᵢ₎ = Â − zᵢzᵢᵀ
    low_rank = jnp.sum(f**2) - jnp.sum(z**2, axis=0)
    residual = jnp.sum(z * probes.T, axis=0) ** 2
    # ‖(I − P₍ᵢ₎)ωᵢ‖² = 1/‖T⁻ᵀeᵢ‖² for Ω = QT (the projection leaves cᵢQsᵢ, cᵢ = sᵢᵀtᵢ)
    projected = 1 / jnp.sum(_inverse_transpose(linalg.qr_r(probes.T)) ** 2, axis=0)
    return _mean_and_error(low_rank + (n - m + 1) / projected * residual)


def _xdiag(probes, y, z, q, r):
    """(k, n) exchangeable samples ``dᵢ`` (see the module docstring)."""
    s, _, _ = _exchangeable(probes, y, z, q, r)
    qs, zs = q @ s, z @ s
    base = jnp.sum(q * z, axis=1)  # diag(Q Zᵀ) = diag(QQᵀA)
    # (I − P₍ᵢ₎)Aωᵢ = yᵢ − QR eᵢ + Qsᵢ (sᵢᵀR eᵢ); the first two cancel up to rounding
    deflated = (y.T - q @ r) + qs * jnp.sum(s * r, axis=0)
    return (base[:, None] - qs * zs + probes.T * deflated).T


@functools.partial(jax.jit, static_argnames=("diag",))
@precision.exact
def _finish_exchangeable(probes, y, qt, r, z, *, diag):
    return _mean_and_error((_xdiag if diag else _xtrace)(probes, y, z.T, qt.T, r))


@functools.partial(jax.jit, static_argnames=("diag",))
def _finish_exact(ae, *, diag):
    value = jnp.diagonal(ae) if diag else jnp.trace(ae)
    return value, jnp.zeros_like(value)


def _impl(matvec, params, key, *, method, num_matvecs, host):
    """``(value, error, bad, count)`` with ``value``/``error`` flat: () for traces, (n,) for
    diagonals."""
    flat = tree.flat_spec(params)
    n, dtype = flat.shape[0], flat.dtype
    mv = tree.flat_matvec(matvec, params)
    apply = functools.partial(_apply_rows, mv, host=host, solver=f"hessjax.estimators.{method}")
    diag = method in ("hutchinson_diag", "xdiag")
    if n <= num_matvecs:  # exact from the unit vectors
        _, ae, bad = apply(jnp.eye(n, dtype=dtype), bad=False, done=0)
        return *_finish_exact(ae, diag=diag), bad, n
    rows, extra = _probes(key, method=method, num_matvecs=num_matvecs, n=n, dtype=dtype)
    rows, y, bad = apply(rows, bad=False, done=0)
    if method in ("hutchinson", "hutchinson_diag"):
        return *_finish_hutchinson(rows, y, diag=diag), bad, num_matvecs
    if method == "xnystrace":
        return *_finish_xnystrace(rows, y), bad, num_matvecs
    k = rows.shape[0]
    qt, r = _qr(y)
    qt, z, bad = apply(qt, bad=bad, done=k)
    if method == "hutchpp":
        g, ag, bad = apply(_deflate(extra, qt), bad=bad, done=2 * k)
        return *_finish_hutchpp(qt, z, g, ag), bad, num_matvecs
    return *_finish_exchangeable(rows, y, qt, r, z, diag=diag), bad, 2 * k


_compiled = jax.jit(functools.partial(_impl, host=False), static_argnames=("method", "num_matvecs"))


def _run(matvec, params, key, method, num_matvecs):
    num_matvecs = check_positive_int("num_matvecs", num_matvecs)
    need = MIN_MATVECS[method]
    if num_matvecs < need:
        raise ValueError(f"{method} needs num_matvecs >= {need}, got {num_matvecs}")
    options = dict(method=method, num_matvecs=num_matvecs)
    with lanczos.explain_nonfinite(matvec):
        if loops.solver_on_host((matvec, params, key), f"hessjax.estimators.{method}"):
            value, error, _, count = _impl(matvec, params, key, **options, host=True)
        else:
            value, error, bad, count = _compiled(as_partial(matvec), params, key, **options)
            lanczos.raise_if_bad(bad, f"hessjax.estimators.{method}", count)
    return value, error, jnp.asarray(count)


def _trace(method: str) -> Callable:
    def estimate(matvec: Callable, params: Any, *, num_matvecs: int, key: jax.Array):
        return TraceEstimate(*_run(matvec, params, key, method, num_matvecs))

    return estimate


hutchinson = _trace("hutchinson")
hutchinson.__name__ = hutchinson.__qualname__ = "hutchinson"
hutchinson.__doc__ = """Hutchinson's ``tr(A)`` from ``num_matvecs`` Rademacher probes ->
:class:`TraceEstimate` (variance ``2 Σ_{i≠j} A_ij² / m``)."""

hutchpp = _trace("hutchpp")
hutchpp.__name__ = hutchpp.__qualname__ = "hutchpp"
hutchpp.__doc__ = """Hutch++ ``tr(A)`` from ``num_matvecs`` (≥ 3) matvecs -> :class:`TraceEstimate`
(module docstring). Error ``O(1/m)`` against Hutchinson's ``O(1/√m)`` for PSD ``A``."""

xtrace = _trace("xtrace")
xtrace.__name__ = xtrace.__qualname__ = "xtrace"
xtrace.__doc__ = """XTrace ``tr(A)`` from ``num_matvecs`` (≥ 4; an odd one is not spent) matvecs
-> :class:`TraceEstimate` (module docstring)."""

xnystrace = _trace("xnystrace")
xnystrace.__name__ = xnystrace.__qualname__ = "xnystrace"
xnystrace.__doc__ = """XNysTrace ``tr(A)`` of a **positive semi-definite** ``A`` from
``num_matvecs`` (≥ 2) matvecs -> :class:`TraceEstimate` (module docstring): every matvec goes
into one Nyström sketch, so for a PSD operator it usually beats XTrace at the same budget. For
the Hessian of a network (indefinite) use :func:`xtrace` or :func:`hutchpp`; for its GGN or
Fisher this one."""


def diagonal(
    matvec: Callable, params: Any, *, num_matvecs: int, key: jax.Array, method: str = "xdiag"
) -> DiagonalEstimate:
    """``diag(A)`` as a pytree like ``params`` from ``num_matvecs`` matvecs.

    ``method``: ``"xdiag"`` (default; ``num_matvecs`` ≥ 4, an odd one is not spent) or
    ``"hutchinson"`` (module docstring). Returns a :class:`DiagonalEstimate` whose ``error`` is
    the per-entry standard error.
    """
    methods = {"xdiag": "xdiag", "hutchinson": "hutchinson_diag"}
    if method not in methods:
        raise ValueError(f"method must be one of {sorted(methods)}, got {method!r}")
    value, error, count = _run(matvec, params, key, methods[method], num_matvecs)
    return DiagonalEstimate(
        tree.unravel_like(value, params), tree.unravel_like(error, params), count
    )
