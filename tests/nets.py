"""Tiny Flax nets for dense-truth tests (few hundred parameters, float64)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import hessjax

F64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)


class MLP(nn.Module):
    features: Sequence[int] = (6, 5, 3)
    act: Callable = nn.relu
    float64: bool = True  # False: Flax's defaults (arithmetic in the weights' and inputs' dtype)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        for i, f in enumerate(self.features):
            x = nn.Dense(f, **(F64 if self.float64 else {}))(x)
            if i < len(self.features) - 1:
                x = self.act(x)
        return x


class SmallCNN(nn.Module):
    """conv → ReLU → BN → maxpool → conv → ReLU → BN → FC: the paper's C1 pattern, tiny."""

    num_classes: int = 3
    width: int = 3
    act: Callable = nn.relu

    @nn.compact
    def __call__(self, x, train: bool = False):
        for _ in range(2):
            x = nn.Conv(self.width, (3, 3), **F64)(x)
            x = self.act(x)
            x = nn.BatchNorm(use_running_average=not train, **F64)(x)
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return nn.Dense(self.num_classes, **F64)(x.reshape(x.shape[0], -1))


class TinyResNet(nn.Module):
    """Stem conv+BN, one BasicBlock with a 1x1 projection shortcut, global pool, FC."""

    num_classes: int = 3
    width: int = 2

    @nn.compact
    def __call__(self, x, train: bool = False):
        bn = lambda: nn.BatchNorm(use_running_average=not train, **F64)
        conv = lambda f, k, s=1: nn.Conv(f, (k, k), strides=s, use_bias=False, **F64)
        x = nn.relu(bn()(conv(self.width, 3)(x)))
        y = nn.relu(bn()(conv(2 * self.width, 3, 2)(x)))
        y = bn()(conv(2 * self.width, 3)(y))
        x = nn.relu(y + bn()(conv(2 * self.width, 1, 2)(x)))
        return nn.Dense(self.num_classes, **F64)(x.mean(axis=(1, 2)))


def init_with_random_bn(model: nn.Module, key: jax.Array, x: jax.Array) -> dict:
    """Init variables and give BatchNorm random (non-trivial) running statistics and scales."""
    variables = model.init(key, x)
    leaves, treedef = jax.tree_util.tree_flatten(variables)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(variables)[0]]
    out = []
    for path, leaf, k in zip(paths, leaves, keys):
        if "var" in path:
            leaf = jax.random.uniform(k, leaf.shape, leaf.dtype, 0.5, 2.0)
        elif "mean" in path or "BatchNorm" in path:
            leaf = leaf + 0.3 * jax.random.normal(k, leaf.shape, leaf.dtype)
        out.append(leaf.astype(jnp.float64))  # Flax keeps BN statistics in float32 otherwise
    return jax.tree_util.tree_unflatten(treedef, out)


def random_data(seed: int, n: int, shape: Sequence[int], num_classes: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape))
    y = rng.integers(0, num_classes, size=n).astype(np.int32)
    return x, y


def loss_problem(model: nn.Module, shape: Sequence[int], seed: int, n: int):
    """``(loss_fn, params, (x, y))``: ``model`` with random BN statistics on ``n`` random samples
    of ``shape`` (3 classes), its mean loss from :func:`hessjax.make_loss_fn`."""
    x, y = random_data(seed, n, shape, 3)
    variables = init_with_random_bn(model, jax.random.key(seed), jnp.asarray(x[:1]))
    return hessjax.make_loss_fn(model.apply, variables), variables["params"], (x, y)


@jax.jit
def dense_hessian(loss_fn, params, batch):
    """Dense Hessian by jax.hessian (jacfwd of jacrev) of the raveled params; one compile per
    model and data shape (loss_fn is a pytree argument, so seeds share it)."""
    flat, unravel = ravel_pytree(params)
    return jax.hessian(lambda f: loss_fn(unravel(f), batch))(flat)
