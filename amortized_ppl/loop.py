"""The driver shared by simple training loops: compiled chunks of steps, progress, stopping rules.

A kernel's ``step(key, state) -> (state, loss)`` (or ``(state, info)`` with an ``info.loss`` field,
a NamedTuple of per-step diagnostics) runs ``chunk_size`` times per compiled
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
    """Final state, loss per completed step, wall time, whether the loop stopped early, and why.

    ``infos`` stacks every field of a NamedTuple ``info`` over the completed steps (``None`` when
    ``step`` returns a bare loss); ``reason`` is ``"done"``, ``"time"``, ``"nonfinite"`` or
    ``"interrupt"``.
    """

    state: object
    history: np.ndarray
    seconds: float
    interrupted: bool
    infos: object = None
    reason: str = "done"


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
    explain_nonfinite: Callable | None = None,
) -> LoopResult:
    """Run ``num_steps`` steps of ``step`` from ``state`` with keys folded from ``key``.

    ``explain_nonfinite(infos) -> str | None``, given the failing chunk's stacked infos, may
    return a more specific warning than the default advice to lower the learning rate.
    """

    @jax.jit
    def run_chunk(keys, state):
        return jax.lax.scan(lambda s, k: step(k, s), state, keys)

    losses, infos, done, interrupted, reason = [], [], 0, False, "done"
    start = time.perf_counter()
    bar = tqdm(total=num_steps, disable=not progress, desc=desc, unit="step")
    try:
        while done < num_steps:
            size = min(chunk_size, num_steps - done)
            keys = jax.random.split(jax.random.fold_in(key, done), size)
            new_state, info = run_chunk(keys, state)
            info = jax.tree.map(np.asarray, info)
            chunk = np.asarray(getattr(info, "loss", info))
            if not np.all(np.isfinite(chunk)):
                advice = explain_nonfinite(info) if explain_nonfinite is not None else None
                warnings.warn(
                    f"Non-finite loss within steps {done}-{done + size - 1}; stopping with the "
                    "parameters from before them. "
                    + (advice or "Lower the learning rate."),
                    RuntimeWarning,
                    stacklevel=3,
                )
                interrupted, reason = True, "nonfinite"
                break
            state, done = new_state, done + size
            losses.append(chunk)
            if hasattr(info, "loss"):
                infos.append(info)
            bar.update(size)
            bar.set_postfix(loss=f"{chunk.mean():.3f}")
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                interrupted = done < num_steps
                reason = "time" if interrupted else "done"
                break
    except KeyboardInterrupt:
        warnings.warn(f"Training interrupted after {done} steps; returning the result so far.",
                      RuntimeWarning, stacklevel=3)
        interrupted, reason = True, "interrupt"
    finally:
        bar.close()
    history = np.concatenate(losses) if losses else np.zeros((0,))
    stacked = jax.tree.map(lambda *parts: np.concatenate(parts), *infos) if infos else None
    return LoopResult(state, history, time.perf_counter() - start, interrupted, stacked, reason)
