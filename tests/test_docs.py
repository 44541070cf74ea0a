"""The documentation site builds with ``mkdocs build --strict`` (slow tier).

Strict mode turns every warning into an error: a broken link, a README heading that a page
includes and that was renamed (``docs/hooks.py``), a docstring griffe cannot parse, an object the
API pages name that is gone. The build reads the package statically (griffe), without importing
it or JAX: about 10 s on a 2-core machine. It needs the documentation packages of the ``dev``
extra; without them the test fails and says so, rather than being skipped.
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Import name -> the distribution that provides it.
DOCS_PACKAGES = {
    "mkdocs": "mkdocs",
    "material": "mkdocs-material",
    "mkdocstrings": "mkdocstrings",
    "mkdocstrings_handlers.python": "mkdocstrings-python",
}

# API page -> public names its HTML must contain (one or two per page, those users look up).
API_PAGES = {
    "api/checkpoint/index.html": ["load_guide", "save_params"],
    "api/training/index.html": ["fit", "run_chunked_loop"],
    "api/guides/index.html": ["AutoAmortizedMultivariateNormal"],
    "api/iterative/index.html": ["fit_iterative", "refine_stream"],
    "api/diagnostics/index.html": ["trust_ladder", "to_inference_data"],
    "api/problem/index.html": ["inspect_problem"],
}


def _missing_docs_packages() -> list[str]:
    missing = []
    for module, distribution in DOCS_PACKAGES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            missing.append(distribution)
    return missing


@pytest.mark.slow
def test_the_docs_build_strict(tmp_path):
    missing = _missing_docs_packages()
    if missing:
        pytest.fail(f"the documentation packages {missing} are not installed: install the dev "
                    "extra (pip install -e \".[dev]\")", pytrace=False)
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # Material's banner about MkDocs 2
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout}\n{run.stderr}"

    for page, names in API_PAGES.items():
        html = (site / page).read_text(encoding="utf-8")
        for name in names:  # the object's heading: id="amortized_ppl.<module>.<name>"
            assert re.search(rf'id="amortized_ppl(\.\w+)*\.{name}"', html), (page, name)
    # The pages' includes were expanded, not shown as text.
    for page in ("index.html", "getting-started/quickstart/index.html",
                 "architecture/index.html", "changelog/index.html", "benchmarks/index.html",
                 "tutorials/quickstart/index.html"):
        html = (site / page).read_text(encoding="utf-8")
        assert "include-section" not in html and "--8&lt;--" not in html, page
    quickstart = (site / "getting-started/quickstart/index.html").read_text(encoding="utf-8")
    assert "AutoAmortizedMultivariateNormal" in quickstart
    # The tutorials link the notebooks, which the site carries.
    tutorial = (site / "tutorials/quickstart/index.html").read_text(encoding="utf-8")
    assert 'href="../../notebooks/quickstart.ipynb"' in tutorial
    assert (site / "notebooks/quickstart.ipynb").is_file()
    assert (site / "benchmarks/results/sbibm.png").is_file()
