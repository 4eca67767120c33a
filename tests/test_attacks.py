"""Adversarial attacks against hand computations and dense per-sample input Hessians."""

import dataclasses
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from nets import MLP, SmallCNN, init_with_random_bn, random_data

from hessjax import attacks, data
from hessjax.input_hessian import sample_loss

ALL = sorted(attacks.REGISTRY)
CASES = {
    "mlp_relu": (MLP((6, 5, 3)), (4,)),
    "cnn_bn": (SmallCNN(), (6, 6, 2)),
}


@functools.cache
def _setup(case, seed=0, n=6):
    model, shape = CASES[case]
    x, y = random_data(seed, n, shape, 3)
    variables = init_with_random_bn(model, jax.random.key(seed), jnp.asarray(x[:1]))
    return model.apply, variables, jnp.asarray(x), jnp.asarray(y)


@functools.partial(jax.jit, static_argnums=0)
def _dense(apply_fn, variables, x, y):
    """Per-sample gradients (N, d) and dense input Hessians (N, d, d) by jax.hessian."""
    d = x[0].size
    grad = jax.vmap(lambda xi, yi: jax.grad(sample_loss, argnums=2)(apply_fn, variables, xi, yi))
    hess = jax.vmap(lambda xi, yi: jax.hessian(sample_loss, argnums=2)(apply_fn, variables, xi, yi))
    return grad(x, y).reshape(-1, d), hess(x, y).reshape(-1, d, d)


