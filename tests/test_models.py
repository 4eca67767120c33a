"""hessjax.models: Table 6 parameter counts, shapes, BatchNorm modes, registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hessjax import models

PARAM_COUNTS = {
    "c1": 1_756_682,
    "c2": 1_148_746,
    "c3": 1_147_978,
    "m1": 1_256_080,
    "cr": 11_220_132,
}
F64 = {"param_dtype": jnp.float64}


def abstract_variables(model):
    """Variables as ShapeDtypeStructs: no real initialisation."""
    return jax.eval_shape(lambda k: models.init(model, k), jax.random.key(0))


def batch(name, n, seed=0):
    return jax.random.uniform(jax.random.key(seed), (n, *models.input_shape(name)), jnp.float64)


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_param_count_matches_table6(name):
    variables = abstract_variables(models.get(name))
    assert models.param_count(variables["params"]) == PARAM_COUNTS[name]
    # a whole variables dict counts only "params", never the running statistics
    assert models.param_count(variables) == PARAM_COUNTS[name]
    has_bn = name in ("c1", "c2", "cr")
    assert ("batch_stats" in variables) == has_bn


@pytest.mark.parametrize(
    "name, kw, classes",
    [
        ("c1", {}, 10),
        ("c2", {}, 10),
        ("c3", {}, 10),
        ("m1", {}, 10),
        ("cr", {}, 100),
        ("c1", {"num_classes": 100}, 100),
        ("cr", {"num_classes": 10}, 10),
    ],
)
def test_output_shape(name, kw, classes):
    model = models.get(name, **kw)
    variables = abstract_variables(model)
    x = jax.ShapeDtypeStruct((3, *models.input_shape(name)), jnp.float32)
    assert jax.eval_shape(model.apply, variables, x).shape == (3, classes)
    if "batch_stats" in variables:
        out, _ = jax.eval_shape(
            lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x
        )
        assert out.shape == (3, classes)


def test_registry_names_and_errors():
    assert models.input_shape("M1") == (28, 28, 1)
    assert all(models.input_shape(n) == (32, 32, 3) for n in ("c1", "c2", "c3", "cr"))
    c2, c3 = models.get("C2"), models.get("c3")
    assert type(c2) is type(c3) and c2.batch_norm and not c3.batch_norm
    with pytest.raises(ValueError, match="c1, c2, c3, cr, m1"):
        models.get("vgg16")
    with pytest.raises(ValueError, match="valid names"):
        models.input_shape("resnet50")


def test_resnet_projection_shortcuts():
    """Exactly three 1x1 projection convs (entering stages 2-4), every ResNet conv bias-free."""
    params = abstract_variables(models.get("cr"))["params"]
    convs = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if "Conv" in jax.tree_util.keystr(path)
    ]
    assert all(leaf.ndim == 4 for leaf in convs)  # kernels only: no conv biases
    shapes = [leaf.shape for leaf in convs if leaf.shape[:2] == (1, 1)]
    assert sorted(shapes) == [(1, 1, 64, 128), (1, 1, 128, 256), (1, 1, 256, 512)]
    assert len(convs) == 1 + 8 * 2 + 3


@pytest.mark.slow
def test_batchnorm_train_vs_inference():
    model = models.get("c2", **F64)
    variables = models.init(model, jax.random.key(1))
    x = batch("c2", 6)

    out_train, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    changed = jax.tree_util.tree_map(
        lambda a, b: not np.allclose(a, b), variables["batch_stats"], updates["batch_stats"]
    )
    assert all(jax.tree_util.tree_leaves(changed))
    variables = {**variables, "batch_stats": updates["batch_stats"]}
    # momentum 0.9 (PyTorch 0.1): the first BN sees the same batch mean m both times, so the
    # running mean goes 0 -> 0.1 m -> 0.9 * 0.1 m + 0.1 m = 1.9 * (0.1 m)
    _, updates2 = model.apply(variables, x, train=True, mutable=["batch_stats"])
    mean1 = updates["batch_stats"]["BatchNorm_0"]["mean"]
    mean2 = updates2["batch_stats"]["BatchNorm_0"]["mean"]
    assert mean1.dtype == jnp.float64 and np.max(np.abs(mean1)) > 0
    np.testing.assert_allclose(mean2, 1.9 * mean1, rtol=1e-12)

    out_eval = model.apply(variables, x)
    assert out_eval.dtype == jnp.float64
    assert not np.allclose(out_train, out_eval)

    # inference: a sample's logits do not depend on the rest of the batch ...
    alone = model.apply(variables, x[:1])
    np.testing.assert_allclose(out_eval[:1], alone, rtol=1e-10, atol=1e-12)
    # ... while in training mode they do
    alone_train, _ = model.apply(variables, x[:2], train=True, mutable=["batch_stats"])
    assert not np.allclose(out_train[:2], alone_train)


@pytest.mark.slow
def test_c3_and_m1_have_no_batch_stats():
    for name in ("c3", "m1"):
        variables = models.init(name, jax.random.key(0))
        assert set(variables) == {"params"}
        model = models.get(name)
        x = batch(name, 2).astype(jnp.float32)
        # train flag accepted, no mutable collections needed
        np.testing.assert_array_equal(
            model.apply(variables, x, train=True), model.apply(variables, x)
        )


@pytest.mark.parametrize("name", ["m1", "c1"])
def test_forward_finite(name):
    model = models.get(name, **F64)
    variables = models.init(model, jax.random.key(2))
    logits = model.apply(variables, batch(name, 4))
    assert logits.shape == (4, 10) and logits.dtype == jnp.float64
    assert np.all(np.isfinite(logits)) and np.std(logits) > 0
    out, _ = model.apply(variables, batch(name, 4), train=True, mutable=["batch_stats"])
    assert np.all(np.isfinite(out))


def test_pytorch_like_init():
    """Weights and biases in U(-1/sqrt(fan_in), 1/sqrt(fan_in)); float64 via param_dtype."""
    params = models.init(models.get("m1", **F64), jax.random.key(3))["params"]
    for layer, fan_in in [("Conv_0", 25), ("Conv_1", 25 * 20), ("Dense_0", 2450), ("Dense_1", 500)]:
        bound = 1 / np.sqrt(fan_in)
        for leaf in params[layer].values():
            assert leaf.dtype == jnp.float64
            assert np.max(np.abs(leaf)) <= bound
        kernel = params[layer]["kernel"]
        if kernel.size > 1000:  # uniform on [-b, b]: std b/sqrt(3)
            np.testing.assert_allclose(np.std(kernel), bound / np.sqrt(3), rtol=0.05)
