"""Test-wide settings: float64 for comparisons with dense truth, data directory discovery."""

import gc
import os
import pathlib

import jax
import pytest

jax.config.update("jax_enable_x64", True)

REPO = pathlib.Path(__file__).resolve().parents[1]
_DEFAULT_DATA = REPO.parent / "shared" / "data"

# Every test that needs the real data sets skips with a reason starting with this text (the
# summary below counts them).
DATA_SKIP_PREFIX = "real data not found"
FETCH_HINT = (
    "python -m hessjax.data.fetch mnist cifar10 cifar100 --dir DIR, then "
    "HESSJAX_DATA_DIR=DIR python -m pytest ..."
)


def shared_data_dir() -> pathlib.Path | None:
    """The real data sets: $HESSJAX_DATA_DIR, else ../shared/data beside the repo, else None."""
    env = os.environ.get("HESSJAX_DATA_DIR")
    path = pathlib.Path(env) if env else _DEFAULT_DATA
    return path if path.is_dir() else None


@pytest.fixture
def data_dir() -> pathlib.Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip(f"{DATA_SKIP_PREFIX}: set HESSJAX_DATA_DIR (see the summary at the end)")
    return path


# The lax form (one compiled program: the GPU/TPU default) is in the full suite; the quick
# tier (`-m "not slow"`) runs the CPU default, host loops.
@pytest.fixture(params=["host", pytest.param("lax", marks=pytest.mark.slow)])
def loop_mode(request, monkeypatch):
    """Run a solver test with its loops in Python (the CPU default) and in one XLA program."""
    monkeypatch.setenv("HESSJAX_HOST_LOOPS", "1" if request.param == "host" else "0")
    return request.param


def pytest_report_header(config):
    path = shared_data_dir()
    if path is not None:
        return f"hessjax real data: {path}"
    env = os.environ.get("HESSJAX_DATA_DIR")
    where = (
        f"HESSJAX_DATA_DIR={env} is not a folder"
        if env
        else f"no $HESSJAX_DATA_DIR, no {_DEFAULT_DATA}"
    )
    return f"hessjax real data: not found ({where}); tests that need MNIST/CIFAR will be skipped"


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr or "")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say how many tests were skipped for lack of the real data, and how to get it."""
    skipped = terminalreporter.stats.get("skipped", [])
    n = sum(_skip_reason(r).startswith(DATA_SKIP_PREFIX) for r in skipped)
    if not n:
        return
    terminalreporter.section("hessjax: real data missing", sep="-", yellow=True, bold=True)
    terminalreporter.write_line(
        f"{n} test(s) were skipped because the real MNIST/CIFAR files were not found "
        "($HESSJAX_DATA_DIR, else ../shared/data beside the repository)."
    )
    terminalreporter.write_line(f"To run them: {FETCH_HINT}")


@pytest.fixture
def forbid_redo(monkeypatch):
    """``forbid_redo(study)``: any call of ``study.train`` / ``study.analyze`` fails the test
    (a finished run must not be redone); undone with ``monkeypatch.undo()``."""

    def forbid(study):
        def boom(*args, **kwargs):
            raise AssertionError(f"a finished run of {study.name} was redone")

        monkeypatch.setattr(study, "train", boom)
        monkeypatch.setattr(study, "analyze", boom)

    return forbid


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs and traces after each test module.

    Every compiled executable maps its code into memory, and jit caches keep them alive: a
    pytest-xdist worker running ~150 tests reached Linux's limit of 65,530 memory maps (and
    ~8 GB) and segfaulted inside XLA's compiler (docs/benchmarks.md, "Test suite"). Modules share
    almost no compiled functions, so clearing between modules costs little recompilation."""
    yield
    jax.clear_caches()
    gc.collect()
