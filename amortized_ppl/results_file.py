"""Results files: JSON written whole or not at all.

Benchmarks and reports write their figures here; an interrupted run must never leave a
half-written file that a README or a notebook would then quote. The file is written beside its
target and renamed over it (``os.replace`` is atomic on one file system).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["run_environment", "write_results"]

_LIBRARIES = ("jax", "jaxlib", "numpyro", "blackjax", "equinox", "optax", "flowjax")


def run_environment() -> dict[str, Any]:
    """The devices, library versions and host behind a results file's figures."""
    import jax

    device = jax.devices()[0]
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return dict(
        platform=device.platform,
        device_kind=device.device_kind,
        num_devices=jax.device_count(),
        num_processes=jax.process_count(),
        **versions,
        python=platform.python_version(),
        cpu_count=os.cpu_count(),
        cpu_affinity=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        machine=platform.machine(),
        # Other processes share the CPUs on a busy host: 1/5/15-minute load averages.
        load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


def write_results(path, results: dict) -> Path:
    """Write ``results`` as indented JSON to ``path`` atomically; returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out)
    return out
