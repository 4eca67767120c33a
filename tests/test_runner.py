"""The experiment runner (experiments/runner.py): one behaviour for every study's entry point."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from experiments import runner

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = {
    "batch_sweep": "m1.py:smoke",
    "adversarial_training": "m1_robust.py:smoke",
    "large_batch_robust": "table8.py:smoke",
}


def _run_script(script: str, *args: str, cwd, env=None) -> subprocess.CompletedProcess:
    config = REPO / "experiments" / "configs" / SCRIPTS[script]
    cmd = [sys.executable, str(REPO / "experiments" / f"{script}.py"), f"--config={config}", *args]
    env = dict(os.environ, **(env or {}))
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
@pytest.mark.slow
def test_entry_points_fail_with_one_message_before_any_work(script, tmp_path):
    """Missing data; an unknown model, a batch not divisible by the micro-batch and a workdir
    holding another config's run: one message, exit status 2, no traceback, nothing written."""
    workdir = tmp_path / "w"
    missing = f"--config.data_dir={tmp_path / 'none'}"  # a None field, overridable
    out = _run_script(script, f"--workdir={workdir}", missing, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "is not a directory" in out.stderr, out.stderr[-3000:]
    assert not workdir.exists()

    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"name": "someone_else", "lr": 1.0}))
    batch = {
        "batch_sweep": "--config.micro_batch_size=30",
        "adversarial_training": "--config.batch_size=96",
        "large_batch_robust": "--config.micro_batch_size=30",
    }[script]
    out = _run_script(script, f"--workdir={workdir}", "--config.model=m9", batch, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    msg = out.stderr
    assert msg.count("error:") == 1, msg
    for part in ("unknown model 'm9'", "not divisible", "holds the run of another config"):
        assert part in msg, msg
    assert sorted(p.name for p in workdir.iterdir()) == ["config.json"]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_experiment_scripts_run_as_the_readme_calls_them(script, tmp_path):
    """`python experiments/<script>.py` (not `-m`) from any directory finds `experiments.*`."""
    path = REPO / "experiments" / f"{script}.py"
    out = subprocess.run(
        [sys.executable, str(path), "--help"], cwd=tmp_path, capture_output=True, text=True
    )
    # absl exits 1 after --help; a script that cannot import `experiments` prints no usage.
    assert "ModuleNotFoundError" not in out.stderr, out.stderr[-2000:]
    assert "--config" in out.stdout and "--workdir" in out.stdout


def test_a_bad_multi_process_start_is_one_message_before_any_work(tmp_path):
    workdir = tmp_path / "w"
    flags = ("--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=1")
    env = {"HESSJAX_DATA_DIR": str(tmp_path / "unused")}
    out = _run_script("batch_sweep", f"--workdir={workdir}", *flags[:2], cwd=tmp_path, env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "needs num_processes and process_id" in out.stderr
    assert not workdir.exists()


def test_no_study_imports_another_and_the_runner_imports_none():
    studies = [p.stem for p in (REPO / "experiments").glob("*.py") if "STUDY = " in p.read_text()]
    assert sorted(studies) == sorted(SCRIPTS)
    for path in (REPO / "experiments").rglob("*.py"):
        text = path.read_text()
        for study in studies:
            if path.stem != study:
                assert f"import {study}" not in text and f"{study} import" not in text, path


def test_unreadable_results_are_rebuilt_from_the_per_run_records(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "record.json").write_text(json.dumps({"x": 1}))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "record.json").write_text("{trunc")
    (tmp_path / "results.json").write_text('{"runs": {"a": {"x": 1}, "b"')
    lines = []
    results = runner.load_results(tmp_path, lines.append)
    assert results == {"runs": {"a": {"x": 1}}}
    assert str(tmp_path / "results.json") in lines[0] and "rebuilding" in lines[0]
    assert "will be redone" in lines[1]
    # A record written just before a kill, missing from a readable results.json, is kept.
    (tmp_path / "results.json").write_text(json.dumps({"runs": {}, "summary": {}}))
    assert runner.load_results(tmp_path, lines.append)["runs"] == {"a": {"x": 1}}


def test_progress_logs_elapsed_time_and_etas(capsys):
    progress = runner.Progress("study", 3, {"analysis": 12.0})
    timings = {}
    with progress.phase("analysis", timings):
        pass
    progress.run_seconds.append(60.0)
    assert progress.eta() == "; study ETA 0:02:00"
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("[study 0:00:00]") and "(last time 12s)" in out[0]
    assert "analysis done in" in out[1] and set(timings) == {"analysis"}


MESH_SCRIPT = """
from experiments import batch_sweep, runner
from experiments.configs import m1

config = m1.get_config("smoke")
mesh = runner.make_mesh(config)
assert mesh is not None and mesh.size == 4, mesh
runner.validate(batch_sweep.STUDY, config)  # micro-batches of 32 split over 4 devices
config.micro_batch_size = 30
config.batch_sizes = [30, 90]
config.hessian.batch_size = 30
try:
    runner.validate(batch_sweep.STUDY, config)
except runner.ConfigError as e:
    msg = str(e)
    assert "cannot be split over 4 devices" in msg and "Hessian batches: 30" in msg, msg
else:
    raise AssertionError("no error")
config.data_parallel = False
runner.validate(batch_sweep.STUDY, config)
assert runner.make_mesh(config) is None
print("MESH_OK")
"""


@pytest.mark.slow
def test_runner_uses_every_device_and_checks_divisibility():
    from fake_devices import run_on_fake_devices

    out = run_on_fake_devices(MESH_SCRIPT, 4, timeout=120)
    assert "MESH_OK" in out and out.rstrip().endswith("DEVICES 4"), out[-2000:]
