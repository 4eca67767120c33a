"""The notebooks in notebooks/: each jupytext source (``NN_name.py``, percent format) matches its
committed ``NN_name.ipynb`` (outputs stripped); every notebook starts with the same short Colab
install cell, executed here without network (``find_spec``, the environment and ``subprocess``
faked): nothing where hessjax is importable, an error naming ``HESSJAX_REPO_URL`` while it is unset
or the placeholder, else exactly one pip command; no notebook imports ``experiments`` or clones
the repository; and each notebook runs top to bottom with nbclient at ``HESSJAX_SCALE=smoke``,
failing on any cell error.

The kernel is this interpreter (``sys.executable``), whatever kernelspecs the machine has
installed: a kernelspec named ``python3`` pointing at ``sys.executable`` is written to a temporary
``JUPYTER_PATH`` folder, which Jupyter searches first, and the test checks ``sys.executable`` in
the kernel. The kernel runs in a temporary folder with the repository on ``PYTHONPATH`` (so that it
imports this checkout's hessjax) and ``HESSJAX_DATA_DIR`` set to the shared data; notebooks that
need real MNIST are skipped when there is none.
"""

import ast
import json
import os
import pathlib
import re
import sys
import time

import pytest
from conftest import REPO, shared_data_dir

NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
NEEDS_DATA = {
    "02_large_batch_sharpness",
    "03_input_hessian_and_attacks",
    "04_robust_training",
    "05_curvature_toolkit",
}
CELL_TIMEOUT_S = 600


def test_every_notebook_has_a_source_and_a_notebook():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"
    ipynbs = sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    assert ipynbs == NOTEBOOKS, "every notebooks/NN_*.py needs its .ipynb and vice versa"


REPO_URL_ENV = "HESSJAX_REPO_URL"
URL = "https://github.com/someone/hessjax"
PIP = [sys.executable, "-m", "pip", "install", "-q", f"hessjax[notebooks] @ git+{URL}"]


def _source(name: str) -> str:
    return (NOTEBOOK_DIR / f"{name}.py").read_text(encoding="utf-8")


def _code_cells(name: str) -> list[str]:
    """The code cells of a notebook's jupytext source (percent format), in order."""
    cells = re.split(r"^(# %%.*)\n", _source(name), flags=re.MULTILINE)[1:]
    return [body for head, body in zip(cells[::2], cells[1::2]) if "[markdown]" not in head]


def _setup_cell(name: str) -> str:
    """The install cell: a notebook's first code cell."""
    return _code_cells(name)[0]


def test_every_notebook_has_the_same_short_install_cell():
    cells = {name: _setup_cell(name) for name in NOTEBOOKS}
    first = cells[NOTEBOOKS[0]]
    for name, cell in cells.items():
        assert cell == first, f"{name}'s install cell differs from {NOTEBOOKS[0]}'s: copy it"
    code = [
        line
        for line in first.splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "import ", "from "))
    ]
    assert len(code) <= 4, f"keep the install cell short (4 lines besides imports): {code}"
    assert f'"{REPO_URL_ENV}"' in first


@pytest.fixture
def run_install_cell(monkeypatch):
    """``run(installed, url)``: executes the install cell with ``$HESSJAX_REPO_URL`` = ``url``
    (None: unset) and, unless ``installed``, hessjax neither found by ``importlib.util.find_spec``
    nor importable; every way of starting a process is recorded in ``run.calls`` instead of run.
    Returns ``run.calls``."""
    import importlib.util
    import subprocess

    real_find_spec = importlib.util.find_spec
    calls = []

    def run(installed: bool, url: str | None) -> list:
        def find_spec(name, *args):
            if name == "hessjax" and not installed:
                return None
            return real_find_spec(name, *args)

        record = lambda *args, **kwargs: calls.append(args[0] if args else kwargs) or 0
        monkeypatch.setattr(importlib.util, "find_spec", find_spec)
        if not installed:
            monkeypatch.setitem(sys.modules, "hessjax", None)  # `import hessjax` fails
        for fn in ("run", "call", "check_call", "check_output", "Popen"):
            monkeypatch.setattr(subprocess, fn, record)
        monkeypatch.setattr(os, "system", record)
        if url is None:
            monkeypatch.delenv(REPO_URL_ENV, raising=False)
        else:
            monkeypatch.setenv(REPO_URL_ENV, url)
        cell = _setup_cell(NOTEBOOKS[0])
        exec(compile(cell, f"{NOTEBOOKS[0]}.py (install cell)", "exec"), {})
        return calls

    run.calls = calls
    return run


