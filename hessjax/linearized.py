"""A Hessian operator with the linearisation of the gradient cached: repeated HVPs at one point.

A forward-over-reverse HVP (:func:`hessjax.hvp`) recomputes, on every call, the primal forward pass
and the primal backward cotangents before it can push the tangent through them. An iterative
solver evaluates many HVPs at the same ``θ`` on the same data, so those primal quantities can be
computed once: ``jax.linearize(∇_θ loss(·, batch), θ)`` keeps them as residuals and returns the
linear map ``v -> ∇²_θ loss(θ, batch) v``, which then costs only the tangent operations. For a
dense or convolutional layer that is 6 matrix products per HVP instead of 8 (a gradient is 3), so
the HVP / gradient ratio drops from about 2.5 to about 2 (``benchmarks/hvp_vs_grad.py``).

The price is memory: the residuals of every batch (activations, ReLU masks, cotangents, and a
copy of the weights per batch) are kept, about ``linearization_bytes(op)`` bytes.
The numbers are the same as :class:`~hessjax.HessianOperator`'s (the same linear map, evaluated in
a different order of operations).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from jax.tree_util import Partial

from hessjax import batching, distributed, loops, tree
from hessjax.hessian import HessianOperator, _constrain_batch


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LinearizedHessianOperator:
    """``v -> H v``, the same ``H`` as a :class:`~hessjax.HessianOperator`, from cached residuals.

    Built by :func:`linearize` (or ``op.linearize()``). ``full`` is the linearised gradient of the
    full batches, a ``Partial`` whose residual arrays carry a leading ``num_batches`` axis;
    ``tail`` is that of the short last batch, or ``None``. Call it like a function: ``hv = op(v)``.
    """

    full: Partial
    tail: Partial | None
    num_batches: int = dataclasses.field(metadata=dict(static=True))
    batch_size: int = dataclasses.field(metadata=dict(static=True))
    tail_size: int = dataclasses.field(metadata=dict(static=True))
    num_samples: int = dataclasses.field(metadata=dict(static=True))

    @property
    def residual_bytes(self) -> int:
        """Bytes held by the cached residuals (all batches)."""
        return _nbytes((self.full, self.tail))

    def __call__(self, v: Any) -> Any:
        return batching.batch_mean(
            _apply_linear,
            v,
            self.full,
            self.tail,
            batch_size=self.batch_size,
            tail_size=self.tail_size,
            init=tree.zeros_like(v),
            host=loops.host_loops() and not loops.is_traced((self, v)),
        )


def _apply_linear(v: Any, linear: Partial) -> Any:
    """One batch's cached ``v -> ∇²_θ loss(θ, batch) v``."""
    return linear(v)


def _nbytes(pytree: Any) -> int:
    return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(pytree))


def _linearized_gradient(op: HessianOperator, batch: Any) -> Partial:
    """``v -> ∇²_θ loss_fn(θ, batch) v`` as a ``Partial`` holding the residuals (jit-returnable)."""
    batch = _constrain_batch(op, batch)
    grad_fn = lambda p: jax.grad(op.loss_fn)(p, batch)
    return jax.linearize(grad_fn, op.params)[1]


@functools.partial(jax.jit, static_argnums=0)
def _linearize_full(per_batch, op, index: jax.Array) -> Partial:
    return per_batch(op, jax.tree_util.tree_map(lambda a: a[index], op.full))


@functools.partial(jax.jit, static_argnums=0)
def _linearize_tail(per_batch, op) -> Partial:
    return per_batch(op, op.tail)


@jax.jit(donate_argnums=0)
def _write(stacked: Partial, one: Partial, index: jax.Array) -> Partial:
    return jax.tree_util.tree_map(lambda s, a: s.at[index].set(a), stacked, one)


def _stacked_zeros(a: jax.Array, n: int) -> jax.Array:
    """Zeros of shape ``(n, *a.shape)``, sharded like ``a`` along the trailing axes."""
    sharding = a.sharding
    if isinstance(sharding, NamedSharding):
        sharding = NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))
    return jnp.zeros((n, *a.shape), a.dtype, device=sharding)


def linearization_bytes(op: HessianOperator, per_batch=_linearized_gradient) -> int:
    """Bytes :func:`linearize` would allocate for ``op``'s residuals (traced, nothing computed)."""
    one = _nbytes(jax.eval_shape(_linearize_full, per_batch, op, 0))
    total = one * tree.leading_dim(op.full)
    if tree.leading_dim(op.tail):
        total += _nbytes(jax.eval_shape(_linearize_tail, per_batch, op))
    return total


