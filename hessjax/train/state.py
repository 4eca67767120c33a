"""The training state: one pytree holding everything that changes during training."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

__all__ = ["TrainState", "init_state", "state_variables"]


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree (saved whole in checkpoints).

    ``step``: int32 scalar, updates done so far. ``params``/``batch_stats``: the Flax collections
    (``batch_stats`` is ``{}`` for a model without BatchNorm). ``opt_state``: optax state.
    ``key``: raw ``uint32`` key data (``jax.random.key_data``), so checkpoints hold plain arrays.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    key: jax.Array


def init_state(
    variables: Mapping[str, Any], tx: optax.GradientTransformation, key: jax.Array | int
) -> TrainState:
    """A fresh :class:`TrainState` from ``model.init(...)`` variables, an optimiser, a key/seed."""
    key = jax.random.key(key) if isinstance(key, int) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    # Copies: the step donates the state, which must not delete the caller's ``variables``.
    params = jax.tree_util.tree_map(jnp.array, variables["params"])
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=jax.tree_util.tree_map(jnp.array, dict(variables.get("batch_stats", {}))),
        opt_state=tx.init(params),
        key=jnp.asarray(key),
    )


def state_variables(state: TrainState) -> dict[str, Any]:
    """The Flax variables ``{"params", ["batch_stats"]}`` of a state, for ``model.apply``."""
    return variables_of(state.params, state.batch_stats)


def variables_of(params: Any, batch_stats: Any) -> dict[str, Any]:
    """``{"params": params}`` plus ``"batch_stats"`` when there are any (not public API)."""
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
