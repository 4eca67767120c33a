"""Loss, accuracy and the full-batch gradient norm of a model over a whole data set.

* :func:`per_sample_metrics`: (N,) cross-entropy and correctness of every sample, inference mode;
* :func:`evaluate`: ``(mean CE, accuracy)`` from them;
* :func:`full_gradient_norm`: ``‖∇_θ (1/N) Σᵢ ℓᵢ(θ)‖₂`` (docs/paper.md, Fig. 4).

Samples are processed ``batch_size`` at a time (:mod:`hessjax.batching`; one compilation for any
``N``) and, with a ``mesh``, split over its devices. Per-sample values are summed on the host in
float64, so the result does not depend on the batch size or on the number of devices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from hessjax import batching, loops, tree
from hessjax._internal import ApplyFn, as_partial, check_positive_int, replicated

__all__ = ["evaluate", "full_gradient_norm", "per_sample_metrics"]


@functools.partial(jax.jit, static_argnums=0)
def _chunk_metrics(apply_fn: ApplyFn, variables: Any, chunk: tuple) -> tuple[jax.Array, jax.Array]:
    x, y = chunk
    logits = apply_fn(variables, x)
    return (
        optax.softmax_cross_entropy_with_integer_labels(logits, y),
        jnp.argmax(logits, -1) == y,
    )


def per_sample_metrics(
    apply_fn: ApplyFn,
    variables: Any,
    x,
    y,
    *,
    batch_size: int = 1000,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(loss (N,), correct (N,) bool)``: ``CE(apply_fn(variables, x)ᵢ, yᵢ)`` and
    ``argmax apply_fn(variables, x)ᵢ == yᵢ`` for every sample (inference mode)."""
    check_positive_int("batch_size", batch_size)
    if len(x) != len(y):
        raise ValueError(f"need x (N, ...) and y (N,); got {len(x)} and {len(y)} samples")
    chunk_fn = functools.partial(_chunk_metrics, apply_fn)
    loss, correct = batching.map_chunks(chunk_fn, variables, (x, y), batch_size, mesh=mesh)
    return np.asarray(loss), np.asarray(correct)


def evaluate(
    apply_fn: ApplyFn,
    variables: Any,
    x,
    y,
    batch_size: int = 1000,
    *,
    mesh: Mesh | None = None,
) -> tuple[float, float]:
    """``(mean CE, accuracy)`` over all ``N`` samples of ``apply_fn(variables, x)`` (inference
    mode): ``(1/N) Σᵢ CE(zᵢ, yᵢ)`` and ``(1/N) Σᵢ [argmax zᵢ = yᵢ]``."""
    loss, correct = per_sample_metrics(apply_fn, variables, x, y, batch_size=batch_size, mesh=mesh)
    return float(np.mean(loss, dtype=np.float64)), float(np.mean(correct, dtype=np.float64))


def _batch_gradient(loss_and_params: tuple, batch: Any) -> Any:
    loss_fn, params = loss_and_params
    return jax.grad(loss_fn)(params, batch)


def full_gradient_norm(
    loss_fn: Callable, params: Any, data: Any, batch_size: int, *, mesh: Mesh | None = None
) -> float:
    """``‖∇_θ (1/N) Σᵢ ℓᵢ(θ)‖₂ = ‖Σ_b (n_b/N) ∇_θ loss_fn(θ, batch_b)‖₂`` (docs/paper.md, Fig. 4).

    ``loss_fn(params, batch)`` returns the MEAN loss of a batch (e.g. :func:`hessjax.make_loss_fn`,
    BN in inference mode); ``data`` is a pytree of arrays sharing the leading axis ``N``. With a
    ``mesh``, ``batch_size`` must be divisible by its device count.
    """
    n = tree.leading_dim(data)
    batch_size = min(check_positive_int("batch_size", batch_size), n)
    batching.check_mesh_divides(batch_size, mesh)
    batch_size = batching.fast_batch_size(batch_size, mesh, n)  # a memory bound (as the Hessian's)
    full, tail = batching.device_batches(data, batch_size, mesh)
    if mesh is not None:
        params = jax.device_put(params, replicated(mesh))
    total = batching.batch_mean(
        _batch_gradient,
        (as_partial(loss_fn), params),
        full,
        tail,
        batch_size=batch_size,
        tail_size=tree.leading_dim(tail),
        init=tree.zeros_like(params),
        host=loops.host_loops(),
    )
    return float(tree.norm(total))
