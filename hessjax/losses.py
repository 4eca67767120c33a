"""Losses in the form the Hessian tools take: ``loss_fn(params, batch) -> mean loss``.

The loss is a ``jax.tree_util.Partial`` so that model state (BatchNorm running statistics) travels
as a pytree *argument* of every compiled function, never as a captured constant: one compilation
serves every checkpoint of a model (DESIGN.md, "pure functions, explicit arguments").
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from hessjax import precision as precision_
from hessjax._internal import ApplyFn


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy; logits (B, c), integer labels (B,) -> scalar."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def split_variables(variables: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Flax variables -> (params, every other collection, e.g. {"batch_stats": ...})."""
    if "params" not in variables:
        raise ValueError(
            f"variables has no 'params' collection (found {sorted(variables)}); pass the dict "
            "returned by model.init(...)"
        )
    return variables["params"], {k: v for k, v in variables.items() if k != "params"}


def _cross_entropy_of(apply_fn: ApplyFn, state: dict, params: Any, batch: tuple) -> jax.Array:
    x, y = batch
    return cross_entropy(apply_fn({"params": params, **state}, x), y)


@functools.lru_cache(maxsize=64)
def _loss_for(apply_fn: ApplyFn) -> Callable:
    # One function object per apply_fn, so repeated make_loss_fn calls share compilations.
    return functools.partial(_cross_entropy_of, apply_fn)


def make_loss_fn(
    apply_fn: ApplyFn,
    variables: Mapping[str, Any],
    *,
    precision: str | None = precision_.CURVATURE_PRECISION,
) -> jax.tree_util.Partial:
    """``loss_fn(params, (x, y)) = mean_i CE(apply_fn({"params": params, **state}, x)_i, y_i)``.

    ``apply_fn(variables, x) -> logits`` runs BatchNorm in inference mode (``model.apply``), so the
    Hessian of this loss w.r.t. ``params`` is the one the paper uses (docs/paper.md, "Hessian
    computations"): all trainable parameters, BN scale/offset included, running statistics fixed.
    The model is traced under ``jax.default_matmul_precision(precision)`` (default "float32", not
    TF32 on GPUs; None: the caller's setting; hessjax/precision.py), and so are its derivatives.
    """
    _, state = split_variables(variables)
    loss = _loss_for(precision_.at(apply_fn, precision))
    return jax.tree_util.Partial(loss, jax.tree_util.tree_map(jnp.asarray, state))
