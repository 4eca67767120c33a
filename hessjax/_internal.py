"""Small helpers shared by several hessjax modules (not public API).

* ``ApplyFn``: the type of a Flax ``model.apply``: ``apply_fn(variables, x) -> logits``.
* :func:`as_partial`: a callable as a pytree whose arrays are jit arguments.
* :func:`batch_sharding` / :func:`replicated`: where a batch / a shared pytree lives on a mesh.
* :func:`check_positive_int`: argument checks that accept numpy integers.
* :func:`committed` / :func:`committed_like`: arrays pinned where the computation runs, so host
  loops compile each piece once.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

#: ``apply_fn(variables, x) -> logits``, e.g. a Flax ``model.apply`` (BatchNorm in inference mode).
ApplyFn = Callable[..., jax.Array]

Partial = jax.tree_util.Partial


def as_partial(fn: Callable) -> Any:
    """A callable as a pytree whose arrays become jit arguments and whose function is static.

    Pytree callables (``Partial``, :class:`hessjax.HessianOperator`) pass through; a plain function
    is wrapped in a leaf-less ``Partial`` (compiled code is then cached on the function's identity).
    """
    leaves = jax.tree_util.tree_leaves(fn)
    return Partial(fn) if len(leaves) == 1 and leaves[0] is fn else fn


def _is_concrete_array(a: Any) -> bool:
    return isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer)


def _commit(tree: Any, target=None) -> Any:
    """``tree`` with its uncommitted concrete arrays placed on ``target`` (a device or sharding;
    None: where each already is, sharing its buffer)."""

    def commit(a):
        if _is_concrete_array(a) and not a.committed:
            return jax.device_put(a, a.sharding if target is None else target)
        return a

    return jax.tree_util.tree_map(commit, tree)


def committed(tree: Any) -> Any:
    """``tree`` with its uncommitted ``jax.Array`` leaves committed to the one device the tree
    uses (that of its committed leaves, else their own).

    ``jax.jit`` caches on whether each argument is committed, and a jitted function's outputs are
    committed only when its inputs were. A Python loop around compiled pieces (the CPU solvers,
    the data-set walks) whose first arguments are fresh uncommitted arrays (``jnp.zeros``, user
    params) and whose later ones are committed outputs would compile every piece twice (measured:
    the Lanczos update 0.55 s and a linearised M1 batch HVP 0.5 s, each twice). Committing where
    an array already is shares its buffer. A tree spread over several devices (a mesh) is
    returned unchanged: there jit itself places the uncommitted leaves (replicated). Tracers and
    non-arrays pass through.
    """
    arrays = [a for a in jax.tree_util.tree_leaves(tree) if _is_concrete_array(a)]
    devices = {d for a in arrays if a.committed for d in a.sharding.device_set}
    if len(devices) > 1 or all(a.committed for a in arrays):
        return tree
    return _commit(tree, next(iter(devices), None))


def committed_like(tree: Any, ref: Any) -> Any:
    """``tree`` with its uncommitted ``jax.Array`` leaves committed where ``ref`` (an array) lives:
    its device, or replicated over its mesh. For a host loop's first carry, given the first
    matvec result (see :func:`committed`). Unchanged when ``ref`` is uncommitted, traced, or
    spans devices of other processes."""
    if not _is_concrete_array(ref) or not ref.committed:
        return tree
    sharding = ref.sharding
    if not sharding.is_fully_addressable:
        return tree
    if isinstance(sharding, NamedSharding):
        return _commit(tree, NamedSharding(sharding.mesh, PartitionSpec()))
    if len(sharding.device_set) == 1:
        return _commit(tree, sharding)
    return tree


def auto_axes(mesh: Mesh) -> Mesh:
    """``mesh`` with every axis of type Auto (the same devices and names).

    ``jax.make_mesh`` gives Explicit axes by default, under which ``with_sharding_constraint``
    may not name the axes; hessjax places arrays on the Auto twin, so any mesh works.
    """
    types = getattr(mesh, "axis_types", None)
    auto = jax.sharding.AxisType.Auto
    if types is None or all(t == auto for t in types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(auto,) * len(mesh.axis_names))


def batch_sharding(mesh: Mesh | None, leading: int = 0) -> NamedSharding | None:
    """The sample axis (after ``leading`` axes) split over every axis of ``mesh``; None without."""
    if mesh is None:
        return None
    spec = PartitionSpec(*([None] * leading), tuple(mesh.axis_names))
    return NamedSharding(auto_axes(mesh), spec)


def replicated(mesh: Mesh | None) -> NamedSharding | None:
    """Every device of ``mesh`` holds the whole array (None without a mesh)."""
    return None if mesh is None else NamedSharding(auto_axes(mesh), PartitionSpec())


def mesh_size(mesh: Mesh | None) -> int:
    return 1 if mesh is None else int(mesh.size)


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is ``>= n``."""
    return -(-int(n) // multiple) * multiple


def check_positive_int(name: str, value: Any) -> int:
    """``value`` as a Python int if it is an integral scalar (int or numpy integer) >= 1."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    try:
        as_int = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a positive int, got {value!r}") from None
    if as_int < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(as_int)
