"""Training engine: micro-batching, ghost BN, data parallel, schedules, fit and resume."""

import json
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from fake_devices import run_on_fake_devices
from nets import MLP, SmallCNN, init_with_random_bn, random_data

import hessjax
from hessjax import train


def _mlp_setup(n=32, seed=0):
    model = MLP()
    x, y = random_data(seed, n, (4,), 3)
    return model, model.init(jax.random.key(seed), jnp.asarray(x[:1])), x, y


def _run_steps(model, variables, x, y, *, micro, steps=2, lr=0.1, **kw):
    tx = train.make_optimizer(lr)
    state = train.init_state(variables, tx, 0)
    step = train.TrainStep(model.apply, tx, micro_batch_size=micro, **kw)
    for _ in range(steps):
        state, metrics = step(state, x, y)
    return state, metrics


def test_micro_batched_step_equals_single_batch_without_bn(loop_mode):
    model, variables, x, y = _mlp_setup()
    full, m_full = _run_steps(model, variables, x, y, micro=None)
    micro, m_micro = _run_steps(model, variables, x, y, micro=8)
    chex.assert_trees_all_close(full.params, micro.params, rtol=1e-12, atol=1e-14)
    chex.assert_trees_all_close(full.opt_state, micro.opt_state, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(m_full["loss"], m_micro["loss"], rtol=1e-12)
    assert int(micro.step) == 2 and float(m_full["accuracy"]) == float(m_micro["accuracy"])


def test_ghost_batchnorm_statistics_per_micro_batch(loop_mode):
    model = SmallCNN()
    x, y = random_data(1, 12, (6, 6, 2), 3)
    variables = init_with_random_bn(model, jax.random.key(0), jnp.asarray(x[:1]))
    lr, m = 0.05, 4
    state, metrics = _run_steps(model, variables, x, y, micro=m, steps=1, lr=lr)
    # optax.inject_hyperparams applies the rate in the params' dtype (here float64)
    assert state.opt_state.hyperparams["learning_rate"].dtype == jnp.float64

    # Manual: gradient and loss of each micro-batch with its own BN statistics; running stats
    # updated micro-batch after micro-batch; one SGD step (first momentum step: v = g).
    stats, grads, losses = variables["batch_stats"], [], []
    for j in range(len(y) // m):
        xj, yj = x[j * m : (j + 1) * m], y[j * m : (j + 1) * m]

        def loss(p, xj=xj, yj=yj, stats=stats):
            logits, new = model.apply(
                {"params": p, "batch_stats": stats}, xj, train=True, mutable=["batch_stats"]
            )
            return hessjax.cross_entropy(logits, yj), new["batch_stats"]

        (value, stats), g = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        grads.append(g)
        losses.append(value)
    mean_grad = jax.tree_util.tree_map(lambda *g: sum(g) / len(g), *grads)
    expected = jax.tree_util.tree_map(lambda p, g: p - lr * g, variables["params"], mean_grad)
    chex.assert_trees_all_close(state.params, expected, rtol=1e-10, atol=1e-12)
    chex.assert_trees_all_close(state.batch_stats, stats, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(metrics["loss"], np.mean(losses), rtol=1e-12)
    # ... and ghost BN really differs from whole-batch BN.
    whole, _ = _run_steps(model, variables, x, y, micro=None, steps=1, lr=lr)
    diff = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), whole, state)
    assert max(jax.tree_util.tree_leaves(diff.params)) > 1e-6


def test_divisibility_errors_name_the_fix():
    model, variables, x, y = _mlp_setup(n=30)
    tx = train.make_optimizer(0.1)
    step = train.TrainStep(model.apply, tx, micro_batch_size=8)
    with pytest.raises(ValueError, match="not divisible by micro_batch_size=8"):
        step(train.init_state(variables, tx, 0), x, y)
    with pytest.raises(ValueError, match="batch_size"):
        train.fit(step, train.init_state(variables, tx, 0), x, y, batch_size=64, num_epochs=1)


MESH_SCRIPT = textwrap.dedent(
    """
    import os
    import jax, jax.numpy as jnp, numpy as np, chex
    jax.config.update("jax_enable_x64", True)
    from jax.sharding import Mesh
    from hessjax import train
    from hessjax.adversarial import Adversary
    from nets import SmallCNN, random_data
    assert jax.device_count() == 8, jax.devices()
    model = SmallCNN()
    x, y = random_data(0, 32, (6, 6, 2), 3)
    variables = model.init(jax.random.key(0), jnp.asarray(x[:1]))
    tx = train.make_optimizer(0.05)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    noise = lambda key, x: x + 0.01 * jax.random.normal(key, x.shape, x.dtype)
    # robust training too (FGSM on half of each micro-batch), in the lax.scan form
    adversary = Adversary("fgsm", 0.2, 0.5, (-2.0, 2.0))
    cases = [(False, dict(augment=noise)), (True, dict(augment=noise))]
    for host, extra in cases + [(False, dict(adversary=adversary))]:
        out = []
        for m in (None, mesh):
            step = train.TrainStep(model.apply, tx, micro_batch_size=16, mesh=m,
                                   host_loops=host, **extra)
            state = step.replicate(train.init_state(variables, tx, 0))
            for _ in range(2):
                state, metrics = step(state, x, y)
            out.append((state, metrics["loss"]))
        leaf = jax.tree_util.tree_leaves(out[1][0].params)[0]
        assert len(leaf.sharding.device_set) == 8 and leaf.sharding.is_fully_replicated
        chex.assert_trees_all_close(out[0], out[1], rtol=1e-10, atol=1e-12)
    loss, acc = train.evaluate(model.apply, train.state_variables(state), x, y, 13, mesh=mesh)
    ref = train.evaluate(model.apply, train.state_variables(state), x, y, 13)
    np.testing.assert_allclose((loss, acc), ref, rtol=1e-10)
    step = train.TrainStep(model.apply, tx, micro_batch_size=12, mesh=mesh)
    try:
        step(train.init_state(variables, tx, 0), x[:24], y[:24])
        raise SystemExit("expected a divisibility error")
    except ValueError as e:
        assert "divisible by 8" in str(e), e
    print("MESH_OK")
    """
)


@pytest.mark.slow
def test_step_on_eight_fake_devices_equals_single_device():
    out = run_on_fake_devices(MESH_SCRIPT, 8)
    # the script's checks passed (MESH_OK) on 8 devices, not silently on one
    assert "MESH_OK" in out and out.rstrip().endswith("DEVICES 8"), out[-2000:]


def test_divergence_is_reported_not_raised(tmp_path):
    model, variables, x, y = _mlp_setup()
    tx = train.make_optimizer(1e6)
    step = train.TrainStep(model.apply, tx, micro_batch_size=8)
    state, log = train.init_state(variables, tx, 0), tmp_path / "m.jsonl"
    result = train.fit(step, state, x, y, batch_size=16, num_epochs=5, metrics_file=log)
    assert result.status == "diverged" and result.epoch < 5
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == result.epoch


def test_fit_stops_at_target_loss():
    x, y = hessjax.data.synthetic(48, (4, 4, 1), num_classes=3, seed=0, noise=0.1)
    model = MLP(features=(16, 3))
    variables = model.init(jax.random.key(0), jnp.asarray(x[:1], jnp.float64))
    tx = train.make_optimizer(0.1)
    step = train.TrainStep(model.apply, tx, micro_batch_size=8)
    seen = []
    callback = lambda epoch, state, rec: seen.append(epoch) or {"extra": 1.0}
    kw = dict(batch_size=16, num_epochs=300, target_loss=0.01, verbose=False)
    result = train.fit(step, train.init_state(variables, tx, 0), x, y, callback=callback, **kw)
    assert result.status == "converged" and result.epoch < 300, result.history[-1]
    assert result.history[-1]["train_loss"] <= 0.01 and result.history[-1]["extra"] == 1.0
    assert seen == list(range(1, result.epoch + 1))
    loss, acc = train.evaluate(model.apply, train.state_variables(result.state), x, y, 7)
    assert loss == pytest.approx(result.history[-1]["train_loss"]) and acc == 1.0


def test_interrupt_and_resume_equals_straight_run(tmp_path):
    model = SmallCNN()
    x, y = random_data(2, 24, (6, 6, 2), 3)
    variables = model.init(jax.random.key(0), jnp.asarray(x[:1]))
    tx = train.make_optimizer(0.05, schedule="step", boundaries_and_scales={5: 0.5})
    noise = lambda key, x: x + 0.05 * jax.random.normal(key, x.shape, x.dtype)
    step = train.TrainStep(model.apply, tx, micro_batch_size=4, augment=noise)
    kw = dict(batch_size=8, seed=3, verbose=False)
    fresh = lambda: train.init_state(variables, tx, 7)
    straight = train.fit(step, fresh(), x, y, num_epochs=4, **kw)
    work, log = tmp_path / "run", tmp_path / "m.jsonl"
    first = train.fit(step, fresh(), x, y, num_epochs=2, workdir=work, metrics_file=log, **kw)
    assert first.status == "max_epochs" and first.epoch == 2
    resumed = train.fit(step, fresh(), x, y, num_epochs=4, workdir=work, metrics_file=log, **kw)
    assert resumed.status == "max_epochs" and resumed.epoch == 4 and int(resumed.state.step) == 12
    chex.assert_trees_all_close(straight.state, resumed.state, rtol=1e-12, atol=1e-14)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["train_loss"] == pytest.approx(straight.history[-1]["train_loss"])
    assert {"step", "train_accuracy", "lr", "seconds", "examples_per_s"} <= set(records[0])


def test_schedules():
    spe = 10
    c1 = train.epochs_to_steps([30, 60], 0.2, spe)
    step_lr = train.make_schedule(0.02, "step", boundaries_and_scales=c1)
    for t, lr in [(0, 0.02), (299, 0.02), (300, 0.004), (599, 0.004), (600, 0.0008)]:
        assert float(step_lr(t)) == pytest.approx(lr), t
    m1 = train.epochs_to_steps(range(5, 100, 5), 0.5, spe)
    halving = train.make_schedule(0.01, "step", boundaries_and_scales=m1)
    assert float(halving(49)) == pytest.approx(0.01) and float(halving(50)) == pytest.approx(0.005)
    assert float(halving(999)) == pytest.approx(0.01 * 0.5**19)
    goyal = train.make_schedule(
        0.1,
        "goyal",
        batch_size=1024,
        base_batch_size=128,
        warmup_steps=50,
        boundaries_and_scales={100: 0.1},
    )
    for t, lr in [(0, 0.1), (25, 0.45), (50, 0.8), (99, 0.8), (100, 0.08)]:
        assert float(goyal(t)) == pytest.approx(lr), t
    assert float(train.make_schedule(0.3)(123)) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="boundaries_and_scales"):
        train.make_schedule(0.1, "step")
    # The optimiser applies the schedule: after 3 updates the last used rate is lr(2).
    model, variables, x, y = _mlp_setup(n=8)
    tx = train.make_optimizer(0.1, schedule="step", boundaries_and_scales={2: 0.5})
    state, step = train.init_state(variables, tx, 0), train.TrainStep(model.apply, tx)
    lrs = []
    for _ in range(3):
        state, _ = step(state, x, y)
        lrs.append(train.learning_rate(state.opt_state))
    assert lrs == pytest.approx([0.1, 0.1, 0.05])


