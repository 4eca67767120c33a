"""hvp and hessian_operator against dense jax.hessian of the raveled parameters."""

import logging
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fake_devices import run_on_fake_devices
from jax.flatten_util import ravel_pytree
from nets import (
    MLP,
    SmallCNN,
    TinyResNet,
    dense_hessian,
    init_with_random_bn,
    loss_problem,
    random_data,
)

import hessjax
from hessjax import batching, linearized

CASES = {
    "mlp_relu": (MLP((6, 5, 3)), (4,)),
    "mlp_tanh": (MLP((7, 3), act=jnp.tanh), (5,)),
    "cnn_bn": (SmallCNN(), (6, 6, 2)),
    "resnet": (TinyResNet(), (6, 6, 2)),
}


def _setup(case, seed, n=8):
    return loss_problem(*CASES[case], seed, n)


def _random_like(params, seed):
    flat, unravel = ravel_pytree(params)
    return unravel(jax.random.normal(jax.random.key(seed), flat.shape, flat.dtype))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_hvp_matches_dense_hessian(case, seed):
    loss_fn, params, batch = _setup(case, seed)
    v = _random_like(params, seed + 10)
    hv = ravel_pytree(hessjax.hvp(loss_fn, params, v, batch))[0]
    dense = np.asarray(dense_hessian(loss_fn, params, batch))
    np.testing.assert_allclose(hv, dense @ ravel_pytree(v)[0], rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(dense, dense.T, atol=1e-10)  # the reference itself is a Hessian


OPERATOR_CASES = [
    *[("mlp_tanh", b) for b in (5, 4, 23, 64)],
    *[("cnn_bn", b) for b in (5, 23)],
    ("resnet", 5),
]


@pytest.mark.parametrize("case, batch_size", OPERATOR_CASES)
def test_operator_is_hessian_of_dataset_mean(case, batch_size):
    n = 23  # not divisible by 5 or 4: the short last batch must be weighted by its size
    loss_fn, params, data = _setup(case, seed=batch_size, n=n)
    op = hessjax.hessian_operator(loss_fn, params, data, batch_size=batch_size)
    dense = np.asarray(dense_hessian(loss_fn, params, data))  # one batch holding all N samples
    v = _random_like(params, 3)
    np.testing.assert_allclose(
        ravel_pytree(op(v))[0], dense @ ravel_pytree(v)[0], rtol=1e-9, atol=1e-11
    )


@pytest.mark.parametrize("batch_size", [23, 5, 4])  # 1 or 4 batches written out; 5 scanned
def test_one_program_walk_written_out_or_scanned_is_the_hessian(batch_size, monkeypatch):
    monkeypatch.setenv("HESSJAX_HOST_LOOPS", "0")  # the GPU/TPU path: one XLA program
    n = 23
    loss_fn, params, data = _setup("mlp_tanh", seed=batch_size, n=n)
    op = hessjax.hessian_operator(loss_fn, params, data, batch_size=batch_size, linearize=False)
    v = _random_like(params, 3)
    program = str(jax.make_jaxpr(op)(v))
    assert ("scan[" in program) == (n // batch_size > batching.MAX_UNROLLED_BATCHES)
    dense = np.asarray(dense_hessian(loss_fn, params, data))
    np.testing.assert_allclose(
        ravel_pytree(op(v))[0], dense @ ravel_pytree(v)[0], rtol=1e-9, atol=1e-11
    )


@pytest.mark.parametrize("case, batch_size", [("mlp_tanh", 5), ("cnn_bn", 23), ("resnet", 8)])
def test_linearized_operator_is_the_same_hessian(case, batch_size, loop_mode):
    n = 23
    loss_fn, params, data = _setup(case, seed=batch_size, n=n)
    op = hessjax.hessian_operator(loss_fn, params, data, batch_size=batch_size)
    lop = op.linearize()
    shape = (lop.num_batches, lop.batch_size, lop.tail_size)
    assert shape == (n // batch_size, batch_size, n % batch_size)
    assert lop.residual_bytes == linearized.linearization_bytes(op) > 0
    dense = np.asarray(dense_hessian(loss_fn, params, data))
    for seed in (3, 4):
        v = _random_like(params, seed)
        np.testing.assert_allclose(
            ravel_pytree(lop(v))[0], dense @ ravel_pytree(v)[0], rtol=1e-9, atol=1e-11
        )
    if case == "mlp_tanh":  # the solvers take it like any operator
        expected = np.sort(np.linalg.eigvalsh(dense))[::-1][:2]
        found = hessjax.eigenvalues(lop, params, k=2, key=jax.random.key(0), tol=1e-10)
        np.testing.assert_allclose(found.values, expected, rtol=1e-7)


def test_linearized_operator_compiles_once_and_checks_memory():
    loss_fn, params, data = _setup("cnn_bn", seed=0, n=11)
    # One abstract trace at construction (the scalar-loss check), then full batches + tail.
    counted = chex.assert_max_traces(lambda p, b: loss_fn(p, b), n=3)
    lop = hessjax.hessian_operator(counted, params, data, batch_size=4).linearize()
    cache = lambda: batching._add_one._cache_size() + batching._all_batches._cache_size()
    before = cache()
    for seed in range(4):  # the first matvec and the later ones share the compiled pieces
        lop(_random_like(params, seed))
    assert cache() - before <= 2  # full batches + tail
    op = hessjax.hessian_operator(loss_fn, params, data, batch_size=4, linearize=False)
    with pytest.raises(ValueError, match="MiB of residuals"):
        op.linearize(max_bytes=100)
    with pytest.raises(TypeError, match="HessianOperator"):
        linearized.linearize(lambda v: v)


def test_default_operator_linearises_within_the_memory_budget(caplog):
    loss_fn, params, data = _setup("cnn_bn", seed=0, n=11)
    need = linearized.linearization_bytes(
        hessjax.hessian_operator(loss_fn, params, data, batch_size=4, linearize=False)
    )
    v = _random_like(params, 1)
    plain = hessjax.hessian_operator(loss_fn, params, data, batch_size=4, linearize=False)(v)
    with caplog.at_level(logging.INFO, logger="hessjax"):
        fits = hessjax.hessian_operator(loss_fn, params, data, batch_size=4, memory_budget=need)
        over = hessjax.hessian_operator(loss_fn, params, data, batch_size=4, memory_budget=need - 1)
    assert fits.is_linearized and not over.is_linearized
    assert "linearised" in caplog.text and "over the" in caplog.text
    for op in (fits, over):
        np.testing.assert_allclose(ravel_pytree(op(v))[0], ravel_pytree(plain)[0], rtol=1e-10)
    with linearized.memory_budget_scope(need - 1):  # the experiments' memory_budget_mb
        assert not hessjax.hessian_operator(loss_fn, params, data, batch_size=4).is_linearized
    with pytest.raises(ValueError, match="over max_bytes"):
        hessjax.hessian_operator(
            loss_fn, params, data, batch_size=4, linearize=True, memory_budget=need - 1
        )
    with pytest.raises(ValueError, match="linearize must be"):
        hessjax.hessian_operator(loss_fn, params, data, batch_size=4, linearize="yes")


def test_operator_compiles_once():
    model, shape = CASES["cnn_bn"]
    x, y = random_data(0, 11, shape, 3)
    variables = init_with_random_bn(model, jax.random.key(0), jnp.asarray(x[:1]))

    def loss(params, batch):
        return hessjax.cross_entropy(
            model.apply({**variables, "params": params}, batch[0]), batch[1]
        )

    # The loss is traced once abstractly at construction (scalar check), once for the full
    # batches and once for the short tail batch, then never.
    counted = chex.assert_max_traces(loss, n=3)
    op = hessjax.hessian_operator(counted, variables["params"], (x, y), batch_size=4)
    for seed in range(5):
        op(_random_like(variables["params"], seed))
    # eigen solvers call the operator inside their own loops: still no per-iteration retrace.
    chex.clear_trace_counter()
    counted = chex.assert_max_traces(loss, n=3)
    op = hessjax.hessian_operator(counted, variables["params"], (x, y), batch_size=4)
    hessjax.eigenvalues(op, variables["params"], k=2, key=jax.random.key(0), max_matvecs=30)


def test_make_loss_fn_reuses_compilation_across_checkpoints():
    model, shape = CASES["cnn_bn"]
    x, y = random_data(0, 6, shape, 3)
    ops = []
    for seed in range(3):
        variables = init_with_random_bn(model, jax.random.key(seed), jnp.asarray(x[:1]))
        loss_fn = hessjax.make_loss_fn(model.apply, variables)
        ops.append(hessjax.hessian_operator(loss_fn, variables["params"], (x, y), batch_size=3))
    cache = lambda: batching._add_one._cache_size() + batching._all_batches._cache_size()
    before = cache()
    for op in ops:
        op(op.params)
    assert cache() - before <= 2  # full batches + tail


def test_subsampled_operator_uses_a_random_subset():
    loss_fn, params, data = _setup("mlp_tanh", seed=4, n=20)
    key = jax.random.key(7)
    op = hessjax.subsampled_hessian_operator(loss_fn, params, data, num_samples=1, key=key)
    (xs, ys) = hessjax.subsample(data, 1, key=key)
    assert xs.shape[0] == 1 and any(np.array_equal(xs[0], row) for row in data[0])
    v = _random_like(params, 1)
    expected = np.asarray(dense_hessian(loss_fn, params, (xs, ys))) @ ravel_pytree(v)[0]
    np.testing.assert_allclose(ravel_pytree(op(v))[0], expected, rtol=1e-9, atol=1e-11)


def test_bad_inputs_are_reported():
    loss_fn, params, (x, y) = _setup("mlp_tanh", seed=0, n=6)
    with pytest.raises(ValueError, match="leading axis"):
        hessjax.hessian_operator(loss_fn, params, (x, y[:4]), batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        hessjax.hessian_operator(loss_fn, params, (x, y), batch_size=0)
    with pytest.raises(ValueError, match="num_samples"):
        hessjax.subsample((x, y), 7, key=jax.random.key(0))
    # numpy integers are batch sizes too; the same operator as with a Python int
    v = jax.tree_util.tree_map(jnp.ones_like, params)
    by_numpy = hessjax.hessian_operator(loss_fn, params, (x, y), batch_size=np.int64(4))(v)
    by_int = hessjax.hessian_operator(loss_fn, params, (x, y), batch_size=4)(v)
    chex.assert_trees_all_close(by_numpy, by_int, rtol=0, atol=0)
    # a per-sample (vector) loss is refused when the operator is built, naming the fix
    per_sample = lambda p, b: jnp.ones(b[0].shape[0]) * loss_fn(p, b)
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar mean loss.*\(2,\)"):
        hessjax.hessian_operator(per_sample, params, (x, y), batch_size=2)


MESH_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from jax.flatten_util import ravel_pytree
    from jax.sharding import Mesh
    import hessjax
    from nets import SmallCNN, init_with_random_bn, random_data
    assert jax.device_count() == 4, jax.devices()
    model = SmallCNN()
    x, y = random_data(0, 26, (6, 6, 2), 3)
    variables = init_with_random_bn(model, jax.random.key(0), jnp.asarray(x[:1]))
    loss_fn = hessjax.make_loss_fn(model.apply, variables)
    params = variables["params"]
    flat, unravel = ravel_pytree(params)
    v = unravel(jax.random.normal(jax.random.key(1), flat.shape, flat.dtype))
    mesh = Mesh(np.array(jax.devices()), ("data",))
    single = hessjax.hessian_operator(loss_fn, params, (x, y), batch_size=8)
    sharded = hessjax.hessian_operator(loss_fn, params, (x, y), batch_size=8, mesh=mesh)
    assert len(sharded.full[0].sharding.device_set) == 4
    a, b = ravel_pytree(single(v))[0], ravel_pytree(sharded(v))[0]
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    lin = sharded.linearize()  # residuals stay split over the devices, like the batches
    assert max(len(r.sharding.device_set) for r in jax.tree.leaves(lin.full)) == 4
    np.testing.assert_allclose(ravel_pytree(lin(v))[0], a, rtol=1e-10, atol=1e-12)
    e1 = hessjax.eigenvalues(single, params, k=2, key=jax.random.key(0), tol=1e-8)
    e4 = hessjax.eigenvalues(sharded, params, k=2, key=jax.random.key(0), tol=1e-8)
    np.testing.assert_allclose(e1.values, e4.values, rtol=1e-7)
    try:
        hessjax.hessian_operator(loss_fn, params, (x, y), batch_size=6, mesh=mesh)
        raise SystemExit("expected a divisibility error")
    except ValueError as e:
        assert "divisible" in str(e)
    print("MESH_OK")
    """
)


@pytest.mark.slow
def test_sharded_operator_on_four_fake_devices_equals_single_device():
    out = run_on_fake_devices(MESH_SCRIPT, 4)
    # the script's checks passed (MESH_OK) on 4 devices, not silently on one
    assert "MESH_OK" in out and out.rstrip().endswith("DEVICES 4"), out[-2000:]
