"""Execute every notebook under ``notebooks/`` top to bottom, in small mode (slow tier).

Each notebook reads ``AMORTIZED_PPL_NOTEBOOK_SMALL=1`` and shrinks training, NUTS and the number
of data sets, and checks with ``assert`` cells the claims its text makes at those sizes, so a
notebook whose words no longer match its numbers fails here. What is left is nearly all
compilation (tracing, then XLA compiling the training step, the guide's sampler and NUTS): in
small mode each compiled function runs for well under a second. The kernel inherits the
fast-compile ``XLA_FLAGS`` that ``conftest.py`` sets (unoptimized code is slower to run but much
faster to build). Measured with those flags on a 2-core machine shared with other jobs:
quickstart 40 s, trust 58 s, iterative about 45 s. The kernel is a child process and inherits
this process's environment: small mode, those flags, the ``Agg`` matplotlib backend and the CPU
JAX platform that ``conftest.py`` selects.

The kernel must run with this interpreter (``sys.executable``), not whatever ``python3`` kernel a
user or a system directory happens to register, or the notebook would import another environment's
``amortized_ppl``. So a ``python3`` kernelspec pointing at ``sys.executable`` is written into a
temporary directory placed first on ``JUPYTER_PATH``.
"""

import os
import pathlib
import sys

import ipykernel.kernelspec as ipykernel_kernelspec
import nbclient
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL_NAME = "python3"
CELL_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory):
    """A data directory holding a ``python3`` kernelspec that runs ``sys.executable``."""
    prefix = tmp_path_factory.mktemp("jupyter")
    # install() writes PREFIX/share/jupyter/kernels/<name>/kernel.json with argv[0] =
    # sys.executable.
    ipykernel_kernelspec.install(prefix=str(prefix), kernel_name=KERNEL_NAME)
    return prefix / "share" / "jupyter"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, jupyter_path, monkeypatch):
    _prepend_env(monkeypatch, "JUPYTER_PATH", jupyter_path)
    # The kernel starts in notebooks/: let it import this checkout even when not installed.
    _prepend_env(monkeypatch, "PYTHONPATH", REPO_ROOT)
    monkeypatch.setenv("AMORTIZED_PPL_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # quiet debugpy's warning

    spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    assert spec.argv[0] == sys.executable, f"kernel {KERNEL_NAME!r} runs {spec.argv[0]}"

    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()  # raises CellExecutionError naming the failing cell


def _prepend_env(monkeypatch, name, value, sep=os.pathsep):
    existing = os.environ.get(name)
    parts = [str(value)] if str(value) else []
    monkeypatch.setenv(name, sep.join(parts + ([existing] if existing else [])))


def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks found under {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebooks_are_stored_with_their_outputs(path):
    # A reader on a code host sees the figures: notebooks/store_outputs.py runs each notebook in
    # small mode (as test_notebook_runs does) and stores it with its outputs, in cell order.
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.strip()]
    counts = [cell.execution_count for cell in code]
    assert all(isinstance(n, int) for n in counts), f"{path.name}: cells without a run stored"
    assert counts == sorted(counts), f"{path.name}: cells stored out of order"
    assert any(output.get("output_type") == "display_data" and "image/png" in output.get("data", {})
               for cell in code for output in cell.outputs), f"{path.name}: no figure stored"
