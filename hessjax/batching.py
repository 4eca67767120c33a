"""The two ways hessjax walks a data set in pieces of a fixed size (one compilation per size).

* :func:`map_chunks`: a per-sample function over all ``N`` samples, ``batch_size`` rows per
  compiled call; the last chunk is padded by repeating its last row and the padded outputs are
  dropped, so every call sees one shape. Evaluation, input gradients and Hessians, and attacks.
* :func:`split_batches` + :func:`batch_mean`: the mean over the data set of a quantity defined on
  batches by a MEAN loss (a gradient, a Hessian-vector product):
  ``(1/N) Σᵢ qᵢ = Σ_b (n_b / N) q(batch_b)``, exact for any ``N`` because the short last batch
  ("tail") is weighted by its size. Hessian operators and full-batch gradients.

With a ``jax.sharding.Mesh`` every chunk / batch is split over all its devices along the sample
axis (chunk sizes are rounded up to a multiple of the device count).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from hessjax import tree
from hessjax._internal import batch_sharding, committed, mesh_size, replicated, round_up
from hessjax.distributed import check_mesh, spans_processes


def _pad_rows(a, size: int):
    """``a`` with its last row repeated up to ``size`` rows (numpy stays numpy)."""
    xp = np if isinstance(a, np.ndarray) else jnp
    if a.shape[0] == size:
        return a
    return xp.concatenate([a, xp.repeat(a[-1:], size - a.shape[0], axis=0)])


#: Samples per device above which a batch gets no faster per sample on XLA:CPU (cache-bound
#: convolutions): HVPs of M1 over 1,000 MNIST images took 288 ms in batches of 100 and 619 ms in
#: one batch of 1,000 (docs/benchmarks.md, "Fast by default"). Accelerators get no cap.
CPU_SAMPLES_PER_DEVICE = 128


def fast_batch_size(
    batch_size: int, mesh: Mesh | None = None, num_samples: int | None = None
) -> int:
    """The batch a walk over the data uses for a user's ``batch_size`` (a memory bound): on CPU
    at most :data:`CPU_SAMPLES_PER_DEVICE` per device of ``mesh``, elsewhere ``batch_size``.

    When that cap splits ``num_samples`` into several batches, the batches are chosen so that
    the data walk compiles one batch shape, not two (full batches and a short tail): the largest
    multiple of the device count in ``(cap/2, cap]`` that divides N (N = 1,000 or 50,000 with the
    cap 128: batches of 125 rather than 128 and a tail of 104 or 80), else the fewest batches of
    at most the cap, balanced (``⌈N / ⌈N / cap⌉⌉``, rounded up to the device count). Per-sample
    quantities and mean-loss sums do not depend on the batching, only speed does."""
    batch_size = int(batch_size)
    if jax.default_backend() != "cpu":
        return batch_size
    devices = mesh_size(mesh)
    cap = CPU_SAMPLES_PER_DEVICE * devices
    if batch_size <= cap:
        return batch_size
    if num_samples is None or num_samples <= cap:
        return cap
    n = int(num_samples)
    for size in range(cap, cap // 2, -devices):
        if n % size == 0:
            return size
    return round_up(-(-n // -(-n // cap)), devices)


def check_mesh_divides(batch_size: int, mesh: Mesh | None) -> None:
    """ValueError unless ``batch_size`` splits evenly over ``mesh``'s devices."""
    if mesh is not None and batch_size % mesh.size:
        raise ValueError(
            f"batch_size={batch_size} is not divisible by the {mesh.size} devices of the mesh; "
            f"choose a multiple of {mesh.size}"
        )


def chunk_size(n: int, batch_size: int, mesh: Mesh | None = None) -> int:
    """Rows per chunk: ``min(fast_batch_size(batch_size, mesh, n), n)`` rounded up to a multiple
    of the mesh's devices."""
    rows = min(fast_batch_size(batch_size, mesh, int(n)), int(n))
    return round_up(max(rows, 1), mesh_size(mesh))


def map_chunks(
    chunk_fn: Callable[[Any, Any], Any],
    shared: Any,
    args: Any,
    batch_size: int,
    *,
    mesh: Mesh | None = None,
) -> Any:
    """``chunk_fn(shared, chunk)`` on consecutive chunks of the rows of ``args``, outputs
    concatenated.

    ``shared``: a pytree every chunk uses (e.g. the model variables; replicated on ``mesh``).
    ``args``: pytree of arrays sharing the leading axis ``N`` (numpy or jax). ``chunk_fn`` returns
    a pytree whose leaves have the chunk's rows as leading axis. Each chunk has
    :func:`chunk_size` rows (the last one padded by repeating its last row; its padded outputs are
    cut), placed on ``mesh`` split along the rows when given. Returns jax arrays with leading
    axis ``N``, complete on every process when ``mesh`` spans several (hessjax.distributed).
    """
    n = tree.leading_dim(args)
    if n == 0:
        raise ValueError("no samples: the arrays have a leading axis of 0")
    check_mesh(mesh)
    size = chunk_size(n, batch_size, mesh)
    sharding = batch_sharding(mesh)
    if mesh is not None:
        shared = jax.device_put(shared, replicated(mesh))
    whole = _gather_fn(mesh) if spans_processes(mesh) else (lambda t: t)
    outs = []
    for start in range(0, n, size):
        count = min(size, n - start)
        chunk = jax.tree_util.tree_map(
            lambda a, s=start, c=count: _pad_rows(a[s : s + c], size), args
        )
        if sharding is not None:
            chunk = jax.device_put(chunk, sharding)
        outs.append(
            jax.tree_util.tree_map(lambda o, c=count: o[:c], whole(chunk_fn(shared, chunk)))
        )
    if len(outs) == 1:
        return outs[0]
    return jax.tree_util.tree_map(lambda *o: jnp.concatenate(o), *outs)


