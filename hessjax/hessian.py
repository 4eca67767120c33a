"""Exact Hessian-vector products of a loss w.r.t. the weights, over whole data sets.

``H v`` is computed forward-over-reverse, ``jax.jvp(jax.grad(loss), (θ,), (v,))``: one
linearisation of the gradient, about 1.5-2 gradient evaluations, never the dense Hessian.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hessjax import loops, tree

Partial = jax.tree_util.Partial


def hvp(loss_fn: Callable, params: Any, v: Any, *args) -> Any:
    """Exact ``∇²_θ loss_fn(θ, *args) · v`` at ``θ = params`` (forward-over-reverse).

    ``v`` has the structure, shapes and dtypes of ``params``; so has the result.
    """
    grad_fn = lambda p: jax.grad(loss_fn)(p, *args)
    return jax.jvp(grad_fn, (params,), (v,))[1]


def _as_partial(fn: Callable) -> Any:
    """A callable as a pytree whose arrays become jit arguments and whose function is static.

    Pytree callables (``Partial``, :class:`HessianOperator`) pass through; a plain function is
    wrapped in a leaf-less ``Partial`` (compiled code is then cached on the function's identity).
    """
    leaves = jax.tree_util.tree_leaves(fn)
    return Partial(fn) if len(leaves) == 1 and leaves[0] is fn else fn


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class HessianOperator:
    """``v -> H v`` with ``H = ∇²_θ (1/N) Σᵢ lossᵢ(θ)`` over a whole data set (a pytree of arrays).

    Built by :func:`hessian_operator`. The data are stored as ``full`` (leading axes
    ``(num_batches, batch_size)``) and ``tail`` (the short last batch, possibly empty); the
    operator is itself a pytree, so it can be passed to jitted solvers without being baked in as
    a constant. Call it like a function: ``hv = op(v)``.
    """

    loss_fn: Partial
    params: Any
    full: Any
    tail: Any
    num_samples: int = dataclasses.field(metadata=dict(static=True))
    mesh: Mesh | None = dataclasses.field(default=None, metadata=dict(static=True))

    def __call__(self, v: Any) -> Any:
        if loops.host_loops() and not loops.is_traced((self, v)):
            return _host_dataset_hvp(self, v)
        return _dataset_hvp(self, v)

    def linearize(self, *, max_bytes: int | None = None):
        """The same operator with each batch's linearised gradient cached (faster repeated HVPs,
        more memory); see :func:`hessjax.linearized.linearize`."""
        from hessjax import linearized

        return linearized.linearize(self, max_bytes=max_bytes)


def _batch_spec(mesh: Mesh | None, leading: int) -> NamedSharding | None:
    """Sharding of a batch: the sample axis split over every axis of the mesh."""
    if mesh is None:
        return None
    return NamedSharding(mesh, PartitionSpec(*([None] * leading), tuple(mesh.axis_names)))


def _constrain_batch(op: HessianOperator, batch: Any) -> Any:
    """``batch`` split over ``op``'s mesh along the sample axis (unchanged without a mesh)."""
    if op.mesh is None:
        return batch
    return jax.lax.with_sharding_constraint(batch, _batch_spec(op.mesh, 0))


def _weighted_batch_hvp(op: HessianOperator, v: Any, batch: Any) -> Any:
    """``(n_b / N) ∇²_θ loss_fn(θ, batch) v`` for one batch of ``n_b`` samples."""
    batch = _constrain_batch(op, batch)
    weight = tree.leading_dim(batch) / op.num_samples
    return tree.scale(hvp(op.loss_fn, op.params, v, batch), weight)


@jax.jit
def _dataset_hvp(op: HessianOperator, v: Any) -> Any:
    """All batches in one program: ``lax.scan`` over the full batches, then the tail."""
    body = lambda acc, batch: (tree.add(acc, _weighted_batch_hvp(op, v, batch)), None)
    total, _ = jax.lax.scan(body, tree.zeros_like(v), op.full)
    if tree.leading_dim(op.tail):
        total = tree.add(total, _weighted_batch_hvp(op, v, op.tail))
    return total


@jax.jit
def _add_batch_hvp(op: HessianOperator, v: Any, total: Any, index: jax.Array) -> Any:
    batch = jax.tree_util.tree_map(lambda a: a[index], op.full)
    return tree.add(total, _weighted_batch_hvp(op, v, batch))


@jax.jit
def _add_tail_hvp(op: HessianOperator, v: Any, total: Any) -> Any:
    return tree.add(total, _weighted_batch_hvp(op, v, op.tail))


def _host_dataset_hvp(op: HessianOperator, v: Any) -> Any:
    """The same sum with the loop over batches in Python (see :mod:`hessjax.loops`)."""
    total = tree.zeros_like(v)
    for index in range(tree.leading_dim(op.full)):
        total = _add_batch_hvp(op, v, total, index)
    return _add_tail_hvp(op, v, total) if tree.leading_dim(op.tail) else total


