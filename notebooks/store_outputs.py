"""Execute every notebook in small mode and store its outputs in the file.

A reader on a code host then sees each figure and table without running anything. Small mode
(``AMORTIZED_PPL_NOTEBOOK_SMALL=1``) is what ``tests/test_notebooks.py`` runs and checks: the
assert cells hold the text to the numbers at these sizes, so the stored outputs are the ones the
words were checked against. Kernels run this interpreter on the CPU with matplotlib's inline
backend (so figures are stored) and the tests' fast-compile XLA flags; progress bars are off and
file paths in warnings are made relative to the checkout.

Usage::

    .venv/bin/python notebooks/store_outputs.py            # every notebook
    .venv/bin/python notebooks/store_outputs.py trust.ipynb

A notebook is rewritten only once it ran to the end; one that fails is left as it was.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import nbclient
import nbformat
from ipykernel import kernelspec

from amortized_ppl.xla_flags import use_fast_compile

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent
REPO_ROOT = NOTEBOOK_DIR.parent


def _environment(jupyter_path: pathlib.Path) -> None:
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        [str(jupyter_path), *filter(None, [os.environ.get("JUPYTER_PATH")])])
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    os.environ["AMORTIZED_PPL_NOTEBOOK_SMALL"] = "1"
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # figures stored
    os.environ["TQDM_DISABLE"] = "1"  # no progress bars (nor tqdm's widget warning) in the file
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    use_fast_compile()  # as the tests run them: small mode is nearly all compilation


def store(path: pathlib.Path, *, timeout: int = 900) -> float:
    """Run ``path`` top to bottom and write it back with its outputs; return the seconds."""
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()
    seconds = time.perf_counter() - start
    notebook.metadata.pop("widgets", None)  # progress-bar state: noise in the file
    for cell in notebook.cells:  # warnings name files by where this checkout happens to be
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                output["text"] = output["text"].replace(f"{REPO_ROOT}{os.sep}", "")
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(notebook, tmp)
    os.replace(tmp, path)
    return seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook file names (default: all)")
    args = parser.parse_args(argv)
    paths = ([NOTEBOOK_DIR / name for name in args.names] if args.names
             else sorted(NOTEBOOK_DIR.glob("*.ipynb")))
    with tempfile.TemporaryDirectory() as prefix:
        kernelspec.install(prefix=prefix, kernel_name="python3")
        _environment(pathlib.Path(prefix) / "share" / "jupyter")
        for path in paths:
            print(f"{path.name}: {store(path):.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
