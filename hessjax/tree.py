"""Small pytree arithmetic used by the solvers (vectors are pytrees shaped like the params)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def zeros_like(t: Any) -> Any:
    return jax.tree_util.tree_map(jnp.zeros_like, t)


def add(a: Any, b: Any) -> Any:
    return jax.tree_util.tree_map(jnp.add, a, b)


def scale(t: Any, s) -> Any:
    return jax.tree_util.tree_map(lambda x: (x * s).astype(x.dtype), t)


def vdot(a: Any, b: Any) -> jax.Array:
    """Σ over leaves of ⟨a, b⟩ (real)."""
    return sum(
        jnp.vdot(x, y)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    )


def norm(t: Any) -> jax.Array:
    return jnp.sqrt(vdot(t, t))


def leading_dim(t: Any, axis: int = 0) -> int:
    """Size of ``axis`` shared by the leaves of ``t`` (0 for an empty pytree)."""
    leaves = jax.tree_util.tree_leaves(t)
    return int(leaves[0].shape[axis]) if leaves else 0
