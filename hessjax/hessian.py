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
from jax.sharding import Mesh

from hessjax import batching, loops, tree
from hessjax._internal import Partial, as_partial, batch_sharding, check_positive_int, replicated


def hvp(loss_fn: Callable, params: Any, v: Any, *args) -> Any:
    """Exact ``∇²_θ loss_fn(θ, *args) · v`` at ``θ = params`` (forward-over-reverse).

    ``v`` has the structure, shapes and dtypes of ``params``; so has the result.
    """
    grad_fn = lambda p: jax.grad(loss_fn)(p, *args)
    return jax.jvp(grad_fn, (params,), (v,))[1]


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
    #: The cached linearisation (:meth:`linearize`) every call then uses, or None.
    linear: Any = None

    @property
    def tail_size(self) -> int:
        return tree.leading_dim(self.tail)

    @property
    def is_linearized(self) -> bool:
        return self.linear is not None

    def __call__(self, v: Any) -> Any:
        if self.linear is not None:
            return self.linear(v)
        return batching.batch_mean(
            _batch_hvp,
            (self, v),
            self.full,
            self.tail,
            batch_size=tree.leading_dim(self.full, axis=1),
            tail_size=self.tail_size,
            init=tree.zeros_like(v),
            host=loops.host_loops() and not loops.is_traced((self, v)),
        )

    def linearize(self, *, max_bytes: int | None = None):
        """The same operator with each batch's linearised gradient cached (faster repeated HVPs,
        more memory); see :func:`hessjax.linearized.linearize`."""
        from hessjax import linearized

        if self.linear is not None:
            return self.linear
        return linearized.linearize(self, max_bytes=max_bytes)


def _constrain_batch(op: HessianOperator, batch: Any) -> Any:
    """``batch`` split over ``op``'s mesh along the sample axis (unchanged without a mesh)."""
    if op.mesh is None:
        return batch
    return jax.lax.with_sharding_constraint(batch, batch_sharding(op.mesh))


def _batch_hvp(op_and_v: tuple[HessianOperator, Any], batch: Any) -> Any:
    """``∇²_θ loss_fn(θ, batch) v`` for one batch (mean loss of the batch)."""
    op, v = op_and_v
    return hvp(op.loss_fn, op.params, v, _constrain_batch(op, batch))


def hessian_operator(
    loss_fn: Callable,
    params: Any,
    data: Any,
    *,
    batch_size: int,
    mesh: Mesh | None = None,
    linearize: bool | str = "auto",
    memory_budget: int | None = None,
) -> HessianOperator:
    """The Hessian of the data-set mean loss, as a matvec ``v -> H v``.

    ``H = ∇²_θ (1/N) Σᵢ ℓ(θ, dataᵢ)``, evaluated batch by batch:
    ``H v = Σ_b (n_b / N) ∇²_θ loss_fn(θ, batch_b) v``, exact for any ``N`` (the short last batch is
    weighted by its size). ``loss_fn(params, batch)`` must return the MEAN loss of ``batch`` over
    per-sample losses (so ``H`` does not depend on how the data are batched); for a Flax model use
    :func:`hessjax.make_loss_fn`, which runs BatchNorm in inference mode.

    Args:
      loss_fn: ``(params, batch) -> scalar`` mean loss.
      params: the point θ at which the Hessian is taken.
      data: pytree of arrays sharing the leading axis ``N`` (e.g. ``(x, y)``).
      batch_size: the most samples one HVP evaluation may hold (a memory bound, not a statistical
        knob); an int or a numpy integer. The operator may use smaller batches where they are
        faster (:func:`hessjax.batching.fast_batch_size`: at most 128 samples per device on CPU,
        sized for one compiled batch shape).
      linearize: ``"auto"`` (default): cache each batch's linearised gradient
        (:meth:`HessianOperator.linearize`, each HVP ~25% cheaper) when its residuals fit
        ``memory_budget``, else stay plain, and log the choice (logger ``"hessjax"``); True:
        always (ValueError over the budget); False: never.
      memory_budget: bytes the cached residuals may take; None: :func:`hessjax.linearized.
        memory_budget` (a :func:`~hessjax.linearized.memory_budget_scope` in force, else
        ``MEMORY_FRACTION`` of the device's free memory).
      mesh: optional ``jax.sharding.Mesh``; each batch is split over all its devices (data
        parallel), params and vectors are replicated. ``batch_size`` must be divisible by
        ``mesh.size``. With several processes (``hessjax.distributed``) the mesh spans all of
        them, numpy ``data`` is the global data set (the same on every process; each places its
        own rows) or ``data`` are global ``jax.Array`` s, ``batch_size`` is global, and ``H v``
        is the same replicated vector on every process.

    Returns:
      A :class:`HessianOperator`; every call reuses one compilation.
    """
    n = _check_data(data)
    batch_size = min(check_positive_int("batch_size", batch_size), n)
    if linearize not in (True, False, "auto"):
        raise ValueError(f"linearize must be True, False or 'auto', got {linearize!r}")
    loss_fn = as_partial(loss_fn)
    _check_scalar_loss(loss_fn, params, jax.tree_util.tree_map(lambda a: a[:batch_size], data))
    batching.check_mesh_divides(batch_size, mesh)
    batch_size = batching.fast_batch_size(batch_size, mesh, n)
    full, tail = batching.device_batches(data, batch_size, mesh)
    if mesh is not None:
        params = jax.device_put(params, replicated(mesh))
    op = HessianOperator(loss_fn, params, full, tail, n, mesh)
    if linearize is False or loops.is_traced((params, data)):
        return op
    from hessjax import linearized

    return linearized.attach(op, required=linearize is True, budget=memory_budget)


def _check_data(data: Any) -> int:
    """``N``, the leading axis shared by every array of ``data``; ValueError naming the problem."""
    leaves = jax.tree_util.tree_leaves(data)
    if not leaves:
        raise ValueError("data holds no arrays; pass e.g. (x, y) with a shared leading axis")
    n = leaves[0].shape[0] if np.ndim(leaves[0]) else None
    if n is None or any(np.shape(leaf)[:1] != (n,) for leaf in leaves):
        shapes = [np.shape(leaf) for leaf in leaves]
        raise ValueError(f"every array in data must share the leading axis N; got shapes {shapes}")
    if n == 0:
        raise ValueError("data is empty (N = 0): the mean loss over no samples is undefined")
    return int(n)


def _check_scalar_loss(loss_fn: Callable, params: Any, batch: Any) -> None:
    """Fail with a clear message, before any compilation, if ``loss_fn`` is not scalar-valued."""
    out = jax.eval_shape(loss_fn, params, batch)
    shape = getattr(out, "shape", None)
    if shape != ():
        raise ValueError(
            f"loss_fn must return a scalar mean loss over the batch; got shape {shape} for a batch "
            "of the data. Reduce per-sample losses with .mean(), e.g. hessjax.make_loss_fn"
        )


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
    """The sub-sampled Hessian (docs/paper.md, "Hessian computations"): the Hessian of the mean
    loss over ``b_H = num_samples`` random training samples (``b_H = 1`` allowed; its Hessian is
    typically indefinite)."""
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
