"""2-D convolution with a choice of kernel: XLA's convolution, or patches and one matrix product.

XLA:CPU runs ``lax.conv_general_dilated`` and its two transposes (the input gradient and,
slowest, the kernel gradient) on Eigen's spatial-convolution kernels, 2-10x PyTorch's oneDNN time
for the kernel gradient (docs/benchmarks.md, "Convolutions as patches + one GEMM"). The patches form

    P[n, h, w, (i, j, c)] = x_pad[n, s*h + i, s*w + j, c]        (N, Ho, Wo, kh*kw*Cin)
    y = P @ K.reshape(kh*kw*Cin, Cout)                            (N, Ho, Wo, Cout)

is the same linear map written as strided slices and one GEMM, so its transposes are a GEMM
(``dK = P^T g``) and a GEMM followed by slice-adds (``dx``); forward-over-reverse HVPs and
``jax.linearize`` go through the same GEMMs. On CPU this is faster for strided convolutions
(whose XLA transposes are dilated convolutions) and mixed to slower for stride-1 ones (a 5x5x64
patch is 1,600 numbers per pixel), so ``implementation="auto"`` picks per layer
(:func:`choose`); on GPU/TPU it is always XLA's (cuDNN / the TPU compiler).

The models default to ``"xla"``: for M1 on CPU ``"auto"`` makes the gradient over a data set
~33 % faster but the linearised Hessian operator's HVP 12-25 % slower (its residuals are the
patch matrices; ``python -m benchmarks.hvp_over_dataset``), so it pays for training, not for
Hessian analyses. Both give the same values up to float rounding, with the same
parameter tree as ``flax.linen.Conv`` (``Conv_k/{kernel, bias}``), so checkpoints and per-layer
blocks do not depend on the choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["IMPLEMENTATIONS", "Conv", "choose", "conv2d"]

IMPLEMENTATIONS = ("auto", "xla", "patches")

Padding = str | int | Sequence[tuple[int, int]]


def choose(stride: int, backend: str | None = None) -> str:
    """``"patches"`` or ``"xla"``: what ``implementation="auto"`` runs for a layer of ``stride``.

    On CPU patches for strided convolutions, XLA's convolution otherwise; XLA's on GPU/TPU.
    Measured per layer by ``python -m benchmarks.conv_kernels`` (docs/benchmarks.md,
    "Convolutions as patches + one GEMM"): with stride 2 the patches form's forward + both
    gradients take 0.35-0.94x XLA's time; with stride 1 from 0.74x (narrow layers) to 1.82x
    (C1's 5x5x64), and first layers, which need no input gradient in training, are no faster.
    """
    backend = backend or jax.default_backend()
    return "patches" if backend == "cpu" and stride > 1 else "xla"


def _pads(padding: Padding, in_hw, kernel_hw, stride: int) -> list[tuple[int, int]]:
    """Explicit ``[(lo, hi), (lo, hi)]`` for an int, a pair list, ``"VALID"`` or ``"SAME"``."""
    if isinstance(padding, str):
        return lax.padtype_to_pads(in_hw, kernel_hw, (stride, stride), padding.upper())
    if isinstance(padding, int):
        return [(padding, padding)] * 2
    return [tuple(p) for p in padding]


def _patches(x: jax.Array, kernel_hw, stride: int, pads) -> jax.Array:
    """``(N, H, W, C) -> (N, Ho, Wo, kh*kw*C)``, columns ordered ``(i, j, c)`` like HWIO."""
    kh, kw = kernel_hw
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    ho = (x.shape[1] - kh) // stride + 1
    wo = (x.shape[2] - kw) // stride + 1
    taps = [
        x[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride, :]
        for i in range(kh)
        for j in range(kw)
    ]
    return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    stride: int = 1,
    padding: Padding = 0,
    implementation: str = "xla",
) -> jax.Array:
    """``x (N, H, W, Cin)`` convolved with ``kernel (kh, kw, Cin, Cout)`` -> ``(N, Ho, Wo, Cout)``.

    ``padding``: symmetric int, ``[(lo, hi), (lo, hi)]``, ``"VALID"`` or ``"SAME"``.
    ``implementation``: ``"xla"`` (``lax.conv_general_dilated``), ``"patches"`` (module
    docstring) or ``"auto"`` (:func:`choose`).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown convolution implementation {implementation!r}; "
            f"use one of {', '.join(IMPLEMENTATIONS)}"
        )
    kh, kw, cin, cout = kernel.shape
    if implementation == "auto":
        implementation = choose(stride)
    pads = _pads(padding, x.shape[1:3], (kh, kw), stride)
    if implementation == "xla":
        return lax.conv_general_dilated(
            x, kernel, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    patches = _patches(x, (kh, kw), stride, pads)
    return jnp.dot(patches, kernel.reshape(kh * kw * cin, cout))


class Conv(nn.Module):
    """Drop-in for the ``flax.linen.Conv`` the models use, with a choice of :func:`conv2d` kernel.

    Same parameters (``kernel (kh, kw, Cin, Cout)``, ``bias (Cout,)``), names (``Conv_k``: flax
    names a submodule after its class) and initialisation as ``nn.Conv``.
    """

    features: int
    kernel_size: tuple[int, int]
    strides: int = 1
    padding: Padding = 0
    use_bias: bool = True
    implementation: str = "xla"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = conv2d(x, kernel, self.strides, self.padding, self.implementation)
        return y if bias is None else y + bias
