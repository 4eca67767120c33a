"""Run a test script in a subprocess that sees N fake CPU devices (XLA must be told at start-up)."""

import os
import subprocess
import sys


def run_on_fake_devices(script: str, num_devices: int, timeout: int = 300) -> str:
    """Run ``script`` with ``num_devices`` host devices; returns its stdout, which ends with
    ``DEVICES <jax.device_count()>`` (the script itself prints MESH_OK on success)."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}")
    tests = os.path.dirname(os.path.abspath(__file__))  # tests/ and the repository root
    paths = [tests, os.path.dirname(tests), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    out = subprocess.run(
        [sys.executable, "-c", script + '\nimport jax\nprint("DEVICES", jax.device_count())\n'],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout
