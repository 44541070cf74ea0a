"""Results files: JSON written whole or not at all.

Benchmarks and reports write their figures here; an interrupted run must never leave a
half-written file that a README or a notebook would then quote. The file is written beside its
target and renamed over it (``os.replace`` is atomic on one file system).
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["write_results"]


def write_results(path, results: dict) -> Path:
    """Write ``results`` as indented JSON to ``path`` atomically; returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out)
    return out
