"""Where the iterations of a matvec-driven solver run: inside XLA, or in Python.

On GPU/TPU every solver is one compiled ``lax.while_loop``. On CPU, XLA runs convolutions inside
loop bodies about 10x slower than at top level (jax-ml/jax#12868; measured here: one M1 HVP on 256
MNIST images 0.11 s alone, 1.1 s inside ``lax.scan``/``while_loop``). So on CPU the loop runs in
Python around compiled pieces: the matvec (compiled once, e.g. a :class:`HessianOperator`) and the
solver's small update (compiled once per solve). No piece is ever recompiled per iteration.
``HESSJAX_HOST_LOOPS=1`` / ``0`` forces either mode.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Mesh

from hessjax import batching
from hessjax._internal import committed_like


def host_loops() -> bool:
    """True when solver loops should run in Python (default: on the CPU backend)."""
    flag = os.environ.get("HESSJAX_HOST_LOOPS")
    if flag is not None:
        return flag not in ("0", "false", "False", "")
    return jax.default_backend() == "cpu"


class CompiledLoopWarning(UserWarning):
    """A solver called under ``jax.jit`` on CPU runs as one compiled loop (several times slower
    there; see the module docstring)."""


def solver_on_host(tree: Any, solver: str) -> bool:
    """Whether ``solver`` on the arguments ``tree`` loops in Python: :func:`host_loops` and not
    under a transformation. Under ``jit`` (or ``vmap``) on CPU it cannot, and a
    :class:`CompiledLoopWarning` says so and how to avoid it (call the solver outside ``jit``: the
    operator is compiled anyway).
    """
    if not host_loops():
        return False
    if is_traced(tree):
        warnings.warn(
            f"{solver} is called under a JAX transformation (jit, vmap) on CPU, so its loop runs "
            "inside XLA, where "
            "convolutions run several times slower (jax-ml/jax#12868; measured 5-6x for M1). Call "
            "it outside jit: the operator's matvec is compiled anyway",
            CompiledLoopWarning,
            stacklevel=3,
        )
        return False
    return True


def is_traced(tree: Any) -> bool:
    """Whether any leaf of ``tree`` is an abstract tracer (we are inside jit/vmap/grad)."""
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(tree))


@functools.lru_cache(maxsize=256)
def _compiled(fn: Callable, donate: bool = False) -> Callable:
    """One ``jax.jit`` wrapper per function, so module-level loop pieces compile once."""
    return jax.jit(fn, donate_argnums=0 if donate else ())


def matvec_loop(
    matvec: Callable[[Any], Any],
    prepare: Callable[[Any], Any],
    update: Callable[[Any, Any], Any],
    cond: Callable[[Any], Any],
    carry: Any,
    *,
    host: bool,
) -> Any:
    """``while cond(carry): carry = update(carry, matvec(prepare(carry)))``.

    ``host=False``: one ``lax.while_loop``. ``host=True``: a Python loop; ``prepare``, ``update``
    and ``cond`` are compiled once for the whole loop, ``matvec`` runs its own compiled code.
    ``carry``'s buffers are donated (consumed): use only the returned carry afterwards.
    """
    if not host:
        body = lambda c: update(c, matvec(prepare(c)))
        return jax.lax.while_loop(cond, body, carry)
    # The carry is donated: large solver state (a Krylov basis) is updated in place, not copied.
    # Before the first update it is committed where the matvec's result lives, so the first
    # update and the later ones (whose inputs are committed outputs) share one compilation.
    prepare, update, cond = _compiled(prepare), _compiled(update, donate=True), _compiled(cond)
    first = True
    while bool(cond(carry)):
        w = matvec(prepare(carry))
        if first:
            carry, first = committed_like(carry, w), False
        carry = update(carry, w)
    return carry


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=("static",))
def _vmapped_chunk(fn, apply_fn, shared, args, static):
    return jax.vmap(lambda *a: fn(apply_fn, shared, *a, **dict(static)))(*args)


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=("batch_size", "static"))
def _mapped_all(fn, apply_fn, shared, args, batch_size, static):
    one = lambda a: fn(apply_fn, shared, *a, **dict(static))
    return jax.lax.map(one, args, batch_size=batch_size)


def map_samples(
    fn: Callable,
    apply_fn: Callable,
    shared: Any,
    args: tuple,
    *,
    batch_size: int,
    mesh: Mesh | None = None,
    **static,
):
    """``[fn(apply_fn, shared, *args_i, **static) for each sample i]``, vmapped in chunks.

    ``args`` is a tuple of arrays with a shared leading axis N; ``shared`` (e.g. the model
    variables) is the same for every sample; ``fn`` and ``apply_fn`` are static. In one program
    this is ``lax.map(..., batch_size=batch_size)``; with host loops (CPU) or a ``mesh`` each chunk
    is one call of a compiled ``vmap`` (:func:`hessjax.batching.map_chunks`: the last chunk
    padded, chunks split over the mesh's devices, ``shared`` replicated).
    """
    static = tuple(sorted(static.items()))
    traced = is_traced((shared, args))
    if traced or (mesh is None and not host_loops()):
        return _mapped_all(fn, apply_fn, shared, args, batch_size=batch_size, static=static)
    chunk_fn = lambda variables, chunk: _vmapped_chunk(fn, apply_fn, variables, chunk, static)
    return batching.map_chunks(chunk_fn, shared, args, batch_size, mesh=mesh)
