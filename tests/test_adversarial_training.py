"""Robust training in the engine: hessjax.adversarial and TrainStep(..., adversary=...)."""

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nets import MLP, SmallCNN, init_with_random_bn, random_data

import hessjax
from hessjax import train
from hessjax.adversarial import Adversary, adversary_errors


def test_adversary_settings_and_one_message_for_bad_ones():
    a = Adversary("FGSM-10", 0.3, 0.5, (0, 1), options={"steps": 3})
    assert dataclasses.is_dataclass(a)
    assert a.attack == "fgsm10" and a.norm == "linf" and a.options == (("steps", 3),)
    assert a.clip == (0.0, 1.0) and isinstance(a.eps, float)
    assert Adversary("HESS", 1.0).norm == "l2" and Adversary().attack == "fgsm"
    same = Adversary("fgsm10", 0.3, 0.5, (0.0, 1.0), options=(("steps", np.int64(3)),))
    assert a == same and hash(a) == hash(same)
    assert a != Adversary("fgsm10", 0.3, 0.5, (0.0, 1.0), options={"steps": 4})
    # options: a dict or pairs, sorted, None (the attack's default) dropped
    hess = Adversary("l2_hess", 1.0, options={"cg_tol": 1e-5, "cg_iters": 3})
    assert hess.options == (("cg_iters", 3), ("cg_tol", 1e-5))
    assert Adversary("fgsm10", options={"step_size": None}).options == ()
    spec = hessjax.attacks.spec("fhsm")
    picked = Adversary("fhsm", 0.1, options=spec.pick_options(steps=10, cg_iters=5))
    assert picked.options == (("cg_iters", 5),)
    # to_dict is JSON-ready and round-trips
    d = a.to_dict()
    assert d == {
        "attack": "fgsm10",
        "eps": 0.3,
        "fraction": 0.5,
        "clip": [0.0, 1.0],
        "options": {"steps": 3},
    }
    assert Adversary(**json.loads(json.dumps(d))) == a
    assert [Adversary("fgsm", 0.1, f).num_adversarial(8) for f in (0, 0.3, 0.5, 1)] == [0, 2, 4, 8]
    with pytest.raises(ValueError) as err:
        Adversary("pgd", -0.1, 1.5)
    msg = str(err.value)
    assert "unknown attack 'pgd'" in msg and "eps must be" in msg and "fraction must be" in msg
    # an option the attack does not take, a bad option value and a bad clip: one message
    with pytest.raises(ValueError) as err:
        Adversary("fhsm", 0.1, clip=(1, 0), options={"steps": 3, "cg_iters": 0})
    msg = str(err.value)
    assert "does not take option 'steps'" in msg and "cg_iters, cg_tol" in msg, msg
    assert "cg_iters must be an int >= 1" in msg and "clip must be" in msg, msg
    with pytest.raises(ValueError, match="options must be a dict"):
        Adversary("fgsm10", options=("steps",))
    assert adversary_errors("fgsm", 0.1, 1.0) == []
    assert len(adversary_errors("fgsm", -1, 2, (1, 0))) == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.eps = 1.0


def _manual_robust_step(model, variables, x, y, m, eps, fraction, clip, lr):
    """Reference: per micro-batch, FGSM by hand (a batched input gradient with BN in inference
    mode at the current running statistics) on the first round(fraction*m) samples, then the
    training-mode gradient; running statistics threaded; one SGD step (v = g)."""
    k = int(np.floor(fraction * m + 0.5))
    stats, grads, losses = variables["batch_stats"], [], []
    params = variables["params"]
    for j in range(len(y) // m):
        xj, yj = jnp.asarray(x[j * m : (j + 1) * m]), jnp.asarray(y[j * m : (j + 1) * m])
        inference = {"params": params, "batch_stats": stats}
        total_ce = lambda xx, v=inference, yy=yj[:k]: jnp.sum(
            hessjax.cross_entropy(model.apply(v, xx), yy) * k
        )
        g = jax.grad(total_ce)(xj[:k])
        x_adv = jnp.clip(xj[:k] + eps * jnp.sign(g), *clip)
        xj = jnp.concatenate([x_adv, xj[k:]])

        def loss(p, xj=xj, yj=yj, stats=stats):
            logits, new = model.apply(
                {"params": p, "batch_stats": stats}, xj, train=True, mutable=["batch_stats"]
            )
            return hessjax.cross_entropy(logits, yj), new["batch_stats"]

        (value, stats), gp = jax.value_and_grad(loss, has_aux=True)(params)
        grads.append(gp)
        losses.append(value)
    mean_grad = jax.tree_util.tree_map(lambda *g: sum(g) / len(g), *grads)
    expected = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, mean_grad)
    return expected, stats, jnp.mean(jnp.stack(losses))


def test_robust_step_equals_manual_fgsm_with_inference_bn(loop_mode):
    fraction = 0.5  # half of every micro-batch adversarial, half clean
    model = SmallCNN()
    x, y = random_data(3, 12, (6, 6, 2), 3)
    variables = init_with_random_bn(model, jax.random.key(0), jnp.asarray(x[:1]))
    m, eps, clip, lr = 4, 0.2, (-1.5, 1.5), 0.05
    tx = train.make_optimizer(lr)
    step = train.TrainStep(
        model.apply, tx, micro_batch_size=m, adversary=Adversary("fgsm", eps, fraction, clip)
    )
    state, metrics = step(train.init_state(variables, tx, 0), x, y)
    # optax.inject_hyperparams applies the rate in the params' dtype (here float64)
    assert state.opt_state.hyperparams["learning_rate"].dtype == jnp.float64
    manual = jax.jit(lambda v: _manual_robust_step(model, v, x, y, m, eps, fraction, clip, lr))
    params, stats, loss = manual(variables)
    chex.assert_trees_all_close(state.params, params, rtol=1e-10, atol=1e-12)
    chex.assert_trees_all_close(state.batch_stats, stats, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-10)
    # ... and the adversarial examples changed the update (eps = 0 would not).
    plain = train.TrainStep(model.apply, tx, micro_batch_size=m)
    clean, _ = plain(train.init_state(variables, tx, 0), x, y)
    diff = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), clean, state)
    assert max(jax.tree_util.tree_leaves(diff.params)) > 1e-6


