"""The driver shared by simple training loops: compiled chunks of steps, progress, stopping rules.

A kernel's ``step(key, state) -> (state, loss)`` runs ``chunk_size`` times per compiled
``lax.scan``; between chunks the driver updates a progress bar, checks the time budget, and stops
on a non-finite loss (keeping the state from before that chunk) or on Ctrl-C (keeping the last
complete chunk).
"""

from __future__ import annotations

import time
import warnings
from typing import Callable, NamedTuple

import jax
import numpy as np
from tqdm.auto import tqdm

__all__ = ["LoopResult", "run_chunked_loop"]


class LoopResult(NamedTuple):
    """Final state, loss per completed step, wall time, and whether the loop stopped early."""

    state: object
    history: np.ndarray
    seconds: float
    interrupted: bool


def run_chunked_loop(
    key: jax.Array,
    state,
    step: Callable,
    *,
    num_steps: int,
    chunk_size: int,
    max_seconds: float | None = None,
    progress: bool = True,
    desc: str = "fit",
) -> LoopResult:
    """Run ``num_steps`` steps of ``step`` from ``state`` with keys folded from ``key``."""

    @jax.jit
    def run_chunk(keys, state):
        return jax.lax.scan(lambda s, k: step(k, s), state, keys)

    losses, done, interrupted = [], 0, False
    start = time.perf_counter()
    bar = tqdm(total=num_steps, disable=not progress, desc=desc, unit="step")
    try:
        while done < num_steps:
            size = min(chunk_size, num_steps - done)
            keys = jax.random.split(jax.random.fold_in(key, done), size)
            new_state, chunk = run_chunk(keys, state)
            chunk = np.asarray(chunk)
            if not np.all(np.isfinite(chunk)):
                warnings.warn(
                    f"Non-finite loss within steps {done}-{done + size - 1}; stopping with the "
                    "parameters from before them. Lower the learning rate.",
                    RuntimeWarning,
                    stacklevel=3,
                )
                interrupted = True
                break
            state, done = new_state, done + size
            losses.append(chunk)
            bar.update(size)
            bar.set_postfix(loss=f"{chunk.mean():.3f}")
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                interrupted = done < num_steps
                break
    except KeyboardInterrupt:
        warnings.warn(f"Training interrupted after {done} steps; returning the result so far.",
                      RuntimeWarning, stacklevel=3)
        interrupted = True
    finally:
        bar.close()
    history = np.concatenate(losses) if losses else np.zeros((0,))
    return LoopResult(state, history, time.perf_counter() - start, interrupted)
