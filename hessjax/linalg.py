"""Small dense factorisations (eigh, eigvalsh, QR, triangular solves) that stay safe under vmap.

jaxlib's CPU LAPACK kernels split a *batched* call into chunks and run them on XLA's intra-op
thread pool, then block one pool thread until the chunks finish (``ParallelBatchMap`` in
jaxlib/cpu/lapack_kernels.cc). The pool has one thread per core, so as soon as two batched calls
run at once (two independent factorisations in one program, or one program sharded over two CPU
devices), every pool thread can be waiting and nothing runs the chunks: the process hangs for
good. On the 2-core machines this project runs on it comes quickly: a jitted program with one
batched ``eigh`` beside one batched ``solve_triangular`` of shape (200, 24, 24), or one batched
``eigvalsh`` of (400, 24, 24) sharded over ``JAX_NUM_CPU_DEVICES=2``, hung within 5-120 calls in
every try (jax/jaxlib 0.10.2; docs/design.md, "Batched LAPACK on CPU"). The test suite hung this
way in tests/test_estimators.py, which vmaps the trace estimators over 200-400 keys.

Each function here is the ``jax.numpy`` / ``jax.scipy`` one, except that on the CPU backend its
vmap rule loops over the batch (``jax.custom_batching.sequential_vmap``: a ``lax.map``), so
every LAPACK call sees one matrix and runs on the calling thread. hessjax's matrices are small
(c × c input-Hessian blocks, m × m sketches, Lanczos tridiagonals of tens of rows), so the loop
costs microseconds per matrix. On GPU/TPU they are the plain batched calls. They are not
differentiable in reverse mode (``custom_vmap``); hessjax never differentiates through them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.custom_batching import sequential_vmap

__all__ = ["eigh", "eigvalsh", "qr", "qr_r", "solve_upper_triangular"]


def _looped_on_cpu(fn: Callable) -> Callable:
    """``fn`` whose batched form, on CPU, loops over the batch (``sequential_vmap``: unbatched
    arguments are passed through, nested vmaps nest the loops)."""
    looped = sequential_vmap(fn)

    @functools.wraps(fn)
    def call(*args):
        return looped(*args) if jax.default_backend() == "cpu" else fn(*args)

    return call


@_looped_on_cpu
def eigh(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(w, v)`` of a symmetric ``a`` (n, n): ascending ``w`` (n,), column eigenvectors ``v``."""
    return tuple(jnp.linalg.eigh(a))


@_looped_on_cpu
def eigvalsh(a: jax.Array) -> jax.Array:
    """Ascending eigenvalues (n,) of a symmetric ``a`` (n, n)."""
    return jnp.linalg.eigvalsh(a)


@_looped_on_cpu
def qr(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reduced QR of ``a`` (n, k), n ≥ k: ``Q`` (n, k) orthonormal columns, ``R`` (k, k)."""
    return tuple(jnp.linalg.qr(a))


@_looped_on_cpu
def qr_r(a: jax.Array) -> jax.Array:
    """Only the ``R`` (k, k) of :func:`qr`."""
    return jnp.linalg.qr(a, mode="r")


@_looped_on_cpu
def solve_upper_triangular(r: jax.Array, b: jax.Array) -> jax.Array:
    """``X`` with ``R X = B`` for an upper-triangular ``r`` (k, k) and ``b`` (k, m)."""
    return jax.scipy.linalg.solve_triangular(r, b, lower=False)
