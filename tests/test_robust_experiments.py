"""Smoke tests of experiments/adversarial_training.py (Tables 3, 4) and
experiments/large_batch_robust.py (Table 8) on real MNIST / CIFAR-10, plus config validation."""

import json

import pytest

from experiments import adversarial_training as robust_exp
from experiments import large_batch_robust as table8_exp
from experiments.configs import c3_robust, m1_robust, table8


def test_configs_build_for_every_scale():
    for module, check in (
        (m1_robust, robust_exp.validate),
        (c3_robust, robust_exp.validate),
        (table8, table8_exp.validate),
    ):
        for scale in ("paper", "cpu", "smoke"):
            check(module.get_config(scale))
        with pytest.raises(ValueError, match="unknown scale"):
            module.get_config("huge")
    paper = m1_robust.get_config()
    assert paper.robust.attacks == ["fgsm", "fgsm10", "l2_grad", "fhsm", "l2_hess"]
    assert paper.original.num_epochs == 100 and paper.robust.num_epochs == 5
    assert paper.robust.fraction == 1.0 and paper.hessian.subsample_sizes == [1, 128]
    cpu8 = table8.get_config("cpu")
    assert cpu8.batch_sizes == [8000, 10000, 25000, 50000] and cpu8.train_limit is None
    assert all(b % cpu8.micro_batch_size == 0 for b in cpu8.batch_sizes)


def test_bad_configs_fail_with_one_message_before_any_work(tmp_path):
    config = m1_robust.get_config("smoke")
    config.robust.attacks = ["fgsm", "pgd"]
    config.robust.eps_linf = -0.1
    config.robust.fraction = 1.5
    config.batch_size = 96  # micro-batch 64 does not divide it
    workdir = tmp_path / "w"
    with pytest.raises(ValueError) as err:
        robust_exp.run_robust(config, workdir)
    msg = str(err.value)
    for part in ("unknown attack 'pgd'", "eps_linf", "fraction must be in [0, 1]", "divisible"):
        assert part in msg, msg
    assert not workdir.exists()

    config = table8.get_config("smoke")
    config.robust.attack = "pgd"
    config.robust.eps = -1.0
    config.batch_sizes = [100]
    with pytest.raises(ValueError) as err:
        table8_exp.run_table8(config, workdir)
    msg = str(err.value)
    assert "unknown attack" in msg and "eps must be" in msg and "not divisible" in msg, msg

    config = table8.get_config("smoke")
    config.data_dir = str(tmp_path / "nothing_here")
    with pytest.raises(Exception, match="cifar10"):
        table8_exp.run_table8(config, workdir)
    assert not workdir.exists()


def test_m1_robust_smoke_end_to_end_and_resume(data_dir, tmp_path, monkeypatch):
    config = m1_robust.get_config("smoke")
    config.data_dir = str(data_dir)
    config.robust.attacks = ["fgsm", "l2_hess"]  # one first- and one second-order attack
    workdir = tmp_path / "m1"
    results = robust_exp.run_robust(config, workdir)
    saved = json.loads((workdir / "results.json").read_text())
    assert set(saved["models"]) == {"original", "fgsm", "l2_hess"}
    for name, r in saved["models"].items():
        assert 0 <= r["test_accuracy"] <= 1 and set(r["adversarial"]) == {"fgsm", "l2_hess"}
        assert r["mean_adversarial"] == pytest.approx(sum(r["adversarial"].values()) / 2)
        full = r["hessian"]["full"]
        assert len(full["eigenvalues"]) == config.hessian.k and full["grad_norm"] > 0
        (one,) = r["hessian"]["subsampled"]["1"]
        assert one["grad_norm"] > 0 and len(one["bottom_eigenvalues"]) == 1
        assert min(one["bottom_eigenvalues"]) <= max(one["eigenvalues"])
        if name != "original":
            it = r["interpolation"]
            assert len(it["train_loss"]) == config.interpolation.num_points
            # α = 0 is the original model, α = 1 this robust model.
            orig = saved["models"]["original"]
            assert it["alpha"][0] == config.interpolation.alpha_min
            assert r["status"] == "max_epochs" and r["epochs"] == config.robust.num_epochs
            assert orig["hessian"]["full"]["eigenvalues"] != full["eigenvalues"]
    assert set(saved["summary"]) == {"fgsm", "l2_hess"}
    assert results["summary"] == saved["summary"]
    table = (workdir / "table.md").read_text()
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    assert rows[:4] == ["Training", "Original", "FGSM", "HESS"]
    assert "Mean" in table and "λ_max^θ" in table and "b_H = 1" in table
    for png in ("spectra.png", "interpolation.png"):
        assert (workdir / "figures" / png).stat().st_size > 1000

    def boom(*args, **kwargs):
        raise AssertionError("a finished model was redone")

    monkeypatch.setattr(robust_exp, "train_model", boom)
    monkeypatch.setattr(robust_exp, "analyze_model", boom)
    again = robust_exp.run_robust(config, workdir)
    assert again["models"] == saved["models"]

    other = m1_robust.get_config("smoke")
    other.data_dir, other.robust.attacks = str(data_dir), ["fgsm", "l2_hess"]
    other.robust.eps_linf = 0.3
    with pytest.raises(ValueError, match="another config"):
        robust_exp.run_robust(other, workdir)


