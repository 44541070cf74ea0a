"""XLA flags that trade the speed of compiled code for the speed of compiling it.

Small programs (tests, notebooks in small mode, benchmarks of tiny models) spend nearly all
their time in XLA's compiler; LLVM at -O0 and XLA:CPU's loop emitters instead of its MLIR fusion
emitters halve a test suite's time on two cores (measured in ``tests/conftest.py``). They change
how fast the code runs, not what it computes (at most the last bits). This module imports no
JAX: the flags must be in the environment before JAX starts.
"""

from __future__ import annotations

import os
import sys

__all__ = ["FAST_COMPILE_XLA_FLAGS", "use_fast_compile"]

FAST_COMPILE_XLA_FLAGS = (
    "--xla_backend_optimization_level=0",
    "--xla_cpu_use_fusion_emitters=false",
)


def use_fast_compile(*, opt_out_variable: str | None = None) -> bool:
    """Prepend :data:`FAST_COMPILE_XLA_FLAGS` to ``XLA_FLAGS`` if JAX has not started yet.

    Nothing changes when JAX is already imported (the flags would be ignored), when
    ``XLA_FLAGS`` already sets the optimization level, or when ``opt_out_variable`` names an
    environment variable set to ``1``. Child processes (kernels, workers) inherit the result.

    Returns:
        Whether the flags were added.
    """
    existing = os.environ.get("XLA_FLAGS", "")
    if ("jax" in sys.modules or "xla_backend_optimization_level" in existing
            or (opt_out_variable and os.environ.get(opt_out_variable) == "1")):
        return False
    os.environ["XLA_FLAGS"] = " ".join([*FAST_COMPILE_XLA_FLAGS, existing]).strip()
    return True
