"""The notebooks in notebooks/: each jupytext source (``NN_name.py``, percent format) matches its
committed ``NN_name.ipynb`` (outputs stripped); every notebook has the same Colab set-up cell, whose
install decision (``install_command``, extracted from the source with ``ast``) is tested here
without network; no notebook imports ``experiments`` or clones the repository; and each notebook
runs top to bottom with nbclient at ``HESSJAX_SCALE=smoke``, failing on any cell error.

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
import types

import pytest
from conftest import REPO, shared_data_dir

NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
NEEDS_DATA = {"02_large_batch_sharpness", "03_input_hessian_and_attacks", "04_robust_training"}
CELL_TIMEOUT_S = 600


def test_every_notebook_has_a_source_and_a_notebook():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"
    ipynbs = sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    assert ipynbs == NOTEBOOKS, "every notebooks/NN_*.py needs its .ipynb and vice versa"


REPO_URL_ENV = "HESSJAX_REPO_URL"


def _source(name: str) -> str:
    return (NOTEBOOK_DIR / f"{name}.py").read_text(encoding="utf-8")


def _setup_cell(name: str) -> str:
    """The code cell (percent format) that defines ``install_command``."""
    cells = re.split(r"^# %%.*\n", _source(name), flags=re.MULTILINE)
    (cell,) = [c for c in cells if "def install_command(" in c]
    return cell


def _setup_namespace(name: str, env: dict[str, str]) -> dict:
    """``install_command`` and ``REPO_URL`` of a notebook's set-up cell, taken from its source with
    ``ast`` and executed with ``os.environ`` = ``env`` (nothing else of the cell runs: no import
    check, no pip)."""
    source = _source(name)
    tree = ast.parse(source)
    wanted = [
        node
        for node in tree.body
        if (isinstance(node, ast.FunctionDef) and node.name == "install_command")
        or (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "REPO_URL" for t in node.targets)
        )
    ]
    assert len(wanted) == 2, f"{name}: needs one REPO_URL = ... and one def install_command"
    namespace = {"os": types.SimpleNamespace(environ=env)}
    for node in wanted:
        exec(compile(ast.get_source_segment(source, node), f"{name}.py", "exec"), namespace)
    return namespace


def test_every_notebook_has_the_same_setup_cell():
    cells = {name: _setup_cell(name) for name in NOTEBOOKS}
    first = cells[NOTEBOOKS[0]]
    for name, cell in cells.items():
        assert cell == first, f"{name}'s set-up cell differs from {NOTEBOOKS[0]}'s: copy it"
    assert first.rstrip().endswith("print(jax.devices())")
    assert f'os.environ.get("{REPO_URL_ENV}")' in first
    assert first.count('"pip", "install"') == 1  # one pip install


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_install_command_offline(name):
    url = "https://github.com/someone/hessjax"
    expected = [sys.executable, "-m", "pip", "install", "-q", f"hessjax[notebooks] @ git+{url}"]

    unset = _setup_namespace(name, {})
    install_command, placeholder = unset["install_command"], unset["REPO_URL"]
    # installed: nothing to do, whatever the URL
    assert install_command(placeholder, True) is None
    assert install_command(url, True) is None
    # not installed, HESSJAX_REPO_URL unset (placeholder) or empty: an error naming the variable
    for bad in (placeholder, ""):
        with pytest.raises(RuntimeError, match=REPO_URL_ENV):
            install_command(bad, False)
    assert _setup_namespace(name, {REPO_URL_ENV: ""})["REPO_URL"] == placeholder
    # not installed, URL set: exactly one pip command
    repo_url = _setup_namespace(name, {REPO_URL_ENV: url})["REPO_URL"]
    assert repo_url == url
    assert install_command(repo_url, False) == expected
    assert install_command(f"git+{url}", False) == expected


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
