"""The robust-training study (Tables 3, 4) and Table 8 through the runner, on real MNIST /
CIFAR-10, plus their config validation."""

import json

import pytest

from experiments import adversarial_training, large_batch_robust, runner
from experiments.configs import c3_robust, m1_robust, table8

ROBUST, TABLE8 = adversarial_training.STUDY, large_batch_robust.STUDY


def test_configs_build_for_every_scale():
    for module, study in ((m1_robust, ROBUST), (c3_robust, ROBUST), (table8, TABLE8)):
        for scale in ("paper", "cpu", "smoke"):
            runner.validate(study, module.get_config(scale))
        with pytest.raises(ValueError, match="unknown scale"):
            module.get_config("huge")
    paper = m1_robust.get_config()
    assert paper.robust.attacks == ["fgsm", "fgsm10", "l2_grad", "fhsm", "l2_hess"]
    assert paper.original.num_epochs == 100 and paper.robust.num_epochs == 5
    assert paper.robust.fraction == 1.0 and paper.hessian.subsample_sizes == [1, 128]
    paper8, cpu8 = table8.get_config("paper"), table8.get_config("cpu")
    assert paper8.batch_sizes == [8000, 10000, 25000, 50000] and paper8.train_limit is None
    for c, n in ((paper8, 50000), (cpu8, cpu8.train_limit)):
        assert all(b % c.micro_batch_size == 0 for b in c.batch_sizes)
        # the cpu scale keeps the paper's batch sizes as fractions of the training set and FB's
        # peak-lr multipliers B / base_batch_size
        assert [b / n for b in c.batch_sizes] == [0.16, 0.2, 0.5, 1.0]
        assert [b / c.fb.base_batch_size for b in c.batch_sizes] == pytest.approx(
            [62.5, 78.125, 195.3125, 390.625]
        )


def test_bad_configs_fail_with_one_message_before_any_work(tmp_path):
    config = m1_robust.get_config("smoke")
    config.robust.attacks = ["fgsm", "pgd"]
    config.robust.eps_linf = -0.1
    config.robust.fraction = 1.5
    config.original.lr = -0.01
    config.batch_size = 96  # micro-batch 64 does not divide it
    workdir = tmp_path / "w"
    with pytest.raises(runner.ConfigError) as err:
        runner.run(ROBUST, config, workdir)
    msg = str(err.value)
    for part in ("unknown attack 'pgd'", "eps_linf", "fraction must be in [0, 1]", "divisible"):
        assert part in msg, msg
    assert "original.lr must be a finite number > 0" in msg
    assert not workdir.exists()

    config = table8.get_config("smoke")
    config.robust.attack = "pgd"
    config.robust.eps = -1.0
    config.batch_sizes = [100]
    with pytest.raises(runner.ConfigError) as err:
        runner.run(TABLE8, config, workdir)
    msg = str(err.value)
    assert "unknown attack" in msg and "eps must be" in msg and "not divisible" in msg, msg

    config = table8.get_config("smoke")
    config.data_dir = str(tmp_path / "nothing_here")
    with pytest.raises(Exception, match="cifar10"):
        runner.run(TABLE8, config, workdir)
    assert not workdir.exists()


@pytest.mark.slow
def test_m1_robust_smoke_end_to_end_and_resume(data_dir, tmp_path, forbid_redo):
    config = m1_robust.get_config("smoke")
    config.data_dir = str(data_dir)
    config.robust.attacks = ["fgsm", "l2_hess"]  # one first- and one second-order attack
    workdir = tmp_path / "m1"
    results = runner.run(ROBUST, config, workdir)
    saved = json.loads((workdir / "results.json").read_text())
    assert set(saved["runs"]) == {"original", "fgsm", "l2_hess"}
    for name, r in saved["runs"].items():
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
            orig = saved["runs"]["original"]
            assert it["alpha"][0] == config.interpolation.alpha_min
            assert r["status"] == "max_epochs" and r["epochs"] == config.robust.num_epochs
            assert orig["hessian"]["full"]["eigenvalues"] != full["eigenvalues"]
    assert set(saved["summary"]) == {"fgsm", "l2_hess"}
    assert results["summary"] == saved["summary"]
    table = (workdir / "table.md").read_text()
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    assert rows[:4] == ["Training", "Original", "FGSM", "HESS"]
    assert "Mean" in table and "λ_max^θ" in table and "b_H = 1" in table
    for png in ("spectra.png", "interpolation.png", "fig_layers.png"):
        assert (workdir / "figures" / png).stat().st_size > 1000
    # Beyond the paper: every model's layer blocks (traces summing to tr H) and GGN λ_max, on
    # the same samples.
    for r in saved["runs"].values():
        curv = r["curvature"]
        assert [x["layer"] for x in curv["layers"]] == ["Conv_0", "Conv_1", "Dense_0", "Dense_1"]
        assert curv["trace"] == pytest.approx(sum(x["trace"] for x in curv["layers"]))
        assert curv["ggn_lambda_max"] > 0 and curv["samples"] == config.hessian.num_samples
    curvature_rows = table.split("## Per-layer curvature")[1].splitlines()
    assert [row.split("|")[1].strip() for row in curvature_rows if row.startswith("| ")] == [
        "Training",
        "Original",
        "FGSM",
        "HESS",
    ]

    forbid_redo(ROBUST)
    again = runner.run(ROBUST, config, workdir)
    assert again["runs"] == saved["runs"]

    other = m1_robust.get_config("smoke")
    other.data_dir, other.robust.attacks = str(data_dir), ["fgsm", "l2_hess"]
    other.robust.eps_linf = 0.3
    with pytest.raises(runner.ConfigError, match="another config"):
        runner.run(ROBUST, other, workdir)


