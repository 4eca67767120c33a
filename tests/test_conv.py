"""hessjax.conv: the patches convolution equals XLA's in value, gradient and HVP; models keep
their parameters whichever kernel runs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hessjax import conv, models

CASES = [  # (input NHWC, kernel HWIO, stride, padding)
    ((2, 9, 9, 3), (3, 3, 3, 4), 1, 0),
    ((2, 9, 9, 3), (3, 3, 3, 4), 2, 1),
    ((2, 10, 7, 2), (5, 5, 2, 3), 2, 2),
    ((2, 8, 8, 4), (1, 1, 4, 5), 2, 0),
    ((1, 11, 11, 2), (3, 2, 2, 3), 3, "SAME"),
    ((1, 11, 11, 2), (3, 3, 2, 3), 1, "VALID"),
    ((1, 8, 9, 2), (3, 3, 2, 2), 2, [(0, 2), (1, 0)]),
]


def _inputs(x_shape, k_shape):
    kx, kk = jax.random.split(jax.random.PRNGKey(0))
    return (
        jax.random.normal(kx, x_shape, jnp.float64),
        jax.random.normal(kk, k_shape, jnp.float64),
    )


@pytest.mark.parametrize("x_shape, k_shape, stride, padding", CASES)
def test_patches_equal_xla_value_gradients_and_hvp(x_shape, k_shape, stride, padding):
    """Output, both gradients and an HVP w.r.t. (x, kernel) of sum(sin(conv)): patches == XLA."""
    x, kernel = _inputs(x_shape, k_shape)

    def loss(impl):
        return lambda a, b: jnp.sum(jnp.sin(conv.conv2d(a, b, stride, padding, impl)))

    out = {i: conv.conv2d(x, kernel, stride, padding, i) for i in ("xla", "patches")}
    assert out["xla"].shape == out["patches"].shape
    np.testing.assert_allclose(out["patches"], out["xla"], rtol=1e-12, atol=1e-12)

    grads = {i: jax.grad(loss(i), argnums=(0, 1))(x, kernel) for i in ("xla", "patches")}
    for g_patch, g_xla in zip(grads["patches"], grads["xla"]):
        np.testing.assert_allclose(g_patch, g_xla, rtol=1e-12, atol=1e-12)

    tangent = _inputs(x_shape, k_shape)[::-1]
    tangent = (tangent[1] * 0.5, tangent[0] * 0.5)
    hvps = {
        i: jax.jvp(jax.grad(loss(i), argnums=(0, 1)), (x, kernel), tangent)[1]
        for i in ("xla", "patches")
    }
    for h_patch, h_xla in zip(hvps["patches"], hvps["xla"]):
        np.testing.assert_allclose(h_patch, h_xla, rtol=1e-11, atol=1e-11)


def test_patches_match_a_hand_written_convolution():
    """Independent truth: the defining sum y[n,h,w,o] = sum_ijc x_pad[n,sh+i,sw+j,c] k[i,j,c,o]."""
    x, kernel = _inputs((2, 7, 6, 2), (3, 2, 2, 3))
    stride, pad = 2, 1
    xp = np.pad(np.asarray(x), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel.shape[:2]
    ho, wo = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    want = np.zeros((2, ho, wo, 3))
    for h in range(ho):
        for w in range(wo):
            window = xp[:, stride * h : stride * h + kh, stride * w : stride * w + kw, :]
            want[:, h, w, :] = np.einsum("nijc,ijco->no", window, np.asarray(kernel))
    np.testing.assert_allclose(conv.conv2d(x, kernel, stride, pad, "patches"), want, rtol=1e-12)


def test_conv_module_matches_flax_conv_parameters_and_values():
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 9, 9, 3))
    ours = conv.Conv(4, (3, 3), strides=2, padding="SAME", implementation="patches")
    flax_conv = nn.Conv(4, (3, 3), strides=(2, 2), padding="SAME")
    v_ours, v_flax = ours.init(jax.random.PRNGKey(0), x), flax_conv.init(jax.random.PRNGKey(0), x)
    assert jax.tree_util.tree_structure(v_ours) == jax.tree_util.tree_structure(v_flax)
    for a, b in zip(jax.tree_util.tree_leaves(v_ours), jax.tree_util.tree_leaves(v_flax)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(ours.apply(v_flax, x), flax_conv.apply(v_flax, x), atol=1e-5)


@pytest.mark.parametrize("name", ["m1", "c1", "c3", "cr"])
def test_models_have_the_same_parameters_and_outputs_with_either_kernel(name):
    kw = {"stage_sizes": (1, 1, 1, 1)} if name == "cr" else {}
    shape = models.input_shape(name)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, *shape), jnp.float64)
    variables, logits = {}, {}
    for impl in ("xla", "patches"):
        model = models.get(
            name, conv_implementation=impl, dtype=jnp.float64, param_dtype=jnp.float64, **kw
        )
        variables[impl] = model.init(jax.random.PRNGKey(1), x)
        logits[impl] = model.apply(variables["xla"], x)
    xla_tree, patch_tree = variables["xla"], variables["patches"]
    assert jax.tree_util.tree_structure(xla_tree) == jax.tree_util.tree_structure(patch_tree)
    for a, b in zip(jax.tree_util.tree_leaves(xla_tree), jax.tree_util.tree_leaves(patch_tree)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(logits["patches"], logits["xla"], rtol=1e-10, atol=1e-12)


def test_auto_chooses_patches_only_on_cpu_for_strided_layers():
    assert conv.choose(stride=2, backend="cpu") == "patches"  # M1's convs, ResNet shortcuts
    assert conv.choose(stride=3, backend="cpu") == "patches"
    assert conv.choose(stride=1, backend="cpu") == "xla"  # C1, C2/C3
    for backend in ("gpu", "tpu"):
        assert conv.choose(stride=2, backend=backend) == "xla"


def test_unknown_implementation_is_named_in_the_error():
    x, kernel = _inputs((1, 5, 5, 1), (3, 3, 1, 1))
    with pytest.raises(ValueError, match="'cudnn'.*auto, xla, patches"):
        conv.conv2d(x, kernel, implementation="cudnn")
