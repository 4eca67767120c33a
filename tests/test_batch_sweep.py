"""The batch-sweep study (experiments/batch_sweep.py) through the runner, on real MNIST/CIFAR."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessjax
from experiments import batch_sweep, runner
from experiments.configs import c1, c2, cr, m1

STUDY = batch_sweep.STUDY


def _smoke(data_dir):
    config = m1.get_config("smoke")
    config.data_dir = str(data_dir)
    return config


def test_configs_build_for_every_scale():
    for module in (m1, c1, c2, cr):
        for scale in ("paper", "cpu", "smoke"):
            config = module.get_config(scale)
            runner.validate(STUDY, config)
            assert config.hessian.k >= 2
            if scale != "cpu":
                assert config.target_loss == 0.001
    for module in (m1, c1, c2):
        cpu = module.get_config("cpu")
        assert len(cpu.batch_sizes) >= 5
        # equal-loss protocol: one target loss for every batch size, constant lr, a budget
        assert 0.001 < cpu.target_loss <= 0.1 and cpu.lr_decay_epochs == []
        assert cpu.num_epochs >= 40
    assert m1.get_config().fgsm_eps == [0.2, 0.1] and c1.get_config().fgsm_eps == [0.02, 0.01]
    assert cr.get_config().dataset == "cifar100" and cr.get_config().augment
    assert c2.get_config().batch_sizes == [256, 512, 1024, 2048]
    with pytest.raises(ValueError, match="unknown scale"):
        m1.get_config("huge")


def test_bad_configs_fail_with_one_message():
    config = m1.get_config("smoke")
    config.model = "m9"
    config.fgsm_eps = [-0.1, 0.1]
    config.batch_sizes = [48]
    config.lr = -0.01
    config.train_conv_implementation = "cudnn"
    with pytest.raises(runner.ConfigError) as err:
        runner.validate(STUDY, config)
    msg = str(err.value)
    assert "unknown model" in msg and "fgsm_eps" in msg and "not divisible" in msg
    assert "lr must be a finite number > 0" in msg
    assert "train_conv_implementation must be one of auto, xla, patches, got 'cudnn'" in msg
    config = m1.get_config("smoke")
    config.dataset = "cifar10"
    with pytest.raises(runner.ConfigError, match="takes inputs"):
        runner.validate(STUDY, config)
    config = m1.get_config("paper")
    config.schedule = "constant"  # but the paper config decays the rate every 5 epochs
    with pytest.raises(runner.ConfigError, match="schedule='constant' but lr_decay_epochs"):
        runner.validate(STUDY, config)


def test_training_and_analysis_models_differ_only_in_their_convolutions():
    """The experiments train with ``train_conv_implementation`` and analyse with XLA's kernels:
    one parameter tree, one set of values (to rounding), two modules compiled once each."""
    train_model = runner.get_model("m1", "auto")
    analysis_model = runner.get_model("m1")
    assert runner.get_model("m1", "auto") is train_model and train_model is not analysis_model
    assert analysis_model.conv_implementation == "xla"
    assert m1.get_config("smoke").train_conv_implementation == "auto"
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 28, 28, 1)), jnp.float32)
    variables = hessjax.models.init(analysis_model, jax.random.key(0))
    assert jax.tree_util.tree_structure(
        hessjax.models.init(train_model, jax.random.key(0))
    ) == jax.tree_util.tree_structure(variables)
    np.testing.assert_allclose(
        train_model.apply(variables, x), analysis_model.apply(variables, x), rtol=1e-5, atol=1e-5
    )


def test_spearman():
    assert batch_sweep.spearman([1, 2, 3, 4], [1, 5, 7, 100]) == pytest.approx(1.0)
    assert batch_sweep.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


@pytest.mark.slow
def test_smoke_sweep_end_to_end_and_resume(data_dir, tmp_path, monkeypatch, forbid_redo):
    config = _smoke(data_dir)
    workdir = tmp_path / "run"
    results = runner.run(STUDY, config, workdir)

    saved = json.loads((workdir / "results.json").read_text())
    assert set(saved) == {"config", "runs", "summary", "environment"}
    assert saved["config"]["name"] == "m1_smoke"
    assert saved["environment"]["device_count"] >= 1 and saved["environment"]["jax_version"]
    assert set(saved["runs"]) == {"bs32_seed0", "bs128_seed0"}
    k = config.hessian.k
    for name, run in saved["runs"].items():
        assert run["status"] in ("converged", "max_epochs")
        assert run["reached_target"] == (run["status"] == "converged")
        assert run["target_loss"] == config.target_loss
        assert run["final_train_loss"] == run["history"][-1]["train_loss"]
        assert "training" in run["seconds"] and "train: loss and accuracy" in run["seconds"]
        for split in ("train", "test"):
            r = run[split]
            assert 0.0 <= r["accuracy"] <= 1.0 and r["loss"] > 0
            assert len(r["eigenvalues"]) == k
            assert r["eigenvalues"] == sorted(r["eigenvalues"], reverse=True)
            assert r["lambda_max"] > 0 and r["input_grad_norm"] > 0
            assert r["input_lambda_max"] >= 0
            assert 0.0 <= r["fgsm_eps1"] <= 1.0 and 0.0 <= r["fgsm_eps2"] <= 1.0
            assert len(r["landscape_1d"]["loss"]) == config.landscape.num_points
            grid = config.landscape.grid
            assert len(r["landscape_2d"]["loss"]) == grid
            assert len(r["landscape_2d"]["loss"][0]) == grid
        assert (workdir / name / "test_input_lambda_max.npy").exists()
        assert json.loads((workdir / name / "record.json").read_text()) == run
    rho = saved["summary"]["spearman_lambda_max_vs_batch"]
    assert set(rho) == {"train", "test"}
    assert results["summary"] == saved["summary"]

    table = (workdir / "table.md").read_text()
    table_1 = table.split("## Per-layer curvature")[0]
    rows = [line for line in table_1.splitlines() if line.startswith("| ") and "Batch" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["32", "128"]
    assert "λ_max^θ" in table and "FGSM ε₁" in table and "Spearman" in table
    assert "Budget hit before the target: bs32_seed0, bs128_seed0." in table
    for name in ("fig1_spectrum", "fig2_landscape_1d", "fig3_landscape_2d"):
        png = workdir / "figures" / f"{name}.png"
        assert png.exists() and png.stat().st_size > 1000
    # Beyond the paper: per-layer blocks (traces summing to tr H) and λ_max of the GGN.
    for run in saved["runs"].values():
        curv = run["curvature"]
        assert [r["layer"] for r in curv["layers"]] == ["Conv_0", "Conv_1", "Dense_0", "Dense_1"]
        assert curv["trace"] == pytest.approx(sum(r["trace"] for r in curv["layers"]))
        assert all(r["lambda_max"] <= curv["hessian_lambda_max"] * 1.05 for r in curv["layers"])
        assert curv["ggn_lambda_max"] > 0 and curv["samples"] == config.hessian.num_samples
    assert "## Per-layer curvature" in table and "λ_max GGN" in table
    assert (workdir / "figures" / "fig_layers.png").stat().st_size > 1000
    # One epoch per run: a training-curve figure would show one point per line.
    assert not (workdir / "figures" / "fig4_training.png").exists()
    assert json.loads((workdir / "config.json").read_text())["name"] == "m1_smoke"

    # Running again neither retrains nor re-analyses a finished run.
    forbid_redo(STUDY)
    again = runner.run(STUDY, config, workdir)
    assert again["runs"] == saved["runs"]

    # A truncated results.json is rebuilt from the per-run records.
    (workdir / "results.json").write_text(json.dumps(saved)[:200])
    rebuilt = runner.run(STUDY, config, workdir)
    assert rebuilt["runs"] == saved["runs"]
    monkeypatch.undo()

    # A workdir holding another config's run is refused before any work.
    other = _smoke(data_dir)
    other.lr = 0.5
    with pytest.raises(runner.ConfigError, match="another config"):
        runner.run(STUDY, other, workdir)

    # --analyze_only re-measures from the checkpoints: the same numbers.
    reanalysed = runner.run(STUDY, config, workdir, analyze_only=True)
    for name, run in saved["runs"].items():
        assert reanalysed["runs"][name]["train"]["eigenvalues"] == pytest.approx(
            run["train"]["eigenvalues"], rel=1e-5
        )
        assert reanalysed["runs"][name]["status"] == run["status"]


def test_training_line_names_the_runs_that_hit_the_epoch_budget():
    config = m1.get_config("cpu")
    runs = {
        "bs32_seed0": {"status": "converged", "epochs": 3, "final_train_loss": 0.041},
        "bs512_seed0": {"status": "max_epochs", "epochs": 50, "final_train_loss": 0.083},
    }
    line = batch_sweep.training_line(config, runs)
    assert line.startswith("Training to loss ≤ 0.05, budget 50 epochs")
    assert "32: 3 (0.041); 512: 50 (0.083)" in line
    assert line.endswith("Budget hit before the target: bs512_seed0.")
    runs["bs512_seed0"]["status"] = "converged"
    assert batch_sweep.training_line(config, runs).endswith("target: none.")


def test_history_keeps_the_last_record_of_each_epoch(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.5}]
    lines.append({"epoch": 2, "train_loss": 1.4})  # epoch 2 redone after an interruption
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    assert batch_sweep.read_history(path) == [lines[0], lines[2]]
    assert batch_sweep.read_history(tmp_path / "missing.jsonl") == []


@pytest.mark.slow
def test_fig4_tracking_measures_the_trained_model(data_dir, tmp_path):
    """The per-epoch λ_max / gradient norm recorded during training (Fig. 4) are those of the
    final weights on the first track.num_samples training samples."""
    config = _smoke(data_dir)
    config.batch_sizes = [64]
    config.num_epochs = 2
    config.curvature.enabled = False  # tested above; only the tracking matters here
    config.input_hessian.enabled = False
    config.track.tol = 1e-3
    config.track.max_matvecs = 30
    results = runner.run(STUDY, config, tmp_path / "run")
    run = results["runs"]["bs64_seed0"]
    last = run["history"][-1]
    assert last["epoch"] == run["epochs"] == config.num_epochs
    assert (tmp_path / "run" / "figures" / "fig4_training.png").stat().st_size > 1000

    data = runner.load_data(config)
    model = runner.get_model(config.model)
    step_like = hessjax.train.TrainStep(model.apply, hessjax.train.make_optimizer(0.1))
    state = hessjax.train.init_state(hessjax.models.init(model, jax.random.key(0)), step_like.tx, 0)
    restored, _, _ = hessjax.train.restore(
        step_like, state, tmp_path / "run" / "bs64_seed0" / "ckpt"
    )
    variables = hessjax.train.state_variables(restored)
    n = config.track.num_samples
    x, y = data["train"][0][:n], data["train"][1][:n]
    loss_fn = hessjax.make_loss_fn(model.apply, variables)
    params = variables["params"]
    op = hessjax.hessian_operator(loss_fn, params, (x, y), batch_size=n)
    ref = hessjax.eigenvalues(op, params, k=1, tol=1e-6, key=jax.random.key(7))
    assert last["lambda_max"] == pytest.approx(float(ref.values[0]), rel=1e-2)
    grad = jax.grad(loss_fn)(params, (x, y))
    norm = float(jax.numpy.sqrt(sum(jax.numpy.vdot(g, g) for g in jax.tree.leaves(grad))))
    assert last["grad_norm"] == pytest.approx(norm, rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("module", [c1, cr], ids=["c1", "cr"])
def test_cifar_smoke_sweeps_end_to_end(module, data_dir, tmp_path):
    # C2's config is C1's with another model and batch sizes (test_configs_build_for_every_scale
    # builds it; its model is checked in tests/test_models.py), so it has no end-to-end run here.
    config = module.get_config("smoke")
    config.data_dir = str(data_dir)
    config.batch_sizes = config.batch_sizes[:1]  # the M1 smoke sweep covers several batches
    # Per-layer curvature runs in the M1 smoke sweep above (and the m1_robust smoke study); its
    # blocks on a BatchNorm CNN are checked against dense Hessians in tests/test_blocks.py. Every
    # block compiles its own HVP, which here took about a minute of the suite.
    config.curvature.enabled = False
    results = runner.run(STUDY, config, tmp_path / "run")
    assert len(results["runs"]) == len(config.batch_sizes)
    table = (tmp_path / "run" / "table.md").read_text()
    assert ("λ_max^x" in table) == config.input_hessian.enabled  # Table 2 has no such column
    for run in results["runs"].values():
        assert len(run["history"]) == config.num_epochs and "lambda_max" in run["history"][0]
        assert len(run["test"]["eigenvalues"]) == config.hessian.k
        assert ("curvature" in run) == config.curvature.enabled