def linearize(op: HessianOperator, *, max_bytes: int | None = None) -> LinearizedHessianOperator:
    """Cache the linearised gradient of every batch of ``op``: later HVPs skip the primal passes.

    One-time cost: about a gradient per batch. Memory: :func:`linearization_bytes` (checked against
    ``max_bytes`` before anything is allocated). Worth it when the solver makes many matvecs (a
    top-k Lanczos or power solve makes tens to hundreds).
    """
    if not isinstance(op, HessianOperator):
        raise TypeError(f"linearize expects a HessianOperator, got {type(op).__name__}")
    return linearize_batches(op, _linearized_gradient, max_bytes=max_bytes)


def linearize_batches(op, per_batch, *, max_bytes: int | None = None) -> LinearizedHessianOperator:
    """:func:`linearize` for any batched operator ``op`` (fields ``full``, ``tail``,
    ``num_samples``): ``per_batch(op, batch)`` (a module-level function) returns the batch's
    linear map ``v -> A_b v`` as a ``Partial``; the result applies ``Σ_b (n_b / N) A_b v``."""
    if max_bytes is not None:
        need = linearization_bytes(op, per_batch)
        if need > max_bytes:
            raise ValueError(
                f"caching the linearisation needs {need / 2**20:.0f} MiB of residuals, over "
                f"max_bytes={max_bytes / 2**20:.0f} MiB; use the operator without linearize() "
                "(same numbers, ~25% slower per HVP), fewer samples, or raise max_bytes"
            )
    num_full = tree.leading_dim(op.full)
    first = _linearize_full(per_batch, op, 0)
    stacked = jax.tree_util.tree_map(lambda a: _stacked_zeros(a, num_full), first)
    stacked = _write(stacked, first, 0)
    del first
    for index in range(1, num_full):
        stacked = _write(stacked, _linearize_full(per_batch, op, index), index)
    tail_size = tree.leading_dim(op.tail)
    tail = _linearize_tail(per_batch, op) if tail_size else None
    batch_size = tree.leading_dim(op.full, axis=1)
    return LinearizedHessianOperator(stacked, tail, num_full, batch_size, tail_size, op.num_samples)


# ----------------------------------------------------------------------------- the default choice

#: Share of the device's free memory the cached residuals may take by default.
MEMORY_FRACTION = 0.25

_budget: contextvars.ContextVar[int | None] = contextvars.ContextVar("hessjax_budget", default=None)
log = logging.getLogger("hessjax")


def free_memory_bytes(device: jax.Device | None = None) -> int | None:
    """Free memory of ``device`` (default: this process's first): an accelerator's ``bytes_limit -
    bytes_in_use``, the host's ``MemAvailable`` for CPU devices; None when unknown."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_budget() -> int:
    """Bytes cached residuals may take: the innermost :func:`memory_budget_scope`, else
    :data:`MEMORY_FRACTION` of :func:`free_memory_bytes` (0 when that is unknown). With several
    processes, the smallest over all of them, so that every process makes the same choice."""
    scoped = _budget.get()
    if scoped is not None:
        return scoped
    free = free_memory_bytes()
    budget = 0 if free is None else int(MEMORY_FRACTION * free)
    return int(distributed.all_processes(np.array([budget], np.int64)).min())


@contextlib.contextmanager
def memory_budget_scope(num_bytes: int | None):
    """``with memory_budget_scope(2**30): ...``: operators built inside default to this budget
    (None: back to the fraction of free memory). The experiments' ``memory_budget_mb`` field."""
    token = _budget.set(None if num_bytes is None else int(num_bytes))
    try:
        yield
    finally:
        _budget.reset(token)


def attach(op: HessianOperator, *, required: bool = False, budget: int | None = None):
    """``op`` with its linearisation cached in ``op.linear`` when the residuals fit ``budget``
    bytes (None: :func:`memory_budget`); else ``op`` unchanged, or with ``required`` a ValueError
    naming the fix. Logs the choice at INFO on the ``"hessjax"`` logger."""
    budget = memory_budget() if budget is None else int(budget)
    need = linearization_bytes(op)
    mib = lambda b: f"{b / 2**20:.0f} MiB"
    if need > budget:
        if required:
            linearize(op, max_bytes=budget)  # raises, naming the fix
        log.info(
            "Hessian operator: plain HVPs (a cached linearisation needs %s, over the %s budget)",
            mib(need),
            mib(budget),
        )
        return op
    log.info(
        "Hessian operator: linearised (%s of residuals, within the %s budget)",
        mib(need),
        mib(budget),
    )
    return dataclasses.replace(op, linear=linearize(op))


__all__ = [
    "LinearizedHessianOperator",
    "MEMORY_FRACTION",
    "attach",
    "free_memory_bytes",
    "linearization_bytes",
    "linearize",
    "linearize_batches",
    "memory_budget",
    "memory_budget_scope",
]
