"""The notebooks in notebooks/: each jupytext source (``NN_name.py``, percent format) matches its
committed ``NN_name.ipynb`` (outputs stripped), and each notebook runs top to bottom with nbclient
at ``HESSJAX_SCALE=smoke``, failing on any cell error.

The kernel is this interpreter (``sys.executable``), whatever kernelspecs the machine has
installed: a kernelspec named ``python3`` pointing at ``sys.executable`` is written to a temporary
``JUPYTER_PATH`` folder, which Jupyter searches first, and the test checks ``sys.executable`` in
the kernel. The kernel runs in a temporary folder (notebooks write their run folders there) with
the repository on ``PYTHONPATH`` (for ``experiments``) and ``HESSJAX_DATA_DIR`` set to the shared
data; notebooks that need real MNIST are skipped when there is none.
"""

import json
import os
import pathlib
import sys
import time

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
