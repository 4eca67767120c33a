"""Test-wide settings: float64 for comparisons with dense truth, data directory discovery."""

import os
import pathlib

import jax
import pytest

jax.config.update("jax_enable_x64", True)

REPO = pathlib.Path(__file__).resolve().parents[1]
_DEFAULT_DATA = REPO.parent / "shared" / "data"


def shared_data_dir() -> pathlib.Path | None:
    """The real data sets: $HESSJAX_DATA_DIR, else ../shared/data beside the repo, else None."""
    env = os.environ.get("HESSJAX_DATA_DIR")
    path = pathlib.Path(env) if env else _DEFAULT_DATA
    return path if path.is_dir() else None


@pytest.fixture
def data_dir() -> pathlib.Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("real data not found: set HESSJAX_DATA_DIR to the folder of MNIST/CIFAR files")
    return path


@pytest.fixture(params=["host", "lax"])
def loop_mode(request, monkeypatch):
    """Run a solver test with its loops in Python (the CPU default) and in one XLA program."""
    monkeypatch.setenv("HESSJAX_HOST_LOOPS", "1" if request.param == "host" else "0")
    return request.param