def test_evaluate_and_full_gradient_norm_against_dense():
    model, variables, x, y = _mlp_setup(n=23)
    logits = model.apply(variables, x)
    ref_loss = float(optax.softmax_cross_entropy_with_integer_labels(logits, y).mean())
    ref_acc = float(np.mean(np.argmax(logits, -1) == y))
    assert train.evaluate(model.apply, variables, x, y, 5) == pytest.approx((ref_loss, ref_acc))
    loss_fn = hessjax.make_loss_fn(model.apply, variables)
    params = variables["params"]
    full = jax.grad(loss_fn)(params, (x, y))
    ref = float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree_util.tree_leaves(full))))
    assert train.full_gradient_norm(loss_fn, params, (x, y), 5) == pytest.approx(ref, rel=1e-10)


def _closed_form(lr, schedule, bounds=None, batch_size=None, base=None, warmup=0):
    """The hand-written schedules optax replaced, as formulas: ``step -> rate`` (float64)."""
    bounds = sorted((bounds or {}).items())
    decay = lambda t: float(np.prod([s for b, s in bounds if t >= b])) if bounds else 1.0
    if schedule == "constant":
        return lambda t: lr
    if schedule == "step":
        return lambda t: lr * decay(t)
    peak = lr * batch_size / base
    return lambda t: lr + (peak - lr) * t / max(warmup, 1) if t < warmup else peak * decay(t)


