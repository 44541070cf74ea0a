"""The one driver under every loop: compiled chunks of steps, progress, stopping, resuming.

Training (one-shot, iterative, RTB, prior diffusions) and refinement (passes over a data set,
streamed mini-batches) are pure kernels, ``step(key, state) -> (state, info)`` (or
``step(key, state, x) -> (state, info)`` when the steps read host-side inputs); this module runs
them. ``info`` is a NamedTuple of per-step diagnostics with a ``loss`` field (or a bare loss).

- ``chunk_size`` steps run per compiled ``lax.scan``; between chunks the driver moves a progress
  bar, checks a time budget and a stopping rule, and reacts to Ctrl-C by returning the last
  complete chunk's state.
- Step ``i`` gets ``fold_in(key, i)`` with ``i`` its global index (``start_step`` plus the steps
  done), so a run is fixed by its key whatever its chunk size, and a resumed run continues the
  sequence of keys.
- One policy for non-finite values (:data:`NONFINITE_POLICY`): steps whose loss is not finite
  are expected to be skipped by the kernel (trainers wrap their optimizer in
  ``optax.apply_if_finite``); a chunk is kept when every array of its final state is finite and
  at least ``min_finite`` of its losses are finite; otherwise the loop stops and returns the
  state from before that chunk. Skipped steps are counted and reported once.

The chunk program is compiled once per step function and state structure; a step that is a
``jax.tree_util.Partial`` of a module-level function with array arguments (as refinement
builds) reuses the compiled program across calls.
"""

from __future__ import annotations

import itertools
import time
import warnings
from typing import Any, Callable, Iterable, NamedTuple

import equinox as eqx
import jax
import numpy as np
from tqdm.auto import tqdm

from amortized_ppl._checks import check_int

__all__ = ["NONFINITE_POLICY", "LoopResult", "all_finite", "run_chunked_loop"]

NONFINITE_POLICY = (
    "a step whose loss is not finite is skipped; a chunk whose final state holds a non-finite "
    "value, or whose losses are mostly non-finite, is dropped and the loop stops with the state "
    "from before it"
)
"""The one policy for non-finite values. States must therefore hold only finite values: mark
empty slots with a count or a mask, never with -inf."""

REASONS = ("done", "time", "converged", "exhausted", "nonfinite", "interrupt")


class LoopResult(NamedTuple):
    """What the driver returns.

    Attributes:
        state: the last kept state.
        history: the loss of every kept step, ``(num_steps_done,)`` (NaN where skipped).
        seconds: wall time, compilation included.
        interrupted: the loop stopped before ``num_steps`` (time budget, Ctrl-C, non-finite).
        infos: every field of ``info`` stacked over the kept steps (None for bare losses).
        reason: one of :data:`REASONS`.
        num_skipped: kept steps whose loss was not finite.
    """

    state: Any
    history: np.ndarray
    seconds: float
    interrupted: bool
    infos: Any = None
    reason: str = "done"
    num_skipped: int = 0


def all_finite(tree) -> bool:
    """Whether every inexact array in ``tree`` is finite (on the host)."""
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
    return all(bool(np.all(np.isfinite(np.asarray(leaf)))) for leaf in leaves)


@eqx.filter_jit
def _run_chunk(step, keys, state):
    return jax.lax.scan(lambda s, k: step(k, s), state, keys)


@eqx.filter_jit
def _run_chunk_with_inputs(step, keys, state, inputs):
    return jax.lax.scan(lambda s, kx: step(kx[0], s, kx[1]), state, (keys, inputs))


@jax.jit
def _fold(key, steps):
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(steps)


def _step_keys(key, first: int, size: int):
    """The keys of steps ``first .. first + size - 1``: each folded from ``key`` and its global
    index, so results do not depend on how the steps were chunked or resumed."""
    return _fold(key, first + np.arange(size, dtype=np.uint32))


def _stack(items: list):
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(v) for v in leaves]), *items)


