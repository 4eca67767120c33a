"""Smoke test of experiments/batch_sweep.py: the m1 smoke config end to end on real MNIST."""

import json

import pytest

from experiments import batch_sweep
from experiments.configs import c1, c2, cr, m1


def _smoke(data_dir):
    config = m1.get_config("smoke")
    config.data_dir = str(data_dir)
    return config


def test_configs_build_for_every_scale():
    for module in (m1, c1, c2, cr):
        for scale in ("paper", "cpu", "smoke"):
            config = module.get_config(scale)
            batch_sweep.validate(config)
            assert config.hessian.k >= 2 and config.target_loss == 0.001
    for module in (m1, c1, c2):
        assert len(module.get_config("cpu").batch_sizes) >= 5
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
    with pytest.raises(ValueError) as err:
        batch_sweep.validate(config)
    msg = str(err.value)
    assert "unknown model" in msg and "fgsm_eps" in msg and "not divisible" in msg
    config = m1.get_config("smoke")
    config.dataset = "cifar10"
    with pytest.raises(ValueError, match="takes inputs"):
        batch_sweep.validate(config)


def test_spearman():
    assert batch_sweep.spearman([1, 2, 3, 4], [1, 5, 7, 100]) == pytest.approx(1.0)
    assert batch_sweep.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_smoke_sweep_end_to_end_and_resume(data_dir, tmp_path, monkeypatch):
    config = _smoke(data_dir)
    workdir = tmp_path / "run"
    results = batch_sweep.run_sweep(config, workdir)

    saved = json.loads((workdir / "results.json").read_text())
    assert saved["config_name"] == "m1_smoke"
    assert set(saved["runs"]) == {"bs32_seed0", "bs128_seed0"}
    k = config.hessian.k
    for run in saved["runs"].values():
        assert run["status"] in ("converged", "max_epochs")
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
        assert (workdir / f"bs{run['batch_size']}_seed0" / "test_input_lambda_max.npy").exists()
    rho = saved["summary"]["spearman_lambda_max_vs_batch"]
    assert set(rho) == {"train", "test"}
    assert results["summary"] == saved["summary"]

    table = (workdir / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "Batch" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["32", "128"]
    assert "λ_max^θ" in table and "FGSM ε₁" in table and "Spearman" in table
    for name in ("fig1_spectrum", "fig2_landscape_1d", "fig3_landscape_2d", "fig4_training"):
        png = workdir / "figures" / f"{name}.png"
        assert png.exists() and png.stat().st_size > 1000
    assert json.loads((workdir / "config.json").read_text())["name"] == "m1_smoke"

    # Running again neither retrains nor re-analyses a finished run.
    def boom(*args, **kwargs):
        raise AssertionError("a finished run was redone")

    monkeypatch.setattr(batch_sweep, "train_run", boom)
    monkeypatch.setattr(batch_sweep, "analyze", boom)
    again = batch_sweep.run_sweep(config, workdir)
    assert again["runs"] == saved["runs"]

    # A workdir holding another config's run is refused before any work.
    other = _smoke(data_dir)
    other.lr = 0.5
    with pytest.raises(ValueError, match="another config"):
        batch_sweep.run_sweep(other, workdir)


def test_history_keeps_the_last_record_of_each_epoch(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.5}]
    lines.append({"epoch": 2, "train_loss": 1.4})  # epoch 2 redone after an interruption
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    assert batch_sweep.read_history(path) == [lines[0], lines[2]]
    assert batch_sweep.read_history(tmp_path / "missing.jsonl") == []


def test_fig4_tracking_measures_the_trained_model(data_dir, tmp_path):
    """The per-epoch λ_max / gradient norm recorded during training (Fig. 4) are those of the
    final weights on the first track.num_samples training samples."""
    import jax

    import hessjax

    config = _smoke(data_dir)
    config.batch_sizes = [64]
    config.track.tol = 1e-3
    config.track.max_matvecs = 30
    data = batch_sweep.load_data(config)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    model, variables, _, epochs = batch_sweep.train_run(config, data, 64, 0, run_dir)
    last = batch_sweep.read_history(run_dir / "metrics.jsonl")[-1]
    assert last["epoch"] == epochs == config.num_epochs

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


@pytest.mark.parametrize("module", [c1, c2, cr], ids=["c1", "c2", "cr"])
def test_cifar_smoke_sweeps_end_to_end(module, data_dir, tmp_path):
    config = module.get_config("smoke")
    config.data_dir = str(data_dir)
    results = batch_sweep.run_sweep(config, tmp_path / "run")
    assert len(results["runs"]) == len(config.batch_sizes)
    table = (tmp_path / "run" / "table.md").read_text()
    assert ("λ_max^x" in table) == config.input_hessian.enabled  # Table 2 has no such column
    for run in results["runs"].values():
        assert len(run["history"]) == config.num_epochs and "lambda_max" in run["history"][0]
        assert len(run["test"]["eigenvalues"]) == config.hessian.k
    assert (tmp_path / "run" / "figures" / "fig4_training.png").exists()


MESH_SWEEP_SCRIPT = """
import jax
from experiments import batch_sweep
from experiments.configs import m1

config = m1.get_config("smoke")
mesh = batch_sweep.make_mesh(config)
assert mesh is not None and mesh.size == 4, mesh
batch_sweep.validate(config)  # micro-batches of 32 split over 4 devices
config.micro_batch_size = 30
config.batch_sizes = [30, 90]
config.hessian.batch_size = 30
try:
    batch_sweep.validate(config)
except ValueError as e:
    msg = str(e)
    assert "cannot be split over 4 devices" in msg and "Hessian batches of 30" in msg, msg
else:
    raise AssertionError("no error")
config.data_parallel = False
batch_sweep.validate(config)
assert batch_sweep.make_mesh(config) is None
print("MESH_OK")
"""


def test_sweep_uses_every_device_and_checks_divisibility():
    from fake_devices import run_on_fake_devices

    out = run_on_fake_devices(MESH_SWEEP_SCRIPT, 4, timeout=120)
    assert "MESH_OK" in out and out.rstrip().endswith("DEVICES 4"), out[-2000:]