@pytest.mark.parametrize(
    "schedule, kw",
    [
        ("constant", {}),
        ("step", dict(boundaries_and_scales={0: 0.5, 7: 0.2, 30: 0.1, 31: 3.0})),
        ("goyal", dict(batch_size=512, base_batch_size=128, warmup_steps=0)),
        ("goyal", dict(batch_size=512, base_batch_size=128, warmup_steps=10)),
        # boundaries before, at and after the end of the warm-up, two at the same shifted step
        (
            "goyal",
            dict(
                batch_size=1024,
                base_batch_size=128,
                warmup_steps=12,
                boundaries_and_scales={3: 0.5, 5: 0.1, 12: 0.2, 20: 0.5},
            ),
        ),
        (
            "goyal",
            dict(
                batch_size=256,
                base_batch_size=128,
                warmup_steps=0,
                boundaries_and_scales={0: 0.5, 4: 0.1},
            ),
        ),
    ],
)
def test_optax_schedules_equal_the_closed_forms(schedule, kw):
    lr = 0.05
    sched = train.make_schedule(lr, schedule, **kw)
    bounds = kw.get("boundaries_and_scales")
    ref = _closed_form(
        lr,
        schedule,
        bounds,
        kw.get("batch_size"),
        kw.get("base_batch_size"),
        kw.get("warmup_steps", 0),
    )
    steps = np.arange(60)
    got = np.array([float(sched(jnp.asarray(t, jnp.int32))) for t in steps])
    want = np.array([ref(int(t)) for t in steps])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # a whole array of steps at once (what inject_hyperparams never needs, but a plot does)
    np.testing.assert_allclose(np.asarray(sched(jnp.asarray(steps))) * np.ones(60), want, rtol=1e-6)
    # each scale starts applying exactly at its boundary (past the warm-up)
    warmup = kw.get("warmup_steps", 0)
    for b in bounds or {}:
        if b >= warmup and b > 0:
            assert got[b] != pytest.approx(got[b - 1], rel=1e-3) or ref(b) == ref(b - 1), b


