"""GGN, true Fisher and empirical Fisher operators against their dense definitions: Jᵀ H_ℓ J from
jax.jacobian of the logits, and the outer products of per-sample gradients from jax.jacobian of
the per-sample losses."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from fake_devices import run_on_fake_devices
from jax.flatten_util import ravel_pytree
from nets import MLP, SmallCNN, init_with_random_bn, random_data

import hessjax

CASES = {
    "mlp": (MLP((6, 5, 3)), (4,)),
    "cnn_bn": (SmallCNN(), (6, 6, 2)),
    "softmax_regression": (MLP((3,)), (5,)),  # one Dense layer: logits linear in θ
}


def _setup(case, seed=0, n=11):
    model, shape = CASES[case]
    x, y = random_data(seed, n, shape, 3)
    variables = init_with_random_bn(model, jax.random.key(seed), jnp.asarray(x[:1]))
    return model, variables, (x, y)


def _dense_truth(model, variables, data):
    """(GGN, empirical Fisher) as dense (P, P) matrices from their definitions."""
    x, y = data
    flat, unravel = ravel_pytree(variables["params"])
    state = {k: v for k, v in variables.items() if k != "params"}
    logits = lambda f: model.apply({"params": unravel(f), **state}, x)
    jac = jax.jacobian(logits)(flat)  # (N, c, P)
    p = jax.nn.softmax(logits(flat))
    h_loss = jax.vmap(lambda q: jnp.diag(q) - jnp.outer(q, q))(p)  # ∇²_z CE per sample
    ggn = jnp.einsum("ncp,ncd,ndq->pq", jac, h_loss, jac) / len(y)
    grads = jax.jacobian(lambda f: optax.softmax_cross_entropy_with_integer_labels(logits(f), y))
    g = grads(flat)  # (N, P) per-sample gradients
    return np.asarray(ggn), np.asarray(g.T @ g / len(y))


def _random(params, seed):
    flat, unravel = ravel_pytree(params)
    return unravel(jax.random.normal(jax.random.key(seed), flat.shape, flat.dtype))


@pytest.mark.parametrize(
    # The tiny ResNet's blocks are checked against the dense Hessian in tests/test_blocks.py.
    "case",
    ["mlp", pytest.param("cnn_bn", marks=pytest.mark.slow)],
)
def test_operators_equal_their_dense_definitions(case):
    model, variables, data = _setup(case)
    ggn, emp = _dense_truth(model, variables, data)
    v = _random(variables["params"], 1)
    flat_v = ravel_pytree(v)[0]
    for kind, truth in (("ggn", ggn), ("fisher", ggn), ("empirical_fisher", emp)):
        op = hessjax.gauss_newton_operator(model.apply, variables, data, batch_size=4, kind=kind)
        np.testing.assert_allclose(
            ravel_pytree(op(v))[0], truth @ flat_v, rtol=1e-9, atol=1e-12, err_msg=kind
        )
        if kind != "fisher":  # the cached linearisation is the same matrix
            lin = op.linearize()
            np.testing.assert_allclose(
                ravel_pytree(lin(v))[0], truth @ flat_v, rtol=1e-9, atol=1e-12, err_msg=kind
            )
    assert np.linalg.eigvalsh(ggn).min() > -1e-12 and np.linalg.eigvalsh(emp).min() > -1e-12


@pytest.mark.parametrize("kind", ["ggn", "empirical_fisher"])
def test_blocks_are_the_sub_blocks_of_the_dense_matrices(kind):
    """select= gives C_SS: the rows and columns of the selected leaves of the dense matrix."""
    model, variables, data = _setup("mlp", seed=2)
    params = variables["params"]
    dense = dict(zip(("ggn", "empirical_fisher"), _dense_truth(model, variables, data)))[kind]
    select = ["Dense_1", "Dense_2/bias"]
    mark = hessjax.blocks.merge(
        jax.tree.map(jnp.zeros_like, params),
        {k: jnp.ones_like(a) for k, a in hessjax.blocks.restrict(params, select).items()},
    )
    idx = np.flatnonzero(ravel_pytree(mark)[0])  # the selected coordinates of the flat params
    op = hessjax.gauss_newton_operator(
        model.apply, variables, data, batch_size=4, kind=kind, select=select
    )
    assert sorted(op.params) == ["Dense_1/bias", "Dense_1/kernel", "Dense_2/bias"]
    v = _random(op.params, 3)
    truth = dense[np.ix_(idx, idx)] @ np.asarray(ravel_pytree(v)[0])
    np.testing.assert_allclose(ravel_pytree(op(v))[0], truth, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ravel_pytree(op.linearize()(v))[0], truth, rtol=1e-9, atol=1e-12)
    est = hessjax.xnystrace(op, op.params, num_matvecs=len(idx), key=jax.random.key(0))
    np.testing.assert_allclose(est.value, np.trace(dense[np.ix_(idx, idx)]), rtol=1e-10)


def test_true_fisher_equals_ggn_for_softmax_cross_entropy():
    # Two different computations: Σ_c p_c s_c s_cᵀ from the log-softmax Jacobian, and the
    # forward-over-reverse Hessian of the cross-entropy w.r.t. the logits.
    model, variables, data = _setup("cnn_bn", seed=3, n=9)
    ops = {
        kind: hessjax.gauss_newton_operator(model.apply, variables, data, batch_size=9, kind=kind)
        for kind in ("ggn", "fisher", "empirical_fisher")
    }
    for seed in (0, 1):
        v = _random(variables["params"], seed)
        g, f, e = (ravel_pytree(ops[k](v))[0] for k in ("ggn", "fisher", "empirical_fisher"))
        np.testing.assert_allclose(f, g, rtol=1e-10, atol=1e-13)
        assert np.linalg.norm(e - g) > 1e-3 * np.linalg.norm(g)  # the empirical Fisher differs


def test_softmax_regression_hessian_equals_ggn_and_solvers_apply():
    model, variables, data = _setup("softmax_regression", n=13)
    params = variables["params"]
    loss_fn = hessjax.make_loss_fn(model.apply, variables)
    hess = hessjax.hessian_operator(loss_fn, params, data, batch_size=5)
    ggn = hessjax.gauss_newton_operator(model.apply, variables, data, batch_size=5)
    for seed in (0, 1):
        v = _random(params, seed)
        np.testing.assert_allclose(
            ravel_pytree(ggn(v))[0], ravel_pytree(hess(v))[0], rtol=1e-10, atol=1e-13
        )
    dense, _ = _dense_truth(model, variables, data)
    exact = np.sort(np.linalg.eigvalsh(dense))[::-1]
    eig = hessjax.eigenvalues(ggn, params, k=2, tol=1e-10, key=jax.random.key(0))
    np.testing.assert_allclose(eig.values, exact[:2], rtol=1e-7)
    est = hessjax.xtrace(ggn, params, num_matvecs=18, key=jax.random.key(1))  # P = 18: exact
    np.testing.assert_allclose(est.value, np.trace(dense), rtol=1e-10)


def test_bad_arguments_are_reported():
    model, variables, data = _setup("mlp")
    with pytest.raises(ValueError, match="kind must be one of"):
        hessjax.gauss_newton_operator(model.apply, variables, data, batch_size=4, kind="gn")
    with pytest.raises(ValueError, match=r"data must be \(x, y\)"):
        hessjax.gauss_newton_operator(model.apply, variables, data[0], batch_size=4)
    with pytest.raises(ValueError, match="leading axis"):
        hessjax.gauss_newton_operator(model.apply, variables, (data[0], data[1][:3]), batch_size=4)
    with pytest.raises(ValueError, match="'params' collection"):
        hessjax.gauss_newton_operator(model.apply, variables["params"], data, batch_size=4)


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
    params = variables["params"]
    mesh = Mesh(np.array(jax.devices()), ("data",))
    flat, unravel = ravel_pytree(params)
    v = unravel(jax.random.normal(jax.random.key(1), flat.shape, flat.dtype))
    for kind in ("ggn", "empirical_fisher"):
        one = hessjax.gauss_newton_operator(model.apply, variables, (x, y), batch_size=8, kind=kind)
        four = hessjax.gauss_newton_operator(
            model.apply, variables, (x, y), batch_size=8, kind=kind, mesh=mesh
        )
        assert len(four.full[0].sharding.device_set) == 4
        a = ravel_pytree(one(v))[0]
        np.testing.assert_allclose(ravel_pytree(four(v))[0], a, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ravel_pytree(four.linearize()(v))[0], a, rtol=1e-10, atol=1e-12)
    loss_fn = hessjax.make_loss_fn(model.apply, variables)
    blocks = [
        hessjax.block_operator(loss_fn, params, (x, y), select="Conv_1", batch_size=8, mesh=m)
        for m in (None, mesh)
    ]
    w = {k: jnp.ones_like(a) for k, a in blocks[0].params.items()}
    np.testing.assert_allclose(
        ravel_pytree(blocks[1](w))[0], ravel_pytree(blocks[0](w))[0], rtol=1e-10, atol=1e-12
    )
    print("MESH_OK")
    """
)


@pytest.mark.slow
def test_sharded_gauss_newton_and_blocks_on_four_fake_devices():
    out = run_on_fake_devices(MESH_SCRIPT, 4)
    assert "MESH_OK" in out and out.rstrip().endswith("DEVICES 4"), out[-2000:]
