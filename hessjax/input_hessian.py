"""Per-sample derivatives of the loss w.r.t. the *input*: ``∇ₓJ`` and the spectrum of ``∇²ₓJ``.

``J(x) = CE(z(x), y)`` with logits ``z = apply_fn(variables, x)`` for one sample. For ReLU nets
(piecewise linear, BatchNorm in inference mode) ``∂²z/∂x² = 0`` almost everywhere, so
``∇²ₓJ = J_zᵀ (diag p − p pᵀ) J_z`` with ``J_z = ∂z/∂x`` (c × d) and ``p = softmax(z)``: PSD with
rank ≤ c − 1 (docs/paper.md, "Claims", claim 4: Theorem 1 and Proposition 2). Its nonzero
eigenvalues are those of the c × c matrix ``B Bᵀ``, ``B = (I − q qᵀ) diag(q) J_z`` with
``q = √p`` (:func:`_reduced_input_hessian`) — the ``"exact"`` method. The ``"power"`` method
runs power iteration on exact input HVPs ``jvp(∇ₓJ)`` and needs no piecewise linearity.
All functions are per sample with ``jax.vmap``, processed in chunks of ``batch_size`` samples.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from hessjax import batching, linalg, loops
from hessjax import precision as precision_
from hessjax._internal import ApplyFn

METHODS = ("exact", "power")


def sample_loss(apply_fn: ApplyFn, variables: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    """``J(x) = CE(apply_fn(variables, x[None])[0], y)`` for one sample x (H, W, C), label y ()."""
    logits = apply_fn(variables, x[None])[0]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def input_gradient(apply_fn, variables, x, y):
    """``∇ₓJ`` for one sample, shaped like ``x``."""
    return jax.grad(sample_loss, argnums=2)(apply_fn, variables, x, y)


def input_hvp(apply_fn, variables, x, y, v):
    """``∇²ₓJ · v`` for one sample (forward-over-reverse), shaped like ``x``."""
    grad = lambda x_: input_gradient(apply_fn, variables, x_, y)
    return jax.jvp(grad, (x,), (v,))[1]


def _gradient_of(apply_fn, variables, x, y):
    return input_gradient(apply_fn, variables, x, y)


def _gradient_norm_of(apply_fn, variables, x, y):
    return jnp.linalg.norm(input_gradient(apply_fn, variables, x, y))


def input_gradients(
    apply_fn: ApplyFn, variables: Any, x, y, *, batch_size: int = 500, mesh: Mesh | None = None
):
    """Per-sample input gradients: x (N, ...), y (N,) -> (N, ...). With ``mesh``, each chunk of
    ``batch_size`` samples is split over its devices (here and in every function below)."""
    return loops.map_samples(
        _gradient_of, apply_fn, variables, (x, y), batch_size=batch_size, mesh=mesh
    )


def input_gradient_norms(
    apply_fn: ApplyFn, variables: Any, x, y, *, batch_size: int = 500, mesh: Mesh | None = None
):
    """(N,) ``‖∇ₓJ(xᵢ, yᵢ)‖₂`` per sample."""
    return loops.map_samples(
        _gradient_norm_of, apply_fn, variables, (x, y), batch_size=batch_size, mesh=mesh
    )


def _logit_jacobian_and_probs(apply_fn, variables, x):
    """``J_z`` (c, d) and ``p`` (c,) for one sample."""
    logits_of = lambda x_: apply_fn(variables, x_[None])[0]
    jac = jax.jacrev(logits_of)(x)
    return jac.reshape(jac.shape[0], -1), jax.nn.softmax(logits_of(x))


def _reduced_input_hessian(apply_fn, variables, x):
    """The c × c matrix ``B Bᵀ`` whose eigenvalues are the nonzero ones of ``∇²ₓJ = Bᵀ B``.

    ``∇²ₓJ = J_zᵀ S J_z`` with ``S = diag(p) − p pᵀ``. With ``q = √p`` (so ``qᵀq = 1``) and the
    projector ``P = I − q qᵀ``, ``S = D Pᵀ P D`` for ``D = diag(q)``, hence ``B = P D J_z`` (c, d)
    and ``B Bᵀ = P D (J_z J_zᵀ) D P``: no square root of ``S`` to factorise."""
    jac, p = _logit_jacobian_and_probs(apply_fn, variables, x)
    q = jnp.sqrt(p)
    b = q[:, None] * jac
    b = b - jnp.outer(q, q @ b)
    return b @ b.T


def _spectrum_of(apply_fn, variables, x):
    return linalg.eigvalsh(_reduced_input_hessian(apply_fn, variables, x))[::-1]


def input_hessian_spectrum(
    apply_fn: ApplyFn,
    variables: Any,
    x,
    y,
    *,
    batch_size: int = 500,
    mesh: Mesh | None = None,
    precision: str | None = precision_.CURVATURE_PRECISION,
):
    """(N, c) eigenvalues of ``∇²ₓJ`` restricted to its range (descending; the rest are 0).

    Exact for piecewise-linear nets (ReLU, max-pool, BN in inference mode); does not depend on
    ``y`` (the label only enters ``∇ₓJ``), kept for a uniform signature. ``precision``: the
    ``jax.default_matmul_precision`` of the model (default "float32"; hessjax/precision.py).
    """
    del y
    with precision_.scope(precision):
        return loops.map_samples(
            _spectrum_of, apply_fn, variables, (x,), batch_size=batch_size, mesh=mesh
        )


@functools.partial(jax.jit, static_argnums=0)
def _chunk_input_hvps(apply_fn, variables, x, y, v):
    """``∇²ₓJ(xᵢ, yᵢ) vᵢ`` for a chunk: x, v (B, ...), y (B,) -> (B, ...)."""
    return jax.vmap(lambda xi, yi, vi: input_hvp(apply_fn, variables, xi, yi, vi))(x, y, v)


def _per_sample(a: jax.Array, ndim: int) -> jax.Array:
    """``a`` (B,) shaped to broadcast against a (B, ...) array of ``ndim`` axes."""
    return a.reshape((-1,) + (1,) * (ndim - 1))


def _power_vectors(carry):
    return carry[0]


def _power_continue(carry):
    _, _, it, done, _, max_iters = carry
    return jnp.any(~done) & (it < max_iters)


def _power_update(carry, hv):
    """One power step for every sample of the chunk; converged samples are frozen."""
    v, lam_prev, it, done, tol, max_iters = carry
    axes = tuple(range(1, v.ndim))
    lam = jnp.sum(v * hv, axis=axes)
    norm = jnp.sqrt(jnp.sum(hv * hv, axis=axes))
    converged = ((it > 0) & (jnp.abs(lam - lam_prev) <= tol * jnp.abs(lam_prev))) | (norm == 0)
    moved = _per_sample(norm > 0, v.ndim)
    new_v = jnp.where(moved, hv / jnp.where(moved, _per_sample(norm, v.ndim), 1), v)
    v = jnp.where(_per_sample(done, v.ndim), v, new_v)
    lam = jnp.where(done, lam_prev, lam)
    return v, lam, it + 1, done | converged, tol, max_iters


def _power_chunk(apply_fn, variables, x, y, keys, tol, max_iters, *, host):
    """(B,) power-iteration ``λ_max(∇²ₓJ)`` of a chunk; the loop runs until every sample has
    converged (``|λ − λ_prev| ≤ tol·|λ_prev|``) or ``max_iters`` HVPs (see :mod:`hessjax.loops`)."""
    v0 = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(keys)
    v0 = v0 / _per_sample(jnp.sqrt(jnp.sum(v0 * v0, axis=tuple(range(1, x.ndim)))), x.ndim)
    b = x.shape[0]
    carry = (
        v0,
        jnp.zeros((b,), x.dtype),
        jnp.zeros((), jnp.int32),
        jnp.zeros((b,), bool),
        jnp.asarray(tol, x.dtype),
        jnp.asarray(max_iters, jnp.int32),
    )
    matvec = functools.partial(_chunk_input_hvps, apply_fn, variables, x, y)
    return loops.matvec_loop(
        matvec, _power_vectors, _power_update, _power_continue, carry, host=host
    )[1]


@functools.partial(jax.jit, static_argnames=("apply_fn", "batch_size"))
def _power_all(apply_fn, variables, x, y, keys, tol, max_iters, *, batch_size):
    """One program: ``lax.map`` over samples, vmapped ``batch_size`` at a time."""

    def one(sample):
        xi, yi, ki = (a[None] for a in sample)
        return _power_chunk(apply_fn, variables, xi, yi, ki, tol, max_iters, host=False)[0]

    return jax.lax.map(one, (x, y, keys), batch_size=batch_size)


def _power_top_eigenvalue(apply_fn, variables, x, y, key, tol, *, batch_size, max_iters, mesh):
    keys = jax.random.split(key, len(y))
    traced = loops.is_traced((variables, x, y))
    if traced or (mesh is None and not loops.host_loops()):
        x, y = jnp.asarray(x), jnp.asarray(y)
        return _power_all(apply_fn, variables, x, y, keys, tol, max_iters, batch_size=batch_size)
    host = loops.host_loops()
    chunk_fn = lambda shared, c: _power_chunk(apply_fn, shared, *c, tol, max_iters, host=host)
    return batching.map_chunks(chunk_fn, variables, (x, y, keys), batch_size, mesh=mesh)


def input_hessian_eigenvalues(
    apply_fn: ApplyFn,
    variables: Any,
    x: jax.Array,
    y: jax.Array,
    *,
    method: str = "exact",
    batch_size: int = 500,
    tol: float = 1e-6,
    max_iters: int = 200,
    key: jax.Array | None = None,
    mesh: Mesh | None = None,
    precision: str | None = precision_.CURVATURE_PRECISION,
) -> jax.Array:
    """(N,) dominant eigenvalue ``λ_max(∇²ₓJ(xᵢ, yᵢ))`` per sample.

    ``method="exact"``: top eigenvalue of the c × c matrix ``B Bᵀ`` of the module docstring
    (c reverse passes per sample; exact for piecewise-linear nets). ``method="power"``: power
    iteration on input HVPs, stopping at relative change ``≤ tol`` or ``max_iters`` HVPs;
    ``key`` (required) draws the start vectors. The input Hessian is PSD (Theorem 1), so power
    iteration's dominant-magnitude eigenvalue is the largest one. ``mesh``: chunks split over
    its devices. ``precision``: the ``jax.default_matmul_precision`` of the model (default
    "float32", not TF32 on GPUs; None: the
    caller's; hessjax/precision.py).
    """
    if method == "exact":
        spectrum = input_hessian_spectrum(
            apply_fn, variables, x, y, batch_size=batch_size, mesh=mesh, precision=precision
        )
        return spectrum[:, 0]
    if method == "power":
        if key is None:
            raise ValueError(
                "method='power' draws random start vectors: pass key=jax.random.key(0) (any key)"
            )
        with precision_.scope(precision):
            return _power_top_eigenvalue(
                apply_fn,
                variables,
                x,
                y,
                key,
                tol,
                batch_size=batch_size,
                max_iters=max_iters,
                mesh=mesh,
            )
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