def _losses(apply_fn, variables, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(apply_fn(variables, x), y)


def test_fgsm_matches_hand_computation():
    apply_fn, variables, x, y = _setup("mlp_relu")
    eps = 0.1
    out = attacks.fgsm(apply_fn, variables, x, y, eps, clip=None)
    clipped = attacks.fgsm(apply_fn, variables, x, y, eps, clip=(-0.5, 0.5))
    grad = jax.jit(jax.grad(sample_loss, argnums=2), static_argnums=0)
    for i in range(3):  # no vmap: jax.grad of the per-sample loss
        g = grad(apply_fn, variables, x[i], y[i])
        expected = np.asarray(x[i]) + eps * np.sign(np.asarray(g))
        np.testing.assert_array_equal(out[i], expected)
        np.testing.assert_array_equal(clipped[i], np.clip(expected, -0.5, 0.5))
    assert out.shape == x.shape and out.dtype == x.dtype
    x32 = x.astype(jnp.float32)  # eps and clip follow x's dtype
    assert attacks.fgsm(apply_fn, variables, x32, y, eps, clip=(-0.5, 0.5)).dtype == jnp.float32


def test_ifgsm_stays_in_ball_and_box_and_raises_loss():
    apply_fn, variables, x, y = _setup("mlp_relu")
    lo, hi = -1.0, 1.0
    x = jnp.clip(x, lo, hi)
    eps = 0.3
    out = attacks.ifgsm(apply_fn, variables, x, y, eps, clip=(lo, hi))
    assert out.shape == x.shape
    assert float(jnp.max(jnp.abs(out - x))) <= eps + 1e-12
    assert float(out.min()) >= lo and float(out.max()) <= hi
    clean, adv = _losses(apply_fn, variables, x, y), _losses(apply_fn, variables, out, y)
    assert float(adv.mean()) > float(clean.mean())
    # one step of size eps is FGSM exactly
    one_step = attacks.fgsm(apply_fn, variables, x, y, eps, clip=(lo, hi))
    single = attacks.ifgsm(apply_fn, variables, x, y, eps, clip=(lo, hi), steps=1)
    np.testing.assert_array_equal(single, one_step)
    # several eps with a fixed step size: each result in its own ball
    eps_list = [0.1, 0.3]
    multi = attacks.ifgsm(
        apply_fn, variables, x, y, eps_list, clip=(lo, hi), steps=3, step_size=0.07
    )
    for e, out_e in zip(eps_list, multi):
        assert float(jnp.max(jnp.abs(out_e - x))) <= e + 1e-12
    with pytest.raises(ValueError, match="step_size"):
        attacks.ifgsm(apply_fn, variables, x, y, 0.1, clip=None, step_size=0.0)


def test_l2_attacks_have_norm_eps_along_direction():
    apply_fn, variables, x, y = _setup("mlp_relu")
    eps = 0.7
    g, _ = _dense(apply_fn, variables, x, y)
    p, _, _ = attacks.newton_directions(apply_fn, variables, x, y, cg_iters=20, cg_tol=1e-10)
    for attack, direction in [(attacks.l2_grad, g), (attacks.l2_hess, p.reshape(len(x), -1))]:
        delta = np.asarray(attack(apply_fn, variables, x, y, eps, clip=None) - x).reshape(
            len(x), -1
        )
        np.testing.assert_allclose(np.linalg.norm(delta, axis=1), eps, rtol=1e-12)
        unit = direction / np.linalg.norm(direction, axis=1, keepdims=True)
        np.testing.assert_allclose(delta, eps * unit, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", sorted(CASES))
def test_newton_direction_solves_dense_system_min_norm(case):
    apply_fn, variables, x, y = _setup(case)
    tol = 1e-10
    p, res, iters = attacks.newton_directions(apply_fn, variables, x, y, cg_iters=20, cg_tol=tol)
    g, hess = (np.asarray(a) for a in _dense(apply_fn, variables, x, y))
    p = np.asarray(p).reshape(len(x), -1)
    num_classes = 3
    for i in range(len(x)):
        true_res = np.linalg.norm(hess[i] @ p[i] - g[i]) / np.linalg.norm(g[i])
        assert true_res <= tol
        np.testing.assert_allclose(res[i], true_res, rtol=1e-3, atol=1e-13)  # reported = true
        # ReLU net: H PSD of rank <= c - 1, g in its range, CG from 0 -> min-norm H⁺g
        assert np.linalg.eigvalsh(hess[i]).min() >= -1e-12
        pinv = np.linalg.pinv(hess[i], rcond=1e-10, hermitian=True) @ g[i]
        np.testing.assert_allclose(p[i], pinv, rtol=1e-8, atol=1e-10 * np.abs(pinv).max())
        assert 1 <= int(iters[i]) <= num_classes - 1
    # the per-sample public helper (traceable, here jitted) agrees with the batched one
    one = jax.jit(attacks.newton_direction, static_argnums=0, static_argnames="cg_iters")
    p0, res0, it0 = one(apply_fn, variables, x[0], y[0], cg_iters=20, cg_tol=tol)
    np.testing.assert_allclose(np.ravel(p0), p[0], rtol=1e-12, atol=1e-14)
    assert int(it0) == int(iters[0])


def test_conjugate_gradient_dense_spd_and_caps():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(8, 8))
    a = a @ a.T + 0.1 * np.eye(8)
    b = rng.normal(size=8)
    out = attacks.conjugate_gradient(lambda v: a @ v, b, max_iters=50, tol=1e-12)
    np.testing.assert_allclose(out.x, np.linalg.solve(a, b), rtol=1e-8)
    assert float(out.relative_residual) <= 1e-12 and int(out.iterations) <= 50
    capped = attacks.conjugate_gradient(lambda v: a @ v, b, max_iters=2, tol=1e-12)
    assert int(capped.iterations) == 2 and float(capped.relative_residual) > 1e-12
    zero = attacks.conjugate_gradient(lambda v: a @ v, np.zeros(8), max_iters=5, tol=1e-6)
    assert int(zero.iterations) == 0 and not np.any(zero.x) and float(zero.relative_residual) == 0


def test_second_order_attacks_use_newton_direction():
    apply_fn, variables, x, y = _setup("mlp_relu")
    eps, kw = 0.2, dict(cg_iters=20, cg_tol=1e-10)
    p, res, iters = attacks.newton_directions(apply_fn, variables, x, y, **kw)
    out, info = attacks.fhsm(apply_fn, variables, x, y, eps, clip=None, return_info=True, **kw)
    np.testing.assert_array_equal(out, x + eps * jnp.sign(p))
    assert isinstance(info, attacks.CGInfo)
    np.testing.assert_allclose(info.relative_residual, res, rtol=1e-6, atol=1e-16)
    np.testing.assert_array_equal(info.iterations, iters)
    out_l2, info_l2 = attacks.l2_hess(
        apply_fn, variables, x, y, [eps], clip=None, return_info=True, **kw
    )
    norms = jnp.linalg.norm(p.reshape(len(x), -1), axis=1).reshape(-1, *(1,) * (x.ndim - 1))
    np.testing.assert_allclose(out_l2[0], x + eps * p / norms, rtol=1e-13, atol=1e-14)
    np.testing.assert_array_equal(info_l2.iterations, iters)


def test_one_cg_iteration_gives_the_first_order_attacks():
    """CG's first iterate from 0 is (gᵀg / gᵀHg)·g, a positive multiple of g (H is PSD): the
    Newton attacks truncated after one iteration are FGSM (FHSM) and GRAD (HESS); the CG cap is
    what moves them away from the first-order direction (docs/reproductions.md)."""
    apply_fn, variables, x, y = _setup("mlp_relu")
    eps, kw = [0.05, 0.3], dict(cg_iters=1, clip=(-1.0, 1.0))
    fhsm1 = attacks.fhsm(apply_fn, variables, x, y, eps, **kw)
    np.testing.assert_array_equal(
        fhsm1, attacks.fgsm(apply_fn, variables, x, y, eps, clip=kw["clip"])
    )
    hess1 = attacks.l2_hess(apply_fn, variables, x, y, eps, **kw)
    grad = attacks.l2_grad(apply_fn, variables, x, y, eps, clip=kw["clip"])
    np.testing.assert_allclose(hess1, grad, rtol=1e-12, atol=1e-14)
    hess20 = attacks.l2_hess(apply_fn, variables, x, y, eps, cg_iters=20, clip=kw["clip"])
    assert np.abs(np.asarray(hess20) - np.asarray(grad)).max() > 1e-3  # a different direction


@pytest.mark.parametrize("name", ALL)
def test_multiple_eps_match_separate_calls_and_clip(name):
    apply_fn, variables, x, y = _setup("mlp_relu")
    attack, clip = attacks.get(name), (-0.5, 0.5)
    eps = [0.0, 0.05, 0.3]
    stacked = attack(apply_fn, variables, x, y, eps, clip=clip)
    assert stacked.shape == (len(eps), *x.shape)
    for e, out in zip(eps, stacked):
        np.testing.assert_allclose(out, attack(apply_fn, variables, x, y, e, clip=clip), atol=1e-12)
    assert float(stacked.min()) >= clip[0] and float(stacked.max()) <= clip[1]
    np.testing.assert_array_equal(stacked[0], jnp.clip(x, *clip))  # eps = 0: clean, clipped


@pytest.mark.parametrize("name", ALL)
def test_bad_arguments_raise(name):
    apply_fn, variables, x, y = _setup("mlp_relu")
    attack = attacks.get(name)
    for eps in (-0.1, [0.1, -0.1], [[0.1]], float("nan")):
        with pytest.raises(ValueError, match="eps"):
            attack(apply_fn, variables, x, y, eps, clip=None)
    with pytest.raises(ValueError, match="clip"):
        attack(apply_fn, variables, x, y, 0.1, clip=(1.0, -1.0))


def test_registry():
    assert list(attacks.REGISTRY) == ["fgsm", "fgsm10", "l2_grad", "fhsm", "l2_hess"]
    assert [s.display for s in attacks.REGISTRY.values()] == [
        "FGSM",
        "FGSM-10",
        "GRAD",
        "FHSM",
        "HESS",
    ]
    assert all(attacks.REGISTRY[k].key == k for k in attacks.REGISTRY)
    assert attacks.get("fgsm10") is attacks.ifgsm is attacks.get("FGSM-10")
    assert attacks.get("HESS") is attacks.l2_hess and attacks.get("grad") is attacks.l2_grad
    assert attacks.spec("fgsm-10") is attacks.spec("fgsm10") is attacks.REGISTRY["fgsm10"]
    norms = {k: s.norm for k, s in attacks.REGISTRY.items()}
    assert norms == {
        "fgsm": "linf",
        "fgsm10": "linf",
        "l2_grad": "l2",
        "fhsm": "linf",
        "l2_hess": "l2",
    }
    options = {k: s.options for k, s in attacks.REGISTRY.items()}
    assert options == {
        "fgsm": (),
        "fgsm10": ("steps", "step_size"),
        "l2_grad": (),
        "fhsm": ("cg_iters", "cg_tol"),
        "l2_hess": ("cg_iters", "cg_tol"),
    }
    # every declared option is a keyword argument of the attack function
    for s in attacks.REGISTRY.values():
        params = inspect.signature(s.fn).parameters
        assert all(params[o].kind is inspect.Parameter.KEYWORD_ONLY for o in s.options), s.key
    with pytest.raises(ValueError, match="unknown attack 'pgd'.*FGSM-10"):
        attacks.get("pgd")
    with pytest.raises(ValueError, match="unknown attack None"):
        attacks.spec(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        attacks.REGISTRY["fgsm"].norm = "l2"


def test_pick_options_keeps_only_the_attacks_own_set_options():
    available = dict(steps=10, step_size=None, cg_iters=20, cg_tol=1e-5)
    assert attacks.spec("fgsm").pick_options(**available) == {}
    assert attacks.spec("FGSM-10").pick_options(**available) == {"steps": 10}
    assert attacks.spec("fhsm").pick_options(**available) == {"cg_iters": 20, "cg_tol": 1e-5}
    assert attacks.spec("HESS").pick_options(cg_iters=None, steps=3) == {}


def test_new_eps_and_variables_do_not_retrace():
    model = CASES["mlp_relu"][0]
    traces = []

    def apply_fn(variables, x):
        traces.append(None)
        return model.apply(variables, x)

    _, variables, x, y = _setup("mlp_relu")
    other = jax.tree_util.tree_map(lambda a: 1.5 * a, variables)
    for name in ("fgsm", "fhsm"):
        attacks.get(name)(apply_fn, variables, x, y, 0.1, clip=(-1.0, 1.0))
        count = len(traces)
        attacks.get(name)(apply_fn, other, x, y, 0.3, clip=(-2.0, 2.0))
        assert len(traces) == count, name


@functools.cache
def _trained_mlp():
    """A 64-32-10 float64 MLP trained full-batch with Adam on `data.synthetic` (noise 2)."""
    x, y = data.synthetic(1024, seed=0, noise=2.0)
    x_test, y_test = data.synthetic(250, seed=1, noise=2.0)
    model = MLP((32, 10))
    variables = model.init(jax.random.key(0), jnp.asarray(x[:1], jnp.float64))
    opt = optax.adam(1e-2)
    x, y = jnp.asarray(x, jnp.float64), jnp.asarray(y)
    loss = lambda v: optax.softmax_cross_entropy_with_integer_labels(model.apply(v, x), y).mean()

    def step(carry, _):
        v, state = carry
        updates, state = opt.update(jax.grad(loss)(v), state)
        return (optax.apply_updates(v, updates), state), None

    carry, _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=300))(
        (variables, opt.init(variables))
    )
    return model.apply, carry[0], np.asarray(x_test, np.float64), y_test


