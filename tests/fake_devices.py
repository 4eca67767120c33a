"""Run a test script in a subprocess that sees N fake CPU devices (XLA must be told at start-up)."""

import os
import subprocess
import sys


def run_on_fake_devices(script: str, num_devices: int, timeout: int = 300) -> None:
    """Run ``script`` with ``num_devices`` host devices; it must print MESH_OK on success."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0 and "MESH_OK" in out.stdout, out.stderr[-3000:]