def test_schedule_errors():
    with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
        train.make_schedule(0.1, "cosine")
    with pytest.raises(ValueError, match="batch_size and base_batch_size"):
        train.make_schedule(0.1, "goyal", warmup_steps=5)
    with pytest.raises(ValueError, match="scales >= 0"):
        train.make_schedule(0.1, "step", boundaries_and_scales={3: -0.5})


def test_make_optimizer_for_a_config_section():
    import types

    spe = 4
    section = types.SimpleNamespace(
        lr=0.1, momentum=0.8, lr_decay_epochs=[2, 3], lr_decay_factor=0.5
    )
    model, variables, x, y = _mlp_setup(n=8)

    def rates(tx, n=16):
        state, step = train.init_state(variables, tx, 0), train.TrainStep(model.apply, tx)
        out = []
        for _ in range(n):
            state, _ = step(state, x, y)
            out.append(train.learning_rate(state.opt_state))
        return out, state

    got, state = rates(train.make_optimizer_for(section, spe))
    assert got == pytest.approx([0.1] * 8 + [0.05] * 4 + [0.025] * 4)
    assert float(state.opt_state.hyperparams["momentum"]) == pytest.approx(0.8)
    # a mapping works too; no decay epochs: constant
    flat = {"lr": 0.1, "momentum": 0.9, "lr_decay_epochs": [], "lr_decay_factor": 0.5}
    assert rates(train.make_optimizer_for(flat, spe), 3)[0] == pytest.approx([0.1] * 3)
    # goyal: warm-up from lr to lr * 512/128 over 1 epoch, then the same decay
    goyal = train.make_optimizer_for(
        section, spe, schedule="goyal", batch_size=512, base_batch_size=128, warmup_epochs=1
    )
    expected = train.make_schedule(
        0.1,
        "goyal",
        batch_size=512,
        base_batch_size=128,
        warmup_steps=spe,
        boundaries_and_scales=train.epochs_to_steps([2, 3], 0.5, spe),
    )
    assert rates(goyal)[0] == pytest.approx([float(expected(t)) for t in range(16)], rel=1e-6)
    assert rates(goyal)[0][:5] == pytest.approx([0.1, 0.175, 0.25, 0.325, 0.4], rel=1e-6)
    with pytest.raises(ValueError, match="no field 'lr'"):
        train.make_optimizer_for({"momentum": 0.9}, spe)