def test_accuracy_in_chunks():
    apply_fn, variables, x, y = _trained_mlp()
    expected = np.mean(np.argmax(apply_fn(variables, x), axis=1) == y)
    assert expected > 0.8
    for batch_size in (100, 1000):  # 250 samples: chunks of 100, 100, 50 (padded); one chunk
        acc = attacks.accuracy(apply_fn, variables, x, y, batch_size=batch_size)
        assert isinstance(acc, float) and acc == pytest.approx(expected)
    # adversarial accuracy in chunks == attacking the whole set at once; scalar eps -> float
    kw = dict(clip=None, batch_size=100)
    adv = attacks.adversarial_accuracy(apply_fn, variables, x, y, "fgsm", 0.2, **kw)
    direct = attacks.fgsm(apply_fn, variables, x, y, 0.2, clip=None)
    assert isinstance(adv, float)
    assert adv == pytest.approx(np.mean(np.argmax(apply_fn(variables, direct), axis=1) == y))


@pytest.mark.parametrize("name", ALL)
def test_adversarial_accuracy_decreases_with_eps(name):
    apply_fn, variables, x, y = _trained_mlp()
    clean = attacks.accuracy(apply_fn, variables, x, y, batch_size=100)
    clip = data.input_range("synthetic")
    eps = [0.0, 0.05, 0.2, 0.5] if name in ("fgsm", "fgsm10", "fhsm") else [0.0, 0.4, 1.6, 4.0]
    acc = attacks.adversarial_accuracy(
        apply_fn, variables, x, y, name, eps, clip=clip, batch_size=100
    )
    assert acc.shape == (4,) and acc[0] == pytest.approx(clean)
    assert np.all(np.diff(acc) <= 0) and acc[-1] < clean - 0.2, acc
