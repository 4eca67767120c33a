"""The paper's networks (docs/paper.md, "Models (Table 6)") as Flax linen modules.

=====  ========  =================================================================  ==========
name   data      layers                                                             params
=====  ========  =================================================================  ==========
c1     CIFAR-10  2 x [conv5x5/64 s1 p2, ReLU, BN, maxpool3 s2 p1], FC 384-192-10     1,756,682
c2     CIFAR-10  2 x [conv3x3 valid, ReLU, BN] (64, 128), each + maxpool2,           1,148,746
                 FC 3200-256-256-10
c3     CIFAR-10  c2 without BatchNorm (Carlini-Wagner CIFAR net)                     1,147,978
m1     MNIST     conv5x5/20 s2 p2, conv5x5/50 s2 p2, FC 2450-500-10                  1,256,080
cr     CIFAR-100 ResNet-18 for CIFAR (kuangliu style), FC 512-100                   11,220,132
=====  ========  =================================================================  ==========

Parameter counts include BatchNorm scale/bias and exclude the running statistics
(``batch_stats``). ReLU follows every conv/FC layer except the last; there is no dropout.

Conventions shared by every model:

* input ``x`` is NHWC, ``(N, 32, 32, 3)`` for CIFAR models and ``(N, 28, 28, 1)`` for ``m1``;
  output is logits ``(N, num_classes)``;
* ``__call__(x, train=False)``: BatchNorm uses batch statistics when ``train`` and the running
  averages otherwise, so ``model.apply(variables, x)`` is inference mode (the library's
  ``apply_fn(variables, x) -> logits``) and
  ``model.apply(variables, x, train=True, mutable=["batch_stats"])`` is training mode;
* BatchNorm momentum 0.9 (PyTorch's 0.1) and epsilon 1e-5, scale 1 / bias 0 at init;
* conv/dense weights use PyTorch's default init, kaiming-uniform with ``a = sqrt(5)``, i.e.
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)) = ``variance_scaling(1/3, "fan_in", "uniform")``; biases are
  drawn from the same U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as in PyTorch. Convs and dense layers have
  biases except the ResNet convs (bias-free, followed by BatchNorm);
* ``dtype`` (computation) and ``param_dtype`` (parameters, default float32) are passed to every
  layer; use ``param_dtype=jnp.float64`` for float64 work.

Spatial padding is explicit (PyTorch style) wherever it matters: flax's ``"SAME"`` pads stride-2
convolutions asymmetrically, PyTorch symmetrically.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from hessjax import conv as conv_lib

__all__ = [
    "C1",
    "CNN",
    "M1",
    "BasicBlock",
    "CifarResNet",
    "MODELS",
    "get",
    "init",
    "input_shape",
    "param_count",
]

Dtype = Any

CIFAR_SHAPE = (32, 32, 3)
MNIST_SHAPE = (28, 28, 1)

#: PyTorch's default weight init for Conv*/Linear: kaiming_uniform(a=sqrt(5)).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Callable:
    """PyTorch's default bias init U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for a layer of that fan-in."""
    bound = 1.0 / math.sqrt(fan_in)

    def init_fn(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init_fn


class _Layers(nn.Module):
    """Mixin: ``dtype``/``param_dtype``/``conv_implementation`` fields and layer factories.

    ``conv_implementation``: ``"xla"`` (default), ``"patches"`` or ``"auto"``; see
    :mod:`hessjax.conv`. It changes speed only, not the parameters or (beyond rounding) the values.
    """

    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    conv_implementation: str = "xla"

    def conv(
        self,
        x,
        features: int,
        kernel: int,
        stride: int = 1,
        padding: Any = 0,
        use_bias: bool = True,
    ) -> jax.Array:
        """Conv ``kernel x kernel``, symmetric integer ``padding`` or a flax padding string."""
        fan_in = kernel * kernel * x.shape[-1]
        return conv_lib.Conv(
            features,
            (kernel, kernel),
            strides=stride,
            padding=padding,
            use_bias=use_bias,
            implementation=self.conv_implementation,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=torch_kernel_init,
            bias_init=torch_bias_init(fan_in),
        )(x)

    def dense(self, x, features: int) -> jax.Array:
        return nn.Dense(
            features,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=torch_kernel_init,
            bias_init=torch_bias_init(x.shape[-1]),
        )(x)

    def bn(self, x, train: bool) -> jax.Array:
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(x)


class C1(_Layers):
    """C1 (authors' code): 2 x [conv5x5/64 s1 p2, ReLU, BN, maxpool 3x3 s2 p1], FC 384, 192, c.

    ``(N, 32, 32, 3) -> 16x16x64 -> 8x8x64 -> 4096 -> 384 -> 192 -> (N, num_classes)``.
    """

    num_classes: int = 10
    INPUT_SHAPE: ClassVar[tuple[int, ...]] = CIFAR_SHAPE

    @nn.compact
    def __call__(self, x, train: bool = False):
        for _ in range(2):
            x = self.bn(nn.relu(self.conv(x, 64, 5, padding=2)), train)
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        x = x.reshape(x.shape[0], -1)
        for width in (384, 192):
            x = nn.relu(self.dense(x, width))
        return self.dense(x, self.num_classes)


class CNN(_Layers):
    """C2 (``batch_norm=True``) and C3 (``batch_norm=False``): the Carlini-Wagner CIFAR net.

    2 x [conv3x3 valid, ReLU, (BN), conv3x3 valid, ReLU, (BN), maxpool 2] with 64 then 128
    channels, FC 256, 256, c.
    ``(N, 32, 32, 3) -> 30 -> 28 -> 14x14x64 -> 12 -> 10 -> 5x5x128 = 3200 -> 256 -> 256 -> c``.
    """

    num_classes: int = 10
    batch_norm: bool = True
    INPUT_SHAPE: ClassVar[tuple[int, ...]] = CIFAR_SHAPE

    @nn.compact
    def __call__(self, x, train: bool = False):
        for width in (64, 128):
            for _ in range(2):
                x = nn.relu(self.conv(x, width, 3, padding="VALID"))
                if self.batch_norm:
                    x = self.bn(x, train)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        for width in (256, 256):
            x = nn.relu(self.dense(x, width))
        return self.dense(x, self.num_classes)


class M1(_Layers):
    """M1 (MNIST): conv5x5/20 s2 p2, ReLU, conv5x5/50 s2 p2, ReLU, FC 500, ReLU, FC c.

    ``(N, 28, 28, 1) -> 14x14x20 -> 7x7x50 = 2450 -> 500 -> (N, num_classes)``.
    ``train`` is accepted for a uniform interface and has no effect.
    """

    num_classes: int = 10
    INPUT_SHAPE: ClassVar[tuple[int, ...]] = MNIST_SHAPE

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(self.conv(x, 20, 5, stride=2, padding=2))
        x = nn.relu(self.conv(x, 50, 5, stride=2, padding=2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(self.dense(x, 500))
        return self.dense(x, self.num_classes)


class BasicBlock(_Layers):
    """ResNet basic block: ``relu(bn(conv3x3(relu(bn(conv3x3_s(x))))) + shortcut(x))``.

    The shortcut is the identity, or conv1x1/stride + BN when the stride or width changes.
    ``(N, H, W, C) -> (N, H/stride, W/stride, features)``.
    """

    features: int = 64
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = nn.relu(self.bn(self.conv(x, self.features, 3, self.stride, 1, use_bias=False), train))
        y = self.bn(self.conv(y, self.features, 3, 1, 1, use_bias=False), train)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = self.bn(self.conv(x, self.features, 1, self.stride, 0, use_bias=False), train)
        return nn.relu(y + x)


class CifarResNet(_Layers):
    """CR: ResNet for 32x32 inputs (kuangliu/pytorch-cifar), ResNet-18 by default.

    Stem conv3x3/64 s1 (no bias), BN, ReLU, no max-pool; stages of ``stage_sizes`` BasicBlocks
    with widths 64/128/256/512 and strides 1/2/2/2; global average pool; FC ``num_classes``.
    ``(N, 32, 32, 3) -> 32x32x64 -> 16x16x128 -> 8x8x256 -> 4x4x512 -> 512 -> (N, num_classes)``.
    """

    num_classes: int = 100
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    INPUT_SHAPE: ClassVar[tuple[int, ...]] = CIFAR_SHAPE

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(self.bn(self.conv(x, 64, 3, 1, 1, use_bias=False), train))
        for i, n_blocks in enumerate(self.stage_sizes):
            for j in range(n_blocks):
                x = BasicBlock(
                    features=64 * 2**i,
                    stride=2 if (i > 0 and j == 0) else 1,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    conv_implementation=self.conv_implementation,
                )(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return self.dense(x, self.num_classes)


#: name -> (constructor, fixed keyword arguments).
MODELS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "c1": (C1, {}),
    "c2": (CNN, {"batch_norm": True}),
    "c3": (CNN, {"batch_norm": False}),
    "m1": (M1, {}),
    "cr": (CifarResNet, {}),
}


def _lookup(name: str) -> tuple[type[nn.Module], dict[str, Any]]:
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}"
        ) from None


def get(name: str, **kw) -> nn.Module:
    """The model called ``name`` (case-insensitive: c1, c2, c3, m1, cr).

    ``kw`` goes to the module: ``num_classes`` (default 10, 100 for ``cr``), ``dtype``,
    ``param_dtype``, ``conv_implementation`` (:mod:`hessjax.conv`). Unknown names raise
    ``ValueError`` listing the valid ones.
    """
    cls, fixed = _lookup(name)
    return cls(**{**fixed, **kw})


def input_shape(name: str) -> tuple[int, ...]:
    """Per-example NHWC input shape of model ``name``: (28, 28, 1) for m1, else (32, 32, 3)."""
    return _lookup(name)[0].INPUT_SHAPE


def init(
    model_or_name: nn.Module | str, key: jax.Array, input_shape: Sequence[int] | None = None
) -> dict:
    """Initial variables ``{"params": ..., ["batch_stats": ...]}`` of a model or model name.

    ``input_shape`` is the per-example shape (default: the model's own); a batch of one zero
    input of the model's ``param_dtype`` is traced in inference mode.
    """
    model = get(model_or_name) if isinstance(model_or_name, str) else model_or_name
    shape = tuple(input_shape) if input_shape is not None else type(model).INPUT_SHAPE
    dtype = getattr(model, "param_dtype", jnp.float32)
    return model.init(key, jnp.zeros((1, *shape), dtype))


def param_count(params: Mapping) -> int:
    """Number of scalars in a parameter tree (arrays or ``jax.ShapeDtypeStruct`` leaves).

    Given a whole variables dict with a ``"params"`` entry, only that entry is counted, so the
    BatchNorm running statistics (``batch_stats``) are excluded.
    """
    if isinstance(params, Mapping) and "params" in params:
        params = params["params"]
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))