def _fgsm_loss(model, params, x, y, eps):
    """Mean CE on FGSM examples made at ``params`` (the adversarial loss being minimised)."""
    v = {"params": params}
    x_adv = hessjax.attacks.fgsm(model.apply, v, x, y, eps, clip=None)
    return float(hessjax.cross_entropy(model.apply(v, x_adv), y))


@pytest.mark.slow
def test_robust_steps_lower_the_adversarial_loss():
    x, y = hessjax.data.synthetic(64, (4, 4, 1), num_classes=3, seed=1, noise=0.6)
    x = x.astype(np.float64)
    model = MLP(features=(16, 3))
    variables = model.init(jax.random.key(0), jnp.asarray(x[:1]))
    eps, lr = 0.3, 1e-3
    tx = train.make_optimizer(lr, momentum=0.0)
    adv = Adversary("fgsm", eps, 1.0, None)
    robust = train.TrainStep(model.apply, tx, micro_batch_size=16, adversary=adv)
    before = _fgsm_loss(model, variables["params"], x, y, eps)
    state, _ = robust(train.init_state(variables, tx, 0), x, y)
    after = _fgsm_loss(model, state.params, x, y, eps)
    assert after < before
    # Danskin: at the FGSM examples x_adv of the current params, the step is -lr * the gradient
    # of the adversarial loss, so that loss falls by lr * |grad|^2 to first order (the gradient
    # taken by hand on examples made by hand: a batched input gradient of the summed loss).
    p0 = variables["params"]
    ce = lambda p, xx: hessjax.cross_entropy(model.apply({"params": p}, xx), y)
    x_adv = x + eps * jnp.sign(jax.grad(lambda xx: ce(p0, xx) * len(y))(jnp.asarray(x)))
    g = jax.grad(ce)(p0, x_adv)
    sq = sum(float(jnp.sum(leaf**2)) for leaf in jax.tree_util.tree_leaves(g))
    decrease = float(ce(p0, x_adv) - ce(state.params, x_adv))
    np.testing.assert_allclose(decrease, lr * sq, rtol=0.02)

    # Many steps: robust training lowers the adversarial loss far more than clean training.
    tx = train.make_optimizer(0.1)
    runs = {}
    for name, a in (("robust", adv), ("clean", None)):
        step = train.TrainStep(model.apply, tx, micro_batch_size=16, adversary=a)
        state = train.init_state(variables, tx, 0)
        for _ in range(25):
            state, _ = step(state, x, y)
        runs[name] = _fgsm_loss(model, state.params, x, y, eps)
    assert runs["robust"] < 0.8 * runs["clean"] and runs["robust"] < before, runs


def test_fit_budget_knobs():
    model = MLP()
    x, y = random_data(0, 40, (4,), 3)
    variables = model.init(jax.random.key(0), jnp.asarray(x[:1]))
    tx = train.make_optimizer(0.1)
    step = train.TrainStep(model.apply, tx, micro_batch_size=4)
    kw = dict(batch_size=8, num_epochs=3, max_steps_per_epoch=2, eval_limit=12, verbose=False)
    result = train.fit(step, train.init_state(variables, tx, 0), x, y, **kw)
    assert int(result.state.step) == 6 and result.epoch == 3
    ref = train.evaluate(model.apply, train.state_variables(result.state), x[:12], y[:12])
    assert result.history[-1]["train_loss"] == pytest.approx(ref[0], rel=1e-12)
    with pytest.raises(ValueError, match="max_steps_per_epoch"):
        train.fit(step, result.state, x, y, batch_size=8, num_epochs=1, max_steps_per_epoch=0)


@pytest.mark.slow
def test_robust_fit_interrupt_and_resume_equals_straight_run(tmp_path):
    attack, options = "l2_hess", {"cg_iters": 3}  # CG in a lax.while_loop inside the step
    model = SmallCNN()
    x, y = random_data(2, 16, (6, 6, 2), 3)
    variables = model.init(jax.random.key(0), jnp.asarray(x[:1]))
    tx = train.make_optimizer(0.05)
    adv = Adversary(attack, 0.3, 0.5, (-2.0, 2.0), options=options)
    step = train.TrainStep(model.apply, tx, micro_batch_size=4, adversary=adv)
    kw = dict(batch_size=8, seed=1, verbose=False)
    fresh = lambda: train.init_state(variables, tx, 3)
    straight = train.fit(step, fresh(), x, y, num_epochs=3, **kw)
    work = tmp_path / "run"
    first = train.fit(step, fresh(), x, y, num_epochs=1, workdir=work, **kw)
    assert first.epoch == 1
    resumed = train.fit(step, fresh(), x, y, num_epochs=3, workdir=work, **kw)
    assert resumed.epoch == 3 and int(resumed.state.step) == 6
    chex.assert_trees_all_close(straight.state, resumed.state, rtol=1e-12, atol=1e-14)


# The robust step on 8 fake devices is checked with the other mesh cases in tests/test_train.py.