def hessian_operator(
    loss_fn: Callable, params: Any, data: Any, *, batch_size: int, mesh: Mesh | None = None
) -> HessianOperator:
    """The Hessian of the data-set mean loss, as a matvec ``v -> H v``.

    ``H = ∇²_θ (1/N) Σᵢ ℓ(θ, dataᵢ)``, evaluated batch by batch:
    ``H v = Σ_b (n_b / N) ∇²_θ loss_fn(θ, batch_b) v``, exact for any ``N`` (the short last batch is
    weighted by its size). ``loss_fn(params, batch)`` must return the MEAN loss of ``batch``; for a
    Flax model use :func:`hessjax.make_loss_fn`, which runs BatchNorm in inference mode.

    Args:
      loss_fn: ``(params, batch) -> scalar`` mean loss.
      params: the point θ at which the Hessian is taken.
      data: pytree of arrays sharing the leading axis ``N`` (e.g. ``(x, y)``).
      batch_size: samples per HVP evaluation (memory knob, not a statistical one).
      mesh: optional ``jax.sharding.Mesh``; each batch is split over all its devices (data
        parallel), params and vectors are replicated. ``batch_size`` must be divisible by
        ``mesh.size``.

    Returns:
      A :class:`HessianOperator`; every call reuses one compilation.
    """
    leaves = jax.tree_util.tree_leaves(data)
    if not leaves:
        raise ValueError("data holds no arrays; pass e.g. (x, y) with a shared leading axis")
    n = leaves[0].shape[0]
    if any(leaf.shape[:1] != (n,) for leaf in leaves):
        shapes = [leaf.shape for leaf in leaves]
        raise ValueError(f"every array in data must share the leading axis N; got shapes {shapes}")
    if n == 0:
        raise ValueError("data is empty (N = 0): the mean loss over no samples is undefined")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    batch_size = min(batch_size, n)
    if mesh is not None and batch_size % mesh.size:
        raise ValueError(
            f"batch_size={batch_size} is not divisible by the {mesh.size} devices of the mesh; "
            f"choose a multiple of {mesh.size}"
        )
    num_full = n // batch_size

    def as_array(leaf):
        return leaf if isinstance(leaf, jax.Array) else np.asarray(leaf)

    cut = num_full * batch_size
    full = jax.tree_util.tree_map(
        lambda a: as_array(a)[:cut].reshape(num_full, batch_size, *a.shape[1:]), data
    )
    tail = jax.tree_util.tree_map(lambda a: as_array(a)[cut:], data)
    tail_size = n - cut
    if mesh is None:
        full, tail = jax.device_put((full, tail))
    else:
        full = jax.device_put(full, _batch_spec(mesh, 1))
        tail_sharding = (
            _batch_spec(mesh, 0)
            if tail_size % mesh.size == 0
            else NamedSharding(mesh, PartitionSpec())
        )
        tail = jax.device_put(tail, tail_sharding)
        params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    return HessianOperator(_as_partial(loss_fn), params, full, tail, n, mesh)


def subsample(data: Any, num_samples: int, *, key: jax.Array) -> Any:
    """A uniformly random subset of ``num_samples`` samples (without replacement) of ``data``."""
    n = tree.leading_dim(data)
    if not 1 <= num_samples <= n:
        raise ValueError(
            f"num_samples must be in [1, {n}] for a data set of {n}, got {num_samples}"
        )
    idx = np.sort(np.asarray(jax.random.choice(key, n, (num_samples,), replace=False)))
    return jax.tree_util.tree_map(lambda a: a[idx], data)


def subsampled_hessian_operator(
    loss_fn: Callable,
    params: Any,
    data: Any,
    *,
    num_samples: int,
    key: jax.Array,
    batch_size: int | None = None,
    mesh: Mesh | None = None,
) -> HessianOperator:
    """The sub-sampled Hessian of PAPER.md: the Hessian of the mean loss over ``b_H = num_samples``
    random training samples (``b_H = 1`` allowed; its Hessian is typically indefinite)."""
    subset = subsample(data, num_samples, key=key)
    if batch_size is None:
        batch_size = min(num_samples, 256)
        if mesh is not None:
            batch_size = max(mesh.size, batch_size - batch_size % mesh.size)
    return hessian_operator(loss_fn, params, subset, batch_size=batch_size, mesh=mesh)


def dense_hessian(loss_fn: Callable, params: Any, *args) -> jax.Array:
    """The dense ``(P, P)`` Hessian of ``loss_fn`` over the raveled params (small models only)."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    size = flat.size
    if size > 20_000:
        raise ValueError(f"dense Hessian of {size} parameters is too large; use hessian_operator")
    return jax.hessian(lambda f: loss_fn(unravel(f), *args))(flat)


__all__ = [
    "HessianOperator",
    "dense_hessian",
    "hessian_operator",
    "hvp",
    "subsample",
    "subsampled_hessian_operator",
]
