"""Curvature entry points trace the model in full float32 (hessjax/precision.py).

On CPU every precision computes in float32, so these tests read the precision that each matmul
and convolution records in the traced program (what a GPU or TPU would execute), and check that
the values are unchanged on CPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessjax
from hessjax import input_hessian, loops, models, precision


def _matmul_precisions(jaxpr) -> list:
    """The ``precision`` of every dot_general / conv in ``jaxpr``, sub-programs included."""
    found = []

    def walk(value):
        if hasattr(value, "eqns"):
            for eqn in value.eqns:
                if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
                    found.append(eqn.params["precision"])
                for p in eqn.params.values():
                    walk(p)
        elif hasattr(value, "jaxpr"):
            walk(value.jaxpr)
        elif isinstance(value, tuple | list):
            for v in value:
                walk(v)

    walk(jaxpr)
    return found


def _float32_precision():
    """What ``jax.default_matmul_precision("float32")`` records, traced independently."""
    with jax.default_matmul_precision("float32"):
        (p,) = _matmul_precisions(jax.make_jaxpr(jnp.dot)(jnp.ones((2, 2)), jnp.ones((2, 2))))
    return p


@pytest.fixture(scope="module")
def c1():
    model = models.get("c1")
    variables = models.init(model, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
    y = jnp.array([0, 1, 2, 3])
    return model, variables, x, y


def _hvp_jaxpr(loss_fn, params, batch):
    hvp = lambda v: jax.jvp(lambda p: jax.grad(loss_fn)(p, batch), (params,), (v,))[1]
    return jax.make_jaxpr(hvp)(params)


def test_weight_hessian_is_traced_in_float32_even_under_a_lower_outer_precision(c1):
    model, variables, x, y = c1
    loss_fn = hessjax.make_loss_fn(model.apply, variables)
    with jax.default_matmul_precision("bfloat16"):
        found = _matmul_precisions(_hvp_jaxpr(loss_fn, variables["params"], (x, y)))
    # C1: 2 convs + 3 dense layers, each in the forward, backward and their tangents.
    assert len(found) >= 10
    assert set(found) == {_float32_precision()}


def test_precision_none_leaves_the_callers_setting(c1):
    model, variables, x, y = c1
    loss_fn = hessjax.make_loss_fn(model.apply, variables, precision=None)
    found = _matmul_precisions(_hvp_jaxpr(loss_fn, variables["params"], (x, y)))
    assert found and set(found) == {None}
    with jax.default_matmul_precision("bfloat16"):
        lowered = _matmul_precisions(_hvp_jaxpr(loss_fn, variables["params"], (x, y)))
    assert _float32_precision() not in set(lowered)


def test_wrappers_are_cached_so_compilations_are_shared(c1):
    model = c1[0]
    assert precision.at(model.apply, "float32") is precision.at(model.apply, "float32")
    assert precision.at(model.apply, None) == model.apply  # a new bound method per access
    a = hessjax.make_loss_fn(model.apply, c1[1])
    b = hessjax.make_loss_fn(model.apply, c1[1])
    # jit caches on the pytree structure, which holds the function: equal means one compile.
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    c = hessjax.make_loss_fn(model.apply, c1[1], precision=None)
    assert jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(c)


def test_gauss_newton_model_is_traced_in_float32(c1):
    model, variables, x, y = c1
    op = hessjax.gauss_newton_operator(model.apply, variables, (x, y), batch_size=4)
    found = _matmul_precisions(jax.make_jaxpr(op.model)(variables["params"], x))
    assert found and set(found) == {_float32_precision()}


@pytest.mark.parametrize("method", ["exact", "power"])
def test_input_hessians_run_in_float32_model_and_linear_algebra(c1, method, monkeypatch):
    model, variables, x, y = c1
    seen = []

    def spy(name):
        inner = getattr(input_hessian if name == "_power_top_eigenvalue" else loops, name)

        def wrapped(fn_or_apply, *args, **kwargs):
            # what the per-sample function (model, J_z J_zᵀ, eigh / power updates) is traced under
            seen.append(jax.config.jax_default_matmul_precision)
            if name == "map_samples":
                jaxpr = jax.make_jaxpr(lambda xi: fn_or_apply(args[0], args[1], xi))(x[0])
                seen.append(set(_matmul_precisions(jaxpr)))
            return inner(fn_or_apply, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(loops, "map_samples", spy("map_samples"))
    monkeypatch.setattr(input_hessian, "_power_top_eigenvalue", spy("_power_top_eigenvalue"))
    hessjax.input_hessian_eigenvalues(
        model.apply, variables, x, y, method=method, key=jax.random.key(0), max_iters=3
    )
    assert seen[0] == "float32"
    if method == "exact":
        assert seen[1] == {_float32_precision()}


def test_values_on_cpu_do_not_depend_on_the_setting(c1):
    model, variables, x, y = c1
    params = variables["params"]
    v = jax.tree_util.tree_map(jnp.ones_like, params)
    hv = {
        p: hessjax.hvp(hessjax.make_loss_fn(model.apply, variables, precision=p), params, v, (x, y))
        for p in ("float32", None)
    }
    for a, b in zip(*(jax.tree_util.tree_leaves(h) for h in hv.values()), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    lam = {
        p: hessjax.input_hessian_eigenvalues(model.apply, variables, x, y, precision=p)
        for p in ("float32", None)
    }
    np.testing.assert_allclose(lam["float32"], lam[None], rtol=1e-5)


def test_solver_linear_algebra_is_traced_in_float32():
    """Gram-Schmidt, Ritz vectors, power and estimator products: on TPUs JAX's default float32
    product is one bfloat16 pass, which would undo Lanczos's orthogonality."""
    from hessjax import eigen, estimators, lanczos, tree

    n = 6
    w = jnp.arange(1.0, n + 1)
    state = lanczos.init(w / jnp.linalg.norm(w), 4)
    found = jnp.eye(2, n)
    power = dict(v=w, rq_v=w, hv=w, lam=jnp.ones(()), it=jnp.ones((), jnp.int32))
    power.update(done=jnp.zeros((), bool), tol=jnp.ones(()), max_iters=jnp.ones((), jnp.int32))
    programs = {
        "lanczos.absorb": jax.make_jaxpr(lanczos.absorb)(state, w, jax.random.key(0)),
        "ritz pairs": jax.make_jaxpr(lambda s: eigen._top_ritz_pairs(s, 2))(state),
        "power update": jax.make_jaxpr(eigen._power_update)((found, power), w),
        "tree.vdot": jax.make_jaxpr(tree.vdot)({"a": w}, {"a": w}),
        "estimators._deflate": jax.make_jaxpr(estimators._deflate)(found, found),
    }
    for name, program in programs.items():
        found_precisions = _matmul_precisions(program)
        assert found_precisions, name
        assert set(found_precisions) == {_float32_precision()}, name
