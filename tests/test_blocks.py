"""Hessian blocks and per-layer curvature against the dense jax.hessian of the raveled params."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from nets import (
    MLP,
    SmallCNN,
    TinyResNet,
    dense_hessian,
    loss_problem,
)

import hessjax
from hessjax import blocks

CASES = {
    "mlp": (MLP((6, 5, 3)), (4,)),
    "cnn_bn": (SmallCNN(), (6, 6, 2)),
    "resnet": (TinyResNet(), (6, 6, 2)),
}


def _setup(case, seed=0, n=11):
    return loss_problem(*CASES[case], seed, n)


def _indices(params, sub):
    """Positions in ravel_pytree(params) of the leaves of ``sub``, in ravel_pytree(sub) order."""
    offsets, start = {}, 0
    for path, leaf in zip(blocks.param_paths(params), jax.tree_util.tree_leaves(params)):
        offsets[path] = np.arange(start, start + leaf.size)
        start += leaf.size
    order = jax.tree_util.tree_flatten_with_path(sub)[0]
    return np.concatenate([offsets[p[0].key] for p, _ in order])


SELECTORS = {
    "mlp": ["Dense_1", re.compile(r"kernel$"), ["Dense_0/bias", "Dense_2"]],
    "cnn_bn": ["Conv_0", "BatchNorm_1", re.compile(r"^(Conv_1|Dense_0)/")],
    "resnet": [lambda path, leaf: "BatchNorm" in path, "Conv_3", "Dense_0/kernel"],
}


@pytest.mark.parametrize(
    "case", ["mlp", *(pytest.param(c, marks=pytest.mark.slow) for c in ("cnn_bn", "resnet"))]
)
def test_block_is_the_sub_block_of_the_dense_hessian(case):
    loss_fn, params, data = _setup(case)
    dense = np.asarray(dense_hessian(loss_fn, params, data))
    for i, select in enumerate(SELECTORS[case]):
        op = hessjax.block_operator(loss_fn, params, data, select=select, batch_size=4)  # tail 3
        idx = _indices(params, op.params)
        block = dense[np.ix_(idx, idx)]
        flat, unravel = ravel_pytree(op.params)
        assert flat.size == idx.size < dense.shape[0]
        v = jax.random.normal(jax.random.key(1), flat.shape, flat.dtype)
        np.testing.assert_allclose(
            ravel_pytree(op(unravel(v)))[0], block @ v, rtol=1e-9, atol=1e-11
        )
        if i == 0:  # the linearised block is the same matrix
            np.testing.assert_allclose(
                ravel_pytree(op.linearize()(unravel(v)))[0], block @ v, rtol=1e-9, atol=1e-11
            )


def test_solvers_run_unchanged_on_a_block():
    loss_fn, params, data = _setup("cnn_bn")
    op = hessjax.block_operator(loss_fn, params, data, select="Dense_0", batch_size=5)
    idx = _indices(params, op.params)
    block = np.asarray(dense_hessian(loss_fn, params, data))[np.ix_(idx, idx)]
    exact = np.sort(np.linalg.eigvalsh(block))[::-1]
    eig = hessjax.eigenvalues(op, op.params, k=3, tol=1e-10, key=jax.random.key(0))
    np.testing.assert_allclose(eig.values, exact[:3], rtol=1e-7)
    assert set(eig.vectors) == {"Dense_0/bias", "Dense_0/kernel"}
    quad = hessjax.spectral_quadrature(
        op, op.params, num_steps=10, num_runs=2, key=jax.random.key(1)
    )
    assert quad.nodes.max() <= exact[0] * (1 + 1e-8) and quad.nodes.min() >= exact[-1] - 1e-8
    est = hessjax.xtrace(op, op.params, num_matvecs=200, key=jax.random.key(2))  # n = 84: exact
    np.testing.assert_allclose(est.value, np.trace(block), rtol=1e-10)
    assert float(est.error) == 0 and int(est.num_matvecs) == idx.size


def test_selector_matching_nothing_lists_the_paths():
    loss_fn, params, data = _setup("mlp")
    with pytest.raises(ValueError, match=r"matches no parameter; available paths: .*Dense_0/bias"):
        hessjax.block_operator(loss_fn, params, data, select="Conv_0", batch_size=4)
    with pytest.raises(TypeError, match="select must be"):
        blocks.restrict(params, 3)
    assert blocks.layer_names(params) == ["Dense_0", "Dense_1", "Dense_2"]
    assert set(blocks.restrict(params, "Dense_1")) == {"Dense_1/bias", "Dense_1/kernel"}
    merged = blocks.merge(params, {"Dense_1/bias": jnp.ones(5)})
    assert np.all(np.asarray(merged["Dense_1"]["bias"]) == 1)
    np.testing.assert_array_equal(merged["Dense_0"]["kernel"], params["Dense_0"]["kernel"])


@pytest.mark.parametrize("case", ["cnn_bn"])  # ResNet blocks: test_block_is_the_sub_block...
def test_layer_traces_sum_to_the_full_trace(case):
    loss_fn, params, data = _setup(case, n=8)
    dense = np.asarray(dense_hessian(loss_fn, params, data))
    rows = hessjax.layer_curvature(
        loss_fn, params, data, batch_size=8, key=jax.random.key(0), k=2, tol=1e-10,
        trace_matvecs=150,  # every layer of these nets is smaller: exact traces
    )  # fmt: skip
    assert [r.layer for r in rows] == blocks.layer_names(params)
    np.testing.assert_allclose(sum(r.trace for r in rows), np.trace(dense), rtol=1e-9)
    for r in rows:
        idx = _indices(params, blocks.restrict(params, blocks.layer_selector(r.layer)))
        exact = np.sort(np.linalg.eigvalsh(dense[np.ix_(idx, idx)]))[::-1]
        assert r.num_params == idx.size and r.trace_error == 0
        np.testing.assert_allclose(r.eigenvalues, exact[: len(r.eigenvalues)], rtol=1e-6, atol=1e-9)
    table = hessjax.layers.markdown(rows)
    assert len(table) == len(rows) + 2 and "(exact)" in table[2]


def test_layer_curvature_estimates_large_layers_and_draws_a_figure(tmp_path):
    loss_fn, params, data = _setup("mlp")
    dense = np.asarray(dense_hessian(loss_fn, params, data))
    rows = hessjax.layer_curvature(
        loss_fn, params, data, batch_size=11, key=jax.random.key(3), trace_matvecs=8,
        layers=["Dense_0", "Dense_2"],
    )  # fmt: skip
    big = rows[0]  # Dense_0: 4*6+6 = 30 parameters > 8 matvecs: XTrace
    idx = _indices(params, blocks.restrict(params, "Dense_0"))
    assert big.num_params == 30 and big.trace_error > 0
    assert abs(big.trace - np.trace(dense[np.ix_(idx, idx)])) < 6 * big.trace_error + 1e-12
    fig = hessjax.layers.figure(rows, title="mlp")
    fig.savefig(tmp_path / "layers.png")
    assert (tmp_path / "layers.png").stat().st_size > 0
    with pytest.raises(ValueError, match="unknown layers"):
        hessjax.layer_curvature(loss_fn, params, data, batch_size=4, key=jax.random.key(0),
                                layers=["Conv_0"])  # fmt: skip