@pytest.mark.parametrize("url", [None, URL])
def test_install_cell_does_nothing_where_hessjax_is_importable(run_install_cell, url):
    assert run_install_cell(installed=True, url=url) == []


@pytest.mark.parametrize("url", [None, "", "https://github.com/<owner>/hessjax"])
def test_install_cell_without_a_repo_url_stops_naming_the_variable(run_install_cell, url):
    with pytest.raises(Exception, match=REPO_URL_ENV):
        run_install_cell(installed=False, url=url)
    assert run_install_cell.calls == []


@pytest.mark.parametrize("url", [URL, f"git+{URL}"])
def test_install_cell_runs_one_pip_install(run_install_cell, url):
    assert run_install_cell(installed=False, url=url) == [PIP]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_uses_the_installed_library_only(name):
    tree = ast.parse(_source(name))
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            modules.add(node.module or "")
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            modules.update(a.value for a in node.args if isinstance(a, ast.Constant))
    assert not {m for m in modules if m.split(".")[0] == "experiments"}, (
        f"{name} imports experiments/, which is not installed by pip; use hessjax only"
    )
    code = "\n".join(
        line for line in _source(name).splitlines() if not line.lstrip().startswith("#")
    )
    assert "clone" not in code, f"{name} clones the repository; install with pip instead"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_ipynb_in_sync_with_py_and_stripped(name):
    jupytext = pytest.importorskip(
        "jupytext", reason="jupytext not installed (pip install -e .[test])"
    )
    source = jupytext.read(NOTEBOOK_DIR / f"{name}.py")
    committed = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text(encoding="utf-8"))
    cells = lambda nb_cells: [
        (c["cell_type"], "".join(c["source"]) if isinstance(c["source"], list) else c["source"])
        for c in nb_cells
    ]
    fix = f"regenerate it: jupytext --to ipynb notebooks/{name}.py"
    assert cells(committed["cells"]) == cells(source.cells), f"{name}.ipynb is out of date; {fix}"
    for cell in committed["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, (
                f"{name}.ipynb holds outputs; {fix}"
            )


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    """A JUPYTER_PATH folder whose ``python3`` kernelspec runs this interpreter."""
    pytest.importorskip("ipykernel", reason="ipykernel not installed (pip install -e .[test])")
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "Python 3 (hessjax tests)", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_at_smoke_scale(name, kernel_dir, tmp_path, monkeypatch):
    nbclient = pytest.importorskip(
        "nbclient", reason="nbclient not installed (pip install -e .[test])"
    )
    nbformat = pytest.importorskip(
        "nbformat", reason="nbformat not installed (pip install -e .[test])"
    )
    data = shared_data_dir()
    if name in NEEDS_DATA and data is None:
        pytest.skip("real data not found: set HESSJAX_DATA_DIR to the folder of MNIST/CIFAR files")

    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    monkeypatch.setenv("HESSJAX_SCALE", "smoke")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    if data is not None:
        monkeypatch.setenv("HESSJAX_DATA_DIR", str(data))

    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    tic = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    print(f"{name}: executed at smoke scale in {time.perf_counter() - tic:.1f} s")

    (executable,) = [
        o["text"].strip() for o in nb.cells[-1]["outputs"] if o.get("name") == "stdout"
    ]
    assert pathlib.Path(executable).resolve() == pathlib.Path(sys.executable).resolve()