def test_c3_robust_smoke_end_to_end(data_dir, tmp_path):
    config = c3_robust.get_config("smoke")
    config.data_dir = str(data_dir)
    config.robust.attacks = ["fgsm"]
    config.train_limit, config.test_limit = 128, 64
    config.evaluation.num_samples = 16
    config.hessian.num_samples = 32
    config.hessian.subsample_sizes = []
    config.interpolation.num_samples = 32
    results = robust_exp.run_robust(config, tmp_path / "c3")
    assert set(results["models"]) == {"original", "fgsm"}
    assert "| FGSM |" in (tmp_path / "c3" / "table.md").read_text()


def test_table8_smoke_end_to_end_and_resume(data_dir, tmp_path, monkeypatch):
    config = table8.get_config("smoke")
    config.data_dir = str(data_dir)
    config.batch_sizes = [64]
    config.train_limit, config.test_limit = 128, 64
    config.fb.warmup_epochs = 0  # FB at its peak lr from the first update
    workdir = tmp_path / "t8"
    results = table8_exp.run_table8(config, workdir)
    saved = json.loads((workdir / "results.json").read_text())
    assert set(saved["runs"]) == {"baseline_bs64", "fb_bs64", "robust_bs64"}
    for r in saved["runs"].values():
        assert r["status"] in ("max_epochs", "diverged") and r["steps"] == 128 // 64
        assert 0 <= r["test_accuracy"] <= 1 and r["memory"]["peak_rss_mb"] > 0
    assert saved["runs"]["fb_bs64"]["lr_last"] == pytest.approx(0.02 * 64 / 128)
    assert saved["runs"]["baseline_bs64"]["lr_last"] == pytest.approx(0.02)
    probe = saved["memory"]["probe_32"]
    assert probe["peak_rss_mb"] >= probe["rss_before_mb"] > 0
    assert results["runs"] == saved["runs"]
    table = (workdir / "table.md").read_text()
    assert "| 64 |" in table and "Robust Acc" in table and "Peak resident memory" in table
    assert (workdir / "figures" / "table8.png").stat().st_size > 1000

    monkeypatch.setattr(table8_exp, "train_run", lambda *a, **k: pytest.fail("redone"))
    again = table8_exp.run_table8(config, workdir)
    assert again["runs"] == saved["runs"]


def test_table8_diverged_runs_are_shown_as_diverged(tmp_path):
    config = table8.get_config("smoke")
    results = {
        "runs": {
            "baseline_bs64": {"status": "max_epochs", "test_accuracy": 0.5, "steps": 4},
            "fb_bs64": {"status": "diverged", "test_accuracy": 0.1, "steps": 4},
        }
    }
    config.batch_sizes = [64]
    table8_exp.write_table(config, results, tmp_path / "t.md")
    row = [line for line in (tmp_path / "t.md").read_text().splitlines() if "| 64 |" in line][0]
    assert "0.5000" in row and "diverged (0.1000)" in row and "–" in row


@pytest.mark.parametrize("script", ["batch_sweep", "adversarial_training", "large_batch_robust"])
def test_experiment_scripts_run_as_the_readme_calls_them(script, tmp_path):
    """`python experiments/<script>.py` (not `-m`) from any directory finds `experiments.*`."""
    import pathlib
    import subprocess
    import sys

    path = pathlib.Path(__file__).resolve().parents[1] / "experiments" / f"{script}.py"
    out = subprocess.run(
        [sys.executable, str(path), "--help"], cwd=tmp_path, capture_output=True, text=True
    )
    # absl exits 1 after --help; a script that cannot import `experiments` prints no usage.
    assert "ModuleNotFoundError" not in out.stderr, out.stderr[-2000:]
    assert "--config" in out.stdout and "--workdir" in out.stdout