@functools.cache
def _gather_fn(mesh: Mesh) -> Callable[[Any], Any]:
    """A compiled identity whose outputs every device of ``mesh`` holds whole (an all-gather):
    per-sample results then come back complete on every process."""
    return jax.jit(lambda t: t, out_shardings=replicated(mesh))


# ----------------------------------------------------------------------------- batch means


def split_batches(data: Any, batch_size: int) -> tuple[Any, Any]:
    """``data`` (leading axis ``N``) as ``(full, tail)``: ``full`` with leading axes
    ``(N // batch_size, batch_size)`` and ``tail`` the last ``N mod batch_size`` samples (numpy
    stays numpy: nothing is placed on a device)."""
    n = tree.leading_dim(data)
    num_full = n // batch_size
    cut = num_full * batch_size

    def as_array(a):
        return a if isinstance(a, jax.Array) else np.asarray(a)

    full = jax.tree_util.tree_map(
        lambda a: as_array(a)[:cut].reshape(num_full, batch_size, *a.shape[1:]), data
    )
    tail = jax.tree_util.tree_map(lambda a: as_array(a)[cut:], data)
    return full, tail


def device_batches(data: Any, batch_size: int, mesh: Mesh | None = None) -> tuple[Any, Any]:
    """:func:`split_batches` placed on the device(s): with ``mesh`` each full batch is split
    over its devices along the sample axis (``batch_size`` must be divisible by their number),
    and so is the tail when its size allows (else it is replicated)."""
    check_mesh(mesh)
    full, tail = split_batches(data, batch_size)
    if mesh is None:
        return jax.device_put((full, tail))
    check_mesh_divides(batch_size, mesh)
    tail_sharding = (
        batch_sharding(mesh) if tree.leading_dim(tail) % mesh.size == 0 else replicated(mesh)
    )
    return jax.device_put(full, batch_sharding(mesh, 1)), jax.device_put(tail, tail_sharding)


def _weighted(term, args, item, size: int, num_samples: int):
    return tree.scale(term(args, item), size / num_samples)


#: Batches the one-program walk writes out one after the other instead of a ``lax.scan``: XLA
#: runs convolutions inside a while loop several times slower. M1's HVP of one batch of 128 on
#: CPU: 104 ms compiled directly, 758 ms as a one-step scan (also with ``unroll=True``, which
#: keeps the loop); on an H200 the operator's one-batch HVP took 5.3 ms against 1.0 ms for the
#: bare jitted HVP (docs/benchmarks.md, "On an NVIDIA H200"). More batches are scanned: each
#: written-out batch adds its HVP's compile time.
MAX_UNROLLED_BATCHES = 4


@functools.partial(jax.jit, static_argnames=("term", "batch_size", "tail_size"))
def _all_batches(term, args, full, tail, init, *, batch_size, tail_size):
    """Every batch in one program: the batches of ``full`` (written out up to
    :data:`MAX_UNROLLED_BATCHES`, else a ``lax.scan``), then the tail."""
    num_full = tree.leading_dim(full)
    n = num_full * batch_size + tail_size
    add_batch = lambda acc, item: tree.add(acc, _weighted(term, args, item, batch_size, n))
    if num_full <= MAX_UNROLLED_BATCHES:
        total = init
        for index in range(num_full):
            total = add_batch(total, jax.tree_util.tree_map(lambda a, i=index: a[i], full))
    else:
        total, _ = jax.lax.scan(lambda acc, item: (add_batch(acc, item), None), init, full)
    if tail_size:
        total = tree.add(total, _weighted(term, args, tail, tail_size, n))
    return total


@functools.partial(jax.jit, static_argnames=("term", "size", "num_samples"))
def _add_one(term, args, total, items, index, *, size, num_samples):
    item = items if index is None else jax.tree_util.tree_map(lambda a: a[index], items)
    return tree.add(total, _weighted(term, args, item, size, num_samples))


def batch_mean(
    term: Callable[[Any, Any], Any],
    args: Any,
    full: Any,
    tail: Any,
    *,
    batch_size: int,
    tail_size: int,
    init: Any,
    host: bool,
) -> Any:
    """``Σ_b (n_b / N) · term(args, item_b)`` over the items of ``full`` (leading axis: batches
    of ``batch_size`` samples) and ``tail`` (``tail_size`` samples; ignored when 0), starting
    from ``init`` (zeros shaped like the result); ``N = num_batches · batch_size + tail_size``.

    An item is a batch of data, or anything stacked per batch (cached residuals). ``term`` must be
    a module-level function (it is a static jit argument: one compilation per ``term``).
    ``host=True`` loops over the batches in Python around one compiled step per batch (the CPU
    default, see :mod:`hessjax.loops`); ``host=False`` runs everything as one program.
    """
    num_full = tree.leading_dim(full) if jax.tree_util.tree_leaves(full) else 0
    n = num_full * batch_size + tail_size
    if not host:
        return _all_batches(
            term, args, full, tail, init, batch_size=batch_size, tail_size=tail_size
        )
    # Committed arguments: every call below then hits one compiled program (see committed).
    args, full, tail, total = committed((args, full, tail, init))
    for index in range(num_full):
        total = _add_one(term, args, total, full, index, size=batch_size, num_samples=n)
    if tail_size:
        total = _add_one(term, args, total, tail, None, size=tail_size, num_samples=n)
    return total