@pytest.mark.slow
def test_c3_robust_smoke_end_to_end(data_dir, tmp_path):
    config = c3_robust.get_config("smoke")
    config.data_dir = str(data_dir)
    config.robust.attacks = ["fgsm"]
    config.train_limit, config.test_limit = 128, 64
    config.evaluation.num_samples = 16
    config.hessian.num_samples = 32
    config.hessian.subsample_sizes = []
    config.interpolation.num_samples = 32
    config.curvature.enabled = False  # tested on M1 above
    results = runner.run(ROBUST, config, tmp_path / "c3")
    assert set(results["runs"]) == {"original", "fgsm"}
    assert "| FGSM |" in (tmp_path / "c3" / "table.md").read_text()


@pytest.mark.slow
def test_table8_smoke_end_to_end_and_resume(data_dir, tmp_path, forbid_redo):
    config = table8.get_config("smoke")
    config.data_dir = str(data_dir)
    config.batch_sizes = [64]
    config.train_limit, config.test_limit = 128, 64
    config.fb.warmup_epochs = 0  # FB at its peak lr from the first update
    workdir = tmp_path / "t8"
    results = runner.run(TABLE8, config, workdir)
    saved = json.loads((workdir / "results.json").read_text())
    assert set(saved["runs"]) == {"probe_bs32", "baseline_bs64", "fb_bs64", "robust_bs64"}
    probe = saved["runs"].pop("probe_bs32")["memory"]
    assert probe["peak_rss_mb"] >= probe["rss_before_mb"] > 0
    for r in saved["runs"].values():
        assert r["status"] in ("max_epochs", "diverged") and r["steps"] == 128 // 64
        assert 0 <= r["test_accuracy"] <= 1 and r["memory"]["peak_rss_mb"] > 0
    assert saved["runs"]["fb_bs64"]["lr_last"] == pytest.approx(0.02 * 64 / 128)
    assert saved["runs"]["baseline_bs64"]["lr_last"] == pytest.approx(0.02)
    summary = saved["summary"]["per_batch_size"]["64"]
    assert summary["test_accuracy"]["robust"] == saved["runs"]["robust_bs64"]["test_accuracy"]
    table = (workdir / "table.md").read_text()
    assert "| 64 |" in table and "Robust Acc" in table and "Peak resident memory" in table
    assert (workdir / "figures" / "table8.png").stat().st_size > 1000

    forbid_redo(TABLE8)
    again = runner.run(TABLE8, config, workdir)
    assert again["runs"] == results["runs"]


def test_table8_diverged_runs_are_shown_as_diverged():
    config = table8.get_config("smoke")
    results = {
        "runs": {
            "baseline_bs64": {"status": "max_epochs", "test_accuracy": 0.5, "steps": 4},
            "fb_bs64": {"status": "diverged", "test_accuracy": 0.1, "steps": 4},
        }
    }
    config.batch_sizes = [64]
    table = TABLE8.table(config, results)
    row = [line for line in table.splitlines() if "| 64 |" in line][0]
    assert "0.5000" in row and "diverged (0.1000)" in row and "–" in row
    # the runner records a diverged run without analysing it: no accuracy, still "diverged"
    del results["runs"]["fb_bs64"]["test_accuracy"]
    row = [line for line in TABLE8.table(config, results).splitlines() if "| 64 |" in line][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["64", "0.5000", "diverged", "–", "4"]


def test_attack_step_rule_and_cg_tolerance_reach_the_adversaries():
    config = m1_robust.get_config("cpu")
    ec = config.evaluation
    # defaults: FGSM-10 at ε/steps (no step_size option), CG stopped by the cap (tol 1e-6)
    assert dict(adversarial_training.adversary_for(config, "fgsm10", ec).options) == {"steps": 10}
    assert dict(adversarial_training.adversary_for(config, "fhsm", ec).options) == {
        "cg_iters": 20,
        "cg_tol": 1e-6,
    }
    ec.ifgsm_step_factor, ec.cg_tol, ec.eps_linf = 0.25, 0.01, 0.4
    a = adversarial_training.adversary_for(config, "fgsm10", ec)
    assert dict(a.options) == {"steps": 10, "step_size": pytest.approx(0.1)}
    assert dict(adversarial_training.adversary_for(config, "l2_hess", ec).options)["cg_tol"] == 0.01
    runner.validate(ROBUST, config)
    ec.ifgsm_step_factor, config.robust.cg_tol = -1.0, -0.5
    with pytest.raises(runner.ConfigError) as err:
        runner.validate(ROBUST, config)
    assert "evaluation.ifgsm_step_factor" in str(err.value)
    assert "robust.cg_tol must be >= 0" in str(err.value)