def _small_fit_setup():
    model = SmallCNN()
    x, y = random_data(4, 16, (6, 6, 2), 3)
    variables = model.init(jax.random.key(0), jnp.asarray(x[:1]))
    tx = train.make_optimizer(0.05)
    step = train.TrainStep(model.apply, tx, micro_batch_size=4)
    return step, lambda: train.init_state(variables, tx, 1), x, y


def test_restore_returns_the_checkpoint_without_training(tmp_path, capsys):
    step, fresh, x, y = _small_fit_setup()
    work = tmp_path / "run"
    assert train.restore(step, fresh(), work) is None and not work.exists()  # nothing created
    work.mkdir()
    assert train.restore(step, fresh(), work) is None
    result = train.fit(step, fresh(), x, y, batch_size=8, num_epochs=2, workdir=work, verbose=False)
    capsys.readouterr()
    state, status, epoch = train.restore(step, fresh(), work)
    assert (status, epoch) == ("max_epochs", 2) and int(state.step) == 4
    chex.assert_trees_all_close(state, result.state, rtol=0, atol=0)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "restored" in out[0] and "epoch 2" in out[0], out
    assert train.restore(step, fresh(), work, verbose=False) is not None
    assert capsys.readouterr().out == ""
    # fit with num_epochs=0 restores too, but reports no "finished" (it trained nothing)
    again = train.fit(step, fresh(), x, y, batch_size=8, num_epochs=0, workdir=work)
    assert again.epoch == 2 and again.history == []
    assert "finished" not in capsys.readouterr().out
    fresh_run = train.fit(step, fresh(), x, y, batch_size=8, num_epochs=0)
    assert fresh_run.epoch == 0 and "finished" not in capsys.readouterr().out


def test_unfinished_checkpoint_save_is_discarded_with_one_line(tmp_path, capsys, caplog):
    step, fresh, x, y = _small_fit_setup()
    work = tmp_path / "run"
    kw = dict(batch_size=8, workdir=work, seed=2)
    straight = train.fit(step, fresh(), x, y, num_epochs=2, batch_size=8, seed=2, verbose=False)
    train.fit(step, fresh(), x, y, num_epochs=1, verbose=False, **kw)
    # what a run killed while saving epoch 2 leaves behind
    (work / "2.orbax-checkpoint-tmp" / "default").mkdir(parents=True)
    (work / "2.orbax-checkpoint-tmp" / "default" / "junk").write_text("partial")
    capsys.readouterr()
    with caplog.at_level("WARNING"):
        resumed = train.fit(step, fresh(), x, y, num_epochs=2, **kw)
    out = capsys.readouterr().out
    assert f"discarding an unfinished checkpoint save in {work} (interrupted run)" in out, out
    assert out.count("discarding") == 1
    assert "not finalized" not in caplog.text and "not finalized" not in out
    assert sorted(p.name for p in work.iterdir() if "orbax" in p.name) == []
    assert resumed.epoch == 2
    chex.assert_trees_all_close(straight.state, resumed.state, rtol=1e-12, atol=1e-14)
