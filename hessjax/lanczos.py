"""Lanczos tridiagonalisation with full reorthogonalisation, on flat vectors.

After ``j + 1`` steps from a unit vector ``q₀``: ``A Q = Q T + β_j q_{j+1} e_jᵀ`` with ``Q`` the
``(j+1, n)`` orthonormal basis (rows) and ``T`` tridiagonal (diagonal ``α``, off-diagonal ``β``).
Ritz pairs ``(θ, Qᵀs)`` from ``T s = θ s`` have residual ``‖A Qᵀs − θ Qᵀs‖ = |β_j s_j|``.
Every new vector, after the three-term recurrence, is Gram-Schmidt-orthogonalised once more
against all earlier ones (full reorthogonalisation), so no ghost eigenvalues appear. On
breakdown (``β ≈ 0``: an invariant subspace was found) the iteration restarts with a random
vector orthogonal to the basis and stores ``β = 0``, so ``T`` splits into independent blocks and
later steps keep exploring the rest of the space.

Non-finite matvecs: every solver here and in :mod:`hessjax.eigen` / :mod:`hessjax.spectral` runs
its loop through :func:`guarded_matvec_loop`, which stops at the first matvec result holding a
NaN or inf and makes the solver raise :class:`NonFiniteError` (see there).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hessjax import linalg, loops, precision

MatVec = Callable[[jax.Array], jax.Array]


class NonFiniteError(FloatingPointError):
    """A matvec (e.g. a Hessian-vector product) returned NaN or inf; the solver stopped there.

    ``num_matvecs`` is the number of matvecs run, the bad one included. With host loops (the CPU
    default) the solver stops right after the bad matvec; in one XLA program
    (``HESSJAX_HOST_LOOPS=0``, GPU/TPU) a flag in the loop carry ends the loop and the error is
    raised when it returns. Inside an outer ``jax.jit`` (or ``vmap``/``grad``) nothing can be
    raised: the loop still stops early and the results are NaN (``converged=False``).
    """

    def __init__(self, solver: str, num_matvecs: int | None = None, found: str | None = None):
        self.solver, self.num_matvecs, self.found = solver, num_matvecs, found
        at = f" at matvec {num_matvecs}" if num_matvecs is not None else ""
        super().__init__(
            f"{solver}: the operator returned a non-finite vector (NaN or inf){at}; stopped. "
            + (f"Found NaN/inf in {found}. " if found else "")
            + "Likely causes: NaN/inf in params (a diverged training run, a bad checkpoint), "
            "NaN/inf in the data batch, a loss that overflows at these params (e.g. log(0), "
            "huge logits in float32), or a custom matvec that returns NaN. Fix: check "
            "all(bool(jnp.isfinite(a).all()) for a in jax.tree.leaves(params)) and the same for "
            "the data; reload a checkpoint from before the divergence or lower the learning rate; "
            "use a numerically stable loss (hessjax.cross_entropy works on logits); call the "
            "matvec on a random vector to see whether it returns NaN."
        )


def _nonfinite_paths(tree, prefix: str) -> list[str]:
    paths = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if (
            isinstance(leaf, jax.Array | np.ndarray)
            and not loops.is_traced(leaf)
            and jnp.issubdtype(leaf.dtype, jnp.inexact)
            and not bool(jnp.all(jnp.isfinite(leaf)))
        ):
            paths.append(prefix + jax.tree_util.keystr(path))
    return paths


def _diagnose(operator) -> str | None:
    """The non-finite arrays ``operator`` holds, e.g. ``params['Dense_0']['kernel']`` or
    ``data[0]`` for a HessianOperator; None if none (or not a pytree of arrays)."""
    if hasattr(operator, "params") and hasattr(operator, "full"):  # HessianOperator
        data = _nonfinite_paths(operator.full, "data") + _nonfinite_paths(operator.tail, "data")
        paths = _nonfinite_paths(operator.params, "params") + list(dict.fromkeys(data))
    else:
        paths = _nonfinite_paths(operator, "the operator's arrays")
    if not paths:
        return None
    return ", ".join(paths[:4]) + (f" and {len(paths) - 4} more" if len(paths) > 4 else "")


@contextlib.contextmanager
def explain_nonfinite(operator):
    """Re-raise a :class:`NonFiniteError` from the block with the non-finite arrays that
    ``operator`` holds (params, data), if any, named in the message."""
    try:
        yield
    except NonFiniteError as e:
        found = None if e.found else _diagnose(operator)
        if found is None:
            raise
        raise NonFiniteError(e.solver, e.num_matvecs, found) from None


_all_finite = jax.jit(lambda w: jnp.all(jnp.isfinite(w)))


def _host_checked(matvec: MatVec, solver: str, done: int) -> MatVec:
    """``matvec`` that raises :class:`NonFiniteError` on a non-finite result (concrete values
    only); ``done`` matvecs ran before this loop."""
    count = [done]

    def checked(v):
        w = matvec(v)
        count[0] += 1
        if not loops.is_traced(w) and not bool(_all_finite(w)):
            raise NonFiniteError(solver, count[0])
        return w

    return checked


def guarded_matvec_loop(
    matvec: MatVec,
    prepare: Callable,
    update: Callable,
    cond: Callable,
    carry,
    *,
    host: bool,
    solver: str,
    bad=False,
    done: int = 0,
):
    """:func:`hessjax.loops.matvec_loop` that stops at the first non-finite matvec result.

    Returns ``(carry, bad)``. ``host=True``: raises :class:`NonFiniteError` right after the bad
    matvec (``done``: matvecs already spent by the caller, for the message); ``bad`` is False.
    ``host=False``: one ``lax.while_loop`` whose carry holds ``bad`` (a bool array; pass the one
    returned by a previous loop to chain loops: a loop started with ``bad`` set runs no matvec);
    the bad matvec's result is still absorbed by ``update`` (so results become NaN, which is what
    a caller under an outer ``jit`` returns) and the loop ends. The caller raises when it can.
    """
    if host:
        checked = _host_checked(matvec, solver, done)
        return loops.matvec_loop(checked, prepare, update, cond, carry, host=True), False

    def guarded_update(c, w):
        return update(c[0], w), c[1] | ~jnp.all(jnp.isfinite(w))

    return loops.matvec_loop(
        matvec,
        lambda c: prepare(c[0]),
        guarded_update,
        lambda c: ~c[1] & cond(c[0]),
        (carry, jnp.asarray(bad, bool)),
        host=False,
    )


def raise_if_bad(bad, solver: str, num_matvecs) -> None:
    """Raise :class:`NonFiniteError` if the (concrete) flag ``bad`` is set; no-op when traced."""
    if loops.is_traced(bad):
        return
    if bool(bad):
        raise NonFiniteError(solver, None if loops.is_traced(num_matvecs) else int(num_matvecs))


class LanczosState(NamedTuple):
    basis: jax.Array  # (m + 1, n); rows 0..step hold q₀..q_step, the rest are zero
    alphas: jax.Array  # (m,)
    betas: jax.Array  # (m,); betas[i] couples q_i and q_{i+1}; 0 marks a restart
    step: jax.Array  # () int: completed steps


@functools.partial(jax.jit, static_argnums=1)
def init(v0: jax.Array, num_steps: int) -> LanczosState:
    """State before the first step; ``v0`` (n,) need not be normalised (one compiled program)."""
    n, dtype = v0.shape[0], v0.dtype
    basis = jnp.zeros((num_steps + 1, n), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    zeros = lambda: jnp.zeros((num_steps,), dtype)  # distinct buffers: loop carries are donated
    return LanczosState(basis, zeros(), zeros(), jnp.zeros((), jnp.int32))


@precision.exact
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


@precision.exact
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
    matvec: MatVec,
    v0: jax.Array,
    num_steps: int,
    key: jax.Array,
    *,
    host: bool = False,
    solver: str = "hessjax.lanczos.run",
    bad=False,
    done: int = 0,
) -> tuple[LanczosState, jax.Array | bool]:
    """``num_steps`` Lanczos steps from ``v0``, stopping at a non-finite matvec.

    Returns ``(state, bad)``; see :func:`guarded_matvec_loop` for ``host``, ``solver``, ``bad``
    and ``done``.
    """
    carry = (init(v0, num_steps), key)
    (state, _), bad = guarded_matvec_loop(
        matvec,
        _current_of,
        _absorb_into,
        _not_full,
        carry,
        host=host,
        solver=solver,
        bad=bad,
        done=done,
    )
    return state, bad


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
    values, vectors = linalg.eigh(t)
    vectors = jnp.where(active[:, None], vectors, 0.0)
    return values, vectors, active
