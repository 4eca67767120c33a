"""Every study's smoke config, as the README runs it: on 4 fake CPU devices it writes the numbers
of a 1-device run (relative difference <= 1e-4) and records the 4 devices; killed with SIGKILL in
the middle, the same command resumes without redoing a finished run and ends with the
uninterrupted run's results."""

import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# Each study's smoke config, trimmed to 2-3 runs (list fields cannot be overridden on the
# command line, so a small config file wraps the smoke config).
STUDIES = {
    "batch_sweep": ("m1", ""),
    "adversarial_training": ("m1_robust", "c.robust.attacks = ['fgsm']"),
    "large_batch_robust": (
        "table8",
        "c.batch_sizes = [64]; c.methods = ['baseline', 'robust']; c.memory_batch_sizes = []",
    ),
}
CONFIG = """
from experiments.configs import {module}


def get_config(arg=None):
    c = {module}.get_config("smoke")
    {changes}
    return c
"""
# Wall-clock and memory measurements, not results.
VOLATILE = {"seconds", "examples_per_s", "memory", "train_seconds"}
RTOL, ATOL = 1e-4, 1e-6


def _command(study: str, workdir: pathlib.Path) -> list[str]:
    module, changes = STUDIES[study]
    config = workdir.parent / f"{study}_config.py"
    config.write_text(CONFIG.format(module=module, changes=changes or "pass"))
    script = REPO / "experiments" / f"{study}.py"
    return [sys.executable, str(script), f"--config={config}", f"--workdir={workdir}"]


def _env(data_dir, devices: int) -> dict:
    env = dict(os.environ, HESSJAX_DATA_DIR=str(data_dir), JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _differences(a, b, path="") -> list[str]:
    """Where two results differ beyond RTOL/ATOL (volatile fields skipped)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        return [d for k in a if k not in VOLATILE for d in _differences(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: lengths {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    if isinstance(a, float) or isinstance(b, float):
        if math.isnan(a) and math.isnan(b):
            return []
        return [] if math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


@pytest.mark.slow
@pytest.mark.parametrize("study", sorted(STUDIES))
def test_four_devices_and_kill_resume_equal_one_device(study, data_dir, tmp_path):
    single = tmp_path / "one_device"
    out = subprocess.run(
        _command(study, single), env=_env(data_dir, 1), capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    reference = json.loads((single / "results.json").read_text())
    assert reference["environment"]["device_count"] == 1

    # 4 devices, killed once the first run's record is written, then resumed.
    sharded = tmp_path / "four_devices"
    proc = subprocess.Popen(
        _command(study, sharded),
        env=_env(data_dir, 4),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    while not list(sharded.glob("*/record.json")) and proc.poll() is None:
        assert time.time() < deadline, "no run finished in 10 minutes"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in sharded.glob("*/record.json")}
    assert finished, "killed before any run finished"

    out = subprocess.run(
        _command(study, sharded), env=_env(data_dir, 4), capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{len(finished)} already done" in out.stdout, out.stdout[-3000:]
    for path, mtime in finished.items():  # never redone
        assert path.stat().st_mtime_ns == mtime, path
    resumed = json.loads((sharded / "results.json").read_text())
    assert resumed["environment"]["device_count"] == 4
    assert resumed["environment"]["mesh"] == {"data": 4}
    assert set(resumed["runs"]) == set(reference["runs"])
    diffs = _differences(reference["runs"], resumed["runs"])
    diffs += _differences(reference["summary"], resumed["summary"])
    assert not diffs, "\n".join(diffs[:20])
