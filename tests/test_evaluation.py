"""hessjax.batching, hessjax.evaluation and hessjax.landscape against direct computation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from nets import SmallCNN, init_with_random_bn, random_data

import hessjax
from hessjax import batching, landscape
from hessjax.evaluation import evaluate, full_gradient_norm, per_sample_metrics


def _cnn(seed=0, n=23):
    model = SmallCNN()
    x, y = random_data(seed, n, (6, 6, 2), 3)
    variables = init_with_random_bn(model, jax.random.key(seed), jnp.asarray(x[:1]))
    return model, variables, x, y


def _direct_loss(model, variables, x, y):
    return float(
        optax.softmax_cross_entropy_with_integer_labels(model.apply(variables, x), y).mean()
    )


@pytest.mark.parametrize("batch_size", [1, 5, 23, 100])
def test_map_chunks_equals_the_direct_map(batch_size):
    x = np.arange(23 * 2, dtype=np.float64).reshape(23, 2)
    calls = []

    def chunk_fn(scale, chunk):
        calls.append(chunk[0].shape[0])
        return chunk[0].sum(axis=1), chunk[1] * scale

    out = batching.map_chunks(chunk_fn, 2, (x, np.arange(23)), batch_size)
    np.testing.assert_array_equal(out[0], x.sum(axis=1))
    np.testing.assert_array_equal(out[1], 2 * np.arange(23))
    assert set(calls) == {min(batch_size, 23)}  # one shape: the last chunk is padded


class _FakeMesh:  # fast_batch_size only reads the device count
    def __init__(self, size):
        self.size = size


@pytest.mark.parametrize(
    "n, batch_size, devices, expected",
    [
        (1000, 1000, 1, 125),  # 8 batches of 125, not 7 of 128 and a tail of 104
        (1000, 500, 1, 125),
        (1000, 100, 1, 100),  # under the cap: the user's batch
        (50_000, 50_000, 1, 125),
        (1001, 1001, 1, 91),  # 7 · 11 · 13
        (1009, 1009, 1, 127),  # a prime: 8 balanced batches, ⌈1009 / 8⌉ = 127 (tail 120)
        (1000, 1000, 4, 500),  # cap 512 on 4 devices: 2 batches of 500
        (1030, 1030, 4, 344),  # no multiple of 4 in (256, 512] divides 1030: ⌈1030 / 3⌉ = 344
        (1030, 1030, 3, 345),  # ⌈1030 / 3⌉ = 344, rounded up to a multiple of the 3 devices
        (130, 130, 1, 65),
    ],
)
def test_fast_batch_size_balances_batches_under_the_cpu_cap(n, batch_size, devices, expected):
    mesh = None if devices == 1 else _FakeMesh(devices)
    size = batching.fast_batch_size(batch_size, mesh, n)
    assert size == expected
    cap = batching.CPU_SAMPLES_PER_DEVICE * devices
    assert size <= min(batch_size, cap) and size % devices == 0
    assert size > cap // 2 or batch_size <= cap
    if n % size:  # no divisor: the fewest batches the cap allows
        assert -(-n // size) == -(-n // cap)


@pytest.mark.parametrize("batch_size", [4, 7, 23])
def test_batch_mean_weights_the_tail_exactly(batch_size, loop_mode):
    data = np.random.default_rng(0).normal(size=(23, 3))
    full, tail = batching.split_batches(data, batch_size)
    mean = batching.batch_mean(
        _batch_mean_term,
        None,
        jnp.asarray(full),
        jnp.asarray(tail),
        batch_size=batch_size,
        tail_size=len(tail),
        init=jnp.zeros(3),
        host=loop_mode == "host",
    )
    np.testing.assert_allclose(mean, data.mean(axis=0), rtol=1e-12)


def _batch_mean_term(_, batch):
    return batch.mean(axis=0)


@pytest.mark.parametrize("batch_size", [5, 23, 64])
def test_evaluate_and_per_sample_metrics_equal_direct(batch_size):
    model, variables, x, y = _cnn()
    logits = model.apply(variables, x)
    loss, correct = per_sample_metrics(model.apply, variables, x, y, batch_size=batch_size)
    np.testing.assert_allclose(
        loss, optax.softmax_cross_entropy_with_integer_labels(logits, y), rtol=1e-12
    )
    np.testing.assert_array_equal(correct, np.argmax(logits, -1) == y)
    ref = (
        _direct_loss(model, variables, x, y),
        float(np.mean(np.asarray(np.argmax(logits, -1) == y))),
    )
    assert evaluate(model.apply, variables, x, y, batch_size) == pytest.approx(ref, rel=1e-12)


def test_evaluate_in_float32():
    """The float32 path (what models train in) agrees with float64 to float32 precision."""
    model, variables, x, y = _cnn(seed=1)
    v32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), variables)
    loss32, acc32 = evaluate(model.apply, v32, x.astype(np.float32), y, 7)
    loss64, acc64 = evaluate(model.apply, variables, x, y, 7)
    assert loss32 == pytest.approx(loss64, rel=1e-5) and acc32 == acc64


def test_full_gradient_norm_equals_the_gradient_of_the_mean(loop_mode):
    model, variables, x, y = _cnn(seed=2)
    loss_fn = hessjax.make_loss_fn(model.apply, variables)
    params = variables["params"]
    grad = jax.grad(loss_fn)(params, (x, y))
    ref = float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree_util.tree_leaves(grad))))
    for batch_size in (4, 23):
        got = full_gradient_norm(loss_fn, params, (x, y), batch_size)
        assert got == pytest.approx(ref, rel=1e-10)


def test_landscapes_equal_the_loss_at_shifted_weights():
    model, variables, x, y = _cnn(seed=3)
    params = variables["params"]
    keys = jax.random.split(jax.random.key(0), len(jax.tree_util.tree_leaves(params)))
    treedef = jax.tree_util.tree_structure(params)
    vectors = jax.tree_util.tree_unflatten(
        treedef,
        [
            jax.random.normal(k, (2, *p.shape), p.dtype)
            for k, p in zip(keys, jax.tree_util.tree_leaves(params), strict=True)
        ],
    )

    def direct(a, b):
        shifted = jax.tree_util.tree_map(lambda p, v: p + a * v[0] + b * v[1], params, vectors)
        return _direct_loss(model, {**variables, "params": shifted}, x, y)

    ts = [-0.3, 0.0, 0.2]
    one = landscape.landscape_1d(model.apply, variables, x, y, vectors, ts, batch_size=10)
    np.testing.assert_allclose(one, [direct(t, 0.0) for t in ts], rtol=1e-10)
    two = landscape.landscape_2d(model.apply, variables, x, y, vectors, ts, batch_size=10)
    np.testing.assert_allclose(two, [[direct(a, b) for b in ts] for a in ts], rtol=1e-10)
    assert two[1][1] == pytest.approx(_direct_loss(model, variables, x, y), rel=1e-12)


def test_interpolation_interpolates_batchnorm_statistics_too():
    model, va, x, y = _cnn(seed=4)
    _, vb, _, _ = _cnn(seed=5)
    alphas = [-0.5, 0.0, 0.3, 1.0]
    curve = landscape.interpolation(model.apply, va, vb, x, y, alphas, batch_size=8)
    for alpha, loss, acc in zip(alphas, curve["loss"], curve["accuracy"], strict=True):
        mixed = jax.tree_util.tree_map(lambda a, b, t=alpha: (1 - t) * a + t * b, va, vb)
        assert loss == pytest.approx(_direct_loss(model, mixed, x, y), rel=1e-10)
        logits = model.apply(mixed, x)
        assert acc == pytest.approx(float(np.mean(np.asarray(np.argmax(logits, -1) == y))))
    assert curve["loss"][1] == pytest.approx(_direct_loss(model, va, x, y), rel=1e-12)
    assert curve["loss"][3] == pytest.approx(_direct_loss(model, vb, x, y), rel=1e-12)
    stats = landscape.interpolate(va, vb, 0.25)["batch_stats"]
    first = jax.tree_util.tree_leaves(stats)[0]
    ref = 0.75 * jax.tree_util.tree_leaves(va["batch_stats"])[0]
    ref = ref + 0.25 * jax.tree_util.tree_leaves(vb["batch_stats"])[0]
    np.testing.assert_allclose(first, ref, rtol=1e-12)


MESH_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh
jax.config.update("jax_enable_x64", True)
from nets import SmallCNN, init_with_random_bn, random_data
import hessjax
from hessjax import attacks, landscape
from hessjax.evaluation import evaluate, full_gradient_norm

model = SmallCNN()
x, y = random_data(0, 23, (6, 6, 2), 3)
variables = init_with_random_bn(model, jax.random.key(0), jnp.asarray(x[:1]))
mesh = Mesh(np.array(jax.devices()), ("data",))
for fn in (
    lambda m: evaluate(model.apply, variables, x, y, 6, mesh=m),
    lambda m: hessjax.input_gradient_norms(model.apply, variables, x, y, batch_size=6, mesh=m),
    lambda m: hessjax.input_hessian_eigenvalues(model.apply, variables, x, y, batch_size=6, mesh=m),
    lambda m: hessjax.input_hessian_eigenvalues(
        model.apply, variables, x, y, method="power", batch_size=6, mesh=m, key=jax.random.key(0)
    ),
    lambda m: attacks.adversarial_accuracy(
        model.apply, variables, x, y, "l2_hess", [0.1, 1.0], clip=None, batch_size=6, mesh=m,
        cg_iters=3,
    ),
    lambda m: full_gradient_norm(
        hessjax.make_loss_fn(model.apply, variables), variables["params"], (x, y), 8, mesh=m
    ),
):
    np.testing.assert_allclose(np.asarray(fn(mesh)), np.asarray(fn(None)), rtol=1e-9)
print("MESH_OK")
"""


@pytest.mark.slow
def test_per_sample_analyses_on_four_fake_devices_equal_one_device():
    from fake_devices import run_on_fake_devices

    out = run_on_fake_devices(MESH_SCRIPT, 4, timeout=300)
    assert "MESH_OK" in out and out.rstrip().endswith("DEVICES 4"), out[-2000:]