def run_chunked_loop(
    key: jax.Array,
    state,
    step: Callable,
    *,
    num_steps: int | None,
    chunk_size: int = 50,
    start_step: int = 0,
    inputs: Iterable | None = None,
    max_seconds: float | None = None,
    stop_fn: Callable | None = None,
    min_finite: float = 0.5,
    progress: bool = True,
    desc: str = "fit",
    unit: str = "step",
    explain_nonfinite: Callable | None = None,
) -> LoopResult:
    """Run up to ``num_steps`` steps of ``step`` from ``state``.

    Args:
        key: PRNG key; step ``i`` (counting from ``start_step``) gets keys folded from it.
        state: the initial state (a pytree).
        step: ``step(key, state) -> (state, info)``, or ``step(key, state, x)`` with ``inputs``.
        num_steps: the most steps to run (None: until ``inputs`` runs out).
        chunk_size: steps per compiled call.
        start_step: the global index of the first step (a resumed run passes its step count).
        inputs: an iterable of per-step inputs (pytrees of arrays of one shape); the loop ends
            (reason ``"exhausted"``) when it runs out.
        max_seconds: a wall-time budget, checked between chunks (reason ``"time"``).
        stop_fn: ``stop_fn(state, infos) -> bool`` after each kept chunk (``infos`` stacked over
            its steps); True stops the loop (reason ``"converged"``).
        min_finite: the least fraction of finite losses for a chunk to be kept.
        progress: show a progress bar.
        desc, unit: the progress bar's label and unit.
        explain_nonfinite: ``explain_nonfinite(infos) -> str | None``, a more specific warning
            for a dropped chunk than the default advice to lower the learning rate.

    Returns:
        A :class:`LoopResult`.
    """
    if num_steps is None and inputs is None:
        raise ValueError("num_steps: None (run until the inputs run out) needs inputs.")
    num_steps = None if num_steps is None else check_int(num_steps, "num_steps", 0)
    chunk_size = check_int(chunk_size, "chunk_size")
    start_step = check_int(start_step, "start_step", 0)
    source = None if inputs is None else iter(inputs)
    losses, infos, done, skipped = [], [], 0, 0
    interrupted, reason = False, "done"
    start = time.perf_counter()
    bar = tqdm(total=num_steps, disable=not progress, desc=desc, unit=unit)
    try:
        while num_steps is None or done < num_steps:
            size = chunk_size if num_steps is None else min(chunk_size, num_steps - done)
            chunk_inputs = None
            if source is not None:
                items = list(itertools.islice(source, size))
                if not items:
                    reason = "exhausted"
                    break
                size, chunk_inputs = len(items), _stack(items)
            keys = _step_keys(key, start_step + done, size)
            if chunk_inputs is None:
                new_state, info = _run_chunk(step, keys, state)
            else:
                new_state, info = _run_chunk_with_inputs(step, keys, state, chunk_inputs)
            info = jax.tree.map(np.asarray, info)
            chunk = np.asarray(getattr(info, "loss", info), np.float64).reshape(size)
            finite = np.isfinite(chunk)
            if not all_finite(new_state) or finite.mean() < min_finite:
                advice = explain_nonfinite(info) if explain_nonfinite is not None else None
                warnings.warn(
                    f"Non-finite values within steps {start_step + done}-"
                    f"{start_step + done + size - 1}; stopping with the state from before them. "
                    + (advice or "Lower the learning rate."),
                    RuntimeWarning,
                    stacklevel=3,
                )
                interrupted, reason = True, "nonfinite"
                break
            state, done = new_state, done + size
            skipped += int(np.sum(~finite))
            losses.append(chunk)
            if hasattr(info, "loss"):
                infos.append(info)
            bar.update(size)
            if finite.any():
                bar.set_postfix(loss=f"{np.mean(chunk[finite]):.4g}")
            if stop_fn is not None and stop_fn(state, info):
                reason = "converged"
                break
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                if num_steps is None or done < num_steps:
                    interrupted, reason = True, "time"
                break
    except KeyboardInterrupt:
        warnings.warn(f"Interrupted after {done} {unit}s; returning the last complete state.",
                      RuntimeWarning, stacklevel=3)
        interrupted, reason = True, "interrupt"
    finally:
        bar.close()
    if skipped:
        warnings.warn(f"{skipped} of {done} {unit}s had a non-finite loss and were skipped.",
                      RuntimeWarning, stacklevel=3)
    history = np.concatenate(losses) if losses else np.zeros((0,))
    stacked = jax.tree.map(lambda *parts: np.concatenate(parts), *infos) if infos else None
    return LoopResult(state, history, time.perf_counter() - start, interrupted, stacked, reason,
                      skipped)
