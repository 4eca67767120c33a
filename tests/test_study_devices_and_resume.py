"""Every study's smoke config, as the README runs it: on 4 fake CPU devices it writes the numbers
of a 1-device run (relative difference <= 1e-4) and records the 4 devices; killed with SIGKILL in
the middle, the same command resumes without redoing a finished run and ends with the
uninterrupted run's results.

Per-layer curvature is off (tests/test_batch_sweep.py and test_robust_experiments.py run it; its
sharded operators are checked in tests/test_gauss_newton.py). The batch sweep (m1.py:smoke) runs
as 2 processes x 2 CPU devices with ``python -m hessjax.launch`` against a 1-process 4-device
reference (the 1-device comparison is the other studies' here, and the library's in
tests/test_multiprocess.py): one process is killed after the first run, the launcher must stop the
other and exit non-zero within 60 s, and the same command resumes and ends with the reference's
numbers; only process 0 logs.
"""

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
    "batch_sweep": ("m1", "c.curvature.enabled = False"),
    "adversarial_training": (
        "m1_robust",
        "c.robust.attacks = ['fgsm']; c.curvature.enabled = False",
    ),
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


def _launched(command: list[str]) -> list[str]:
    """``command`` as 2 processes x 2 CPU devices on this machine."""
    launch = [sys.executable, "-m", "hessjax.launch", "-n", "2", "--devices-per-process", "2"]
    return [*launch, "--", *command]


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _run_killed_after_first_record(command, env, workdir: pathlib.Path, kill) -> dict:
    """Start ``command``; once a run's record is written call ``kill(proc)``; returns the
    finished records' modification times."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not list(workdir.glob("*/record.json")) and proc.poll() is None:
        assert time.time() < deadline, "no run finished in 10 minutes"
        time.sleep(0.2)
    kill(proc)
    finished = {p: p.stat().st_mtime_ns for p in workdir.glob("*/record.json")}
    assert finished, "killed before any run finished"
    return finished


def _kill_one_process(launcher: subprocess.Popen) -> None:
    """SIGKILL the launcher's process 1; the launcher must end, non-zero, within 60 s."""
    workers = _children(launcher.pid)
    assert len(workers) == 2, workers
    environs = {pid: pathlib.Path(f"/proc/{pid}/environ").read_bytes() for pid in workers}
    second = [pid for pid, env in environs.items() if b"HESSJAX_PROCESS_ID=1\0" in env]
    assert len(second) == 1, environs
    os.kill(second[0], signal.SIGKILL)
    tic = time.time()
    code = launcher.wait(timeout=60)
    assert code != 0 and time.time() - tic < 60, code


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
    # The reference: 1 device (batch sweep: 1 process with 4 devices).
    devices = 4 if study == "batch_sweep" else 1
    single = tmp_path / "reference"
    out = subprocess.run(
        _command(study, single),
        env=_env(data_dir, devices),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    reference = json.loads((single / "results.json").read_text())
    assert reference["environment"]["device_count"] == devices

    # 4 devices (batch sweep: 2 processes x 2 devices), killed once the first run's record is
    # written, then resumed with the same command.
    if study == "batch_sweep":
        sharded = tmp_path / "two_processes"
        command, env = _launched(_command(study, sharded)), _env(data_dir, 1)
        kill = _kill_one_process
    else:
        sharded = tmp_path / "four_devices"
        command, env = _command(study, sharded), _env(data_dir, 4)
        kill = lambda proc: (proc.send_signal(signal.SIGKILL), proc.wait())
    finished = _run_killed_after_first_record(command, env, sharded, kill)

    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert f"{len(finished)} already done" in out.stdout, out.stdout[-3000:]
    for path, mtime in finished.items():  # never redone
        assert path.stat().st_mtime_ns == mtime, path
    resumed = json.loads((sharded / "results.json").read_text())
    if study == "batch_sweep":
        assert resumed["environment"]["process_count"] == 2
        assert "[p1] [batch_sweep" not in out.stdout and "[p0] [batch_sweep" in out.stdout
    assert resumed["environment"]["device_count"] == 4
    assert resumed["environment"]["mesh"] == {"data": 4}
    assert set(resumed["runs"]) == set(reference["runs"])
    diffs = _differences(reference["runs"], resumed["runs"])
    diffs += _differences(reference["summary"], resumed["summary"])
    assert not diffs, "\n".join(diffs[:20])
