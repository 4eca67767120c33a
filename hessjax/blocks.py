"""Diagonal blocks of the Hessian: the loss's Hessian w.r.t. a subset S of the parameters.

``H_SS = ∇²_{θ_S} L(θ_S, θ_{S̄})`` with the other parameters ``θ_{S̄}`` fixed at their values: the
``(|S|, |S|)`` sub-block of the full Hessian on the rows/columns of S. A block operator is an
ordinary :class:`~hessjax.HessianOperator` of the *restricted* loss
``L_S(θ_S, batch) = L(merge(θ, θ_S), batch)``, so every solver (``eigenvalues``, ``trace``,
``density``, the trace/diagonal estimators), ``.linearize()``, batching with exact tail weights
and the mesh apply unchanged. Its vector space is the selected sub-params: a flat dict
``{path: array}`` with paths like ``"Conv_0/kernel"`` (``op.params``; eigenvectors come back in
that form).

Selecting parameters (``select=``), by their path (keys joined by ``/``):

* a string: a module name or path prefix; matches a leaf whose path equals it or starts with it
  followed by ``/`` (``"Dense_1"``, ``"BasicBlock_0/Conv_0"``, ``"Dense_1/kernel"``);
* a compiled ``re.Pattern``: ``pattern.search(path)`` (e.g. ``re.compile(r"kernel$")``);
* a callable ``(path, leaf) -> bool``;
* a list/tuple of these: their union.

A selector that matches nothing raises ``ValueError`` listing the available paths.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.sharding import Mesh

from hessjax._internal import Partial, as_partial, replicated
from hessjax.hessian import HessianOperator, hessian_operator

Selector = str | re.Pattern | Callable[[str, Any], bool] | Sequence[Any]

__all__ = [
    "Selector",
    "block_operator",
    "layer_names",
    "layer_selector",
    "merge",
    "param_paths",
    "restrict",
    "restricted_loss",
]


def _path_str(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def param_paths(params: Any) -> list[str]:
    """Every leaf's path, keys joined by ``/`` (e.g. ``"Conv_0/kernel"``), in leaf order."""
    return [_path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _matches(selector: Selector, path: str, leaf: Any) -> bool:
    if isinstance(selector, str):
        return path == selector or path.startswith(selector + "/")
    if isinstance(selector, re.Pattern):
        return selector.search(path) is not None
    if callable(selector):
        return bool(selector(path, leaf))
    if isinstance(selector, Sequence):
        return any(_matches(s, path, leaf) for s in selector)
    raise TypeError(
        f"select must be a str (module name or path prefix), a re.Pattern, a callable "
        f"(path, leaf) -> bool, or a list of these; got {type(selector).__name__}"
    )


def restrict(params: Any, select: Selector) -> dict[str, Any]:
    """The selected leaves of ``params`` as a flat dict ``{path: leaf}`` (the block's space).

    ValueError, listing the available paths, if nothing is selected.
    """
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    sub = {_path_str(p): leaf for p, leaf in leaves if _matches(select, _path_str(p), leaf)}
    if not sub:
        paths = [_path_str(p) for p, _ in leaves]
        raise ValueError(
            f"select={select!r} matches no parameter; available paths: {paths}. Use a module "
            "name or path prefix (e.g. 'Dense_0'), re.compile(...) or a (path, leaf) predicate"
        )
    return sub


def merge(params: Any, sub: dict[str, Any]) -> Any:
    """``params`` with the leaves named in ``sub`` (paths as in :func:`restrict`) replaced."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    out = [sub.get(_path_str(p), leaf) for p, leaf in leaves]
    return jax.tree_util.tree_unflatten(treedef, out)


def _block_loss(loss_fn: Callable, params: Any, sub: dict[str, Any], batch: Any) -> jax.Array:
    return loss_fn(merge(params, sub), batch)


def restricted_loss(loss_fn: Callable, params: Any, select: Selector) -> tuple[Partial, dict]:
    """``(L_S, θ_S)``: ``L_S(sub, batch) = loss_fn(merge(params, sub), batch)`` as a ``Partial``
    (``loss_fn`` and the fixed ``params`` travel as pytree arguments, not compiled constants) and
    the selected sub-params ``θ_S = restrict(params, select)``."""
    sub = restrict(params, select)
    return Partial(_block_loss, as_partial(loss_fn), params), sub


def block_operator(
    loss_fn: Callable,
    params: Any,
    data: Any,
    *,
    select: Selector,
    batch_size: int,
    mesh: Mesh | None = None,
    linearize: bool | str = "auto",
    memory_budget: int | None = None,
) -> HessianOperator:
    """The Hessian block ``H_SS`` of the data-set mean loss, as a matvec on the sub-params.

    ``H_SS v_S = Σ_b (n_b / N) ∇²_{θ_S} loss_fn(θ, batch_b) v_S`` (other params fixed); the
    arguments are those of :func:`hessjax.hessian_operator` plus ``select`` (module docstring).
    Returns a :class:`~hessjax.HessianOperator` whose ``params`` is ``restrict(params, select)``:
    pass ``op.params`` to the solvers, e.g.
    ``hessjax.eigenvalues(op, op.params, k=1, key=key)``.
    """
    if mesh is not None:
        params = jax.device_put(params, replicated(mesh))
    block_loss, sub = restricted_loss(loss_fn, params, select)
    return hessian_operator(
        block_loss,
        sub,
        data,
        batch_size=batch_size,
        mesh=mesh,
        linearize=linearize,
        memory_budget=memory_budget,
    )


def layer_names(params: Any) -> list[str]:
    """The layers of ``params``: each leaf's path without its last key (``"Conv_0/kernel"`` ->
    ``"Conv_0"``; a top-level leaf is its own layer), in first-appearance order.
    :func:`layer_selector` selects exactly one layer's leaves."""
    return list(dict.fromkeys(_layer_of(path) for path in param_paths(params)))


def _layer_of(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else path


def layer_selector(name: str) -> Callable[[str, Any], bool]:
    """A selector for exactly the leaves directly under layer ``name`` (not its sub-modules')."""
    return lambda path, leaf: _layer_of(path) == name
