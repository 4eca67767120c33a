"""Lanczos tridiagonalisation with full reorthogonalisation, on flat vectors.

After ``j + 1`` steps from a unit vector ``q₀``: ``A Q = Q T + β_j q_{j+1} e_jᵀ`` with ``Q`` the
``(j+1, n)`` orthonormal basis (rows) and ``T`` tridiagonal (diagonal ``α``, off-diagonal ``β``).
Ritz pairs ``(θ, Qᵀs)`` from ``T s = θ s`` have residual ``‖A Qᵀs − θ Qᵀs‖ = |β_j s_j|``.
Every new vector, after the three-term recurrence, is Gram-Schmidt-orthogonalised once more
against all earlier ones (full reorthogonalisation), so no ghost eigenvalues appear. On
breakdown (``β ≈ 0``: an invariant subspace was found) the iteration restarts with a random
vector orthogonal to the basis and stores ``β = 0``, so ``T`` splits into independent blocks and
later steps keep exploring the rest of the space.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from hessjax import loops

MatVec = Callable[[jax.Array], jax.Array]


class LanczosState(NamedTuple):
    basis: jax.Array  # (m + 1, n); rows 0..step hold q₀..q_step, the rest are zero
    alphas: jax.Array  # (m,)
    betas: jax.Array  # (m,); betas[i] couples q_i and q_{i+1}; 0 marks a restart
    step: jax.Array  # () int: completed steps


def init(v0: jax.Array, num_steps: int) -> LanczosState:
    """State before the first step; ``v0`` (n,) need not be normalised."""
    n, dtype = v0.shape[0], v0.dtype
    basis = jnp.zeros((num_steps + 1, n), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    zeros = lambda: jnp.zeros((num_steps,), dtype)  # distinct buffers: loop carries are donated
    return LanczosState(basis, zeros(), zeros(), jnp.zeros((), jnp.int32))


def _orthogonalize(basis: jax.Array, w: jax.Array, passes: int = 2) -> jax.Array:
    """``w`` minus its projection on the rows of ``basis`` (classical Gram-Schmidt, ``passes``
    times; each pass reads the whole basis twice)."""
    for _ in range(passes):
        w = w - basis.T @ (basis @ w)
    return w


ROW_BLOCK = 8  # basis rows per Gram-Schmidt block in :func:`_orthogonalize_rows`


def _orthogonalize_rows(basis: jax.Array, w: jax.Array, num_rows: jax.Array) -> jax.Array:
    """``w`` minus its projection on rows ``0 .. num_rows − 1`` of ``basis``, block by block
    (block Gram-Schmidt, ``ROW_BLOCK`` rows at a time: ``w ← w − B_bᵀ(B_b w)``).

    Only the ``⌈num_rows / ROW_BLOCK⌉`` blocks in use are read, so step ``j`` of a Lanczos run
    with room for ``m`` vectors costs ``O(j n)``, not ``O(m n)``. The last block may reach past
    ``num_rows`` (its start is clamped to stay inside the basis): rows past the filled ones are
    zero, and a row projected out twice contributes nothing the second time.
    """
    rows = basis.shape[0]
    block = min(ROW_BLOCK, rows)

    def body(b, w):
        blk = jax.lax.dynamic_slice_in_dim(basis, b * block, block)  # start clamped at rows-block
        return w - blk.T @ (blk @ w)

    return jax.lax.fori_loop(0, (num_rows + block - 1) // block, body, w)


def current(state: LanczosState) -> jax.Array:
    """The vector ``q_j`` the next step multiplies by ``A``."""
    return state.basis[state.step]


def absorb(state: LanczosState, w: jax.Array, key: jax.Array) -> LanczosState:
    """Complete step j given ``w = A q_j``: ``α_j = q_jᵀ w``, ``β_j q_{j+1} = (I − QQᵀ) w``."""
    j = state.step
    q = state.basis[j]
    alpha = jnp.vdot(q, w)
    # Three-term recurrence, then one Gram-Schmidt pass against every basis vector so far.
    w = w - alpha * q - state.betas[j - 1] * state.basis[j - 1] * (j > 0)
    w = _orthogonalize_rows(state.basis, w, j + 1)
    beta = jnp.linalg.norm(w)
    scale = jnp.maximum(jnp.max(jnp.abs(state.alphas)) + jnp.max(state.betas), jnp.abs(alpha))
    broke_down = beta <= 10 * jnp.finfo(w.dtype).eps * jnp.maximum(scale, jnp.finfo(w.dtype).tiny)

    def restart(_):
        r = jax.random.normal(jax.random.fold_in(key, j), w.shape, w.dtype)
        r = _orthogonalize(state.basis, r)
        return r / jnp.linalg.norm(r)

    q_next = jax.lax.cond(broke_down, restart, lambda _: w / beta, None)
    beta = jnp.where(broke_down, 0.0, beta).astype(w.dtype)
    return LanczosState(
        state.basis.at[j + 1].set(q_next),
        state.alphas.at[j].set(alpha),
        state.betas.at[j].set(beta),
        j + 1,
    )


def _current_of(carry):
    return current(carry[0])


def _absorb_into(carry, w):
    state, key = carry
    return absorb(state, w, key), key


def _not_full(carry):
    return carry[0].step < carry[0].alphas.shape[0]


def run(
    matvec: MatVec, v0: jax.Array, num_steps: int, key: jax.Array, *, host: bool = False
) -> LanczosState:
    """``num_steps`` Lanczos steps from ``v0`` (see :func:`hessjax.loops.matvec_loop`)."""
    carry = (init(v0, num_steps), key)
    return loops.matvec_loop(matvec, _current_of, _absorb_into, _not_full, carry, host=host)[0]


def last_block_start(state: LanczosState) -> jax.Array:
    """First row of the block holding the latest step (0 unless a breakdown restarted it)."""
    idx = jnp.arange(state.betas.shape[0])
    ends = (idx < state.step - 1) & (state.betas == 0)
    return jnp.max(jnp.where(ends, idx + 1, 0))


def ritz(state: LanczosState, start=0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Eigen-decomposition of ``T`` restricted to rows ``start .. state.step − 1``.

    Returns ``(values, vectors, active)``: ``values`` (m,) ascending, with the ``m − step`` unused
    slots filled by a value below every active Ritz value (so the top of the list is always
    active); ``vectors`` (m, m) column eigenvectors of the padded ``T``; ``active`` (m,) mask of
    the coordinates in use.
    """
    m = state.alphas.shape[0]
    idx = jnp.arange(m)
    active = (idx >= start) & (idx < state.step)
    off = jnp.where((idx >= start) & (idx < state.step - 1), state.betas, 0.0)
    diag = jnp.where(active, state.alphas, 0.0)
    radius = jnp.abs(off) + jnp.abs(jnp.concatenate([jnp.zeros((1,), off.dtype), off[:-1]]))
    lower = jnp.min(jnp.where(active, diag - radius, jnp.inf))
    upper = jnp.max(jnp.where(active, diag + radius, -jnp.inf))
    pad = lower - (upper - lower) - 1.0
    t = jnp.diag(jnp.where(active, diag, pad)) + jnp.diag(off[:-1], 1) + jnp.diag(off[:-1], -1)
    values, vectors = jnp.linalg.eigh(t)
    vectors = jnp.where(active[:, None], vectors, 0.0)
    return values, vectors, active
