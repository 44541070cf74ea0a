"""Training with a held-out loss curve, so that "trained to a plateau" can be judged.

:func:`~amortized_ppl.sequence.train.fit_sequence_model` trains on fresh simulations and returns
the training loss of every step, a noisy estimate (one batch per step) of a moving target.
:func:`fit_with_held_out_loss` runs the same kernel, optimizer and driver (so the trained model is
the same given the key) and also scores the model every ``eval_every`` steps on one fixed batch of
held-out sequences that no step trains on: a curve that flattens says more steps would not help
at this size and learning rate.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl._checks import check_int, check_key, check_positive_float
from amortized_ppl.loop import run_chunked_loop
from amortized_ppl.sequence.train import SequenceFitResult, build_sequence_kernel
from amortized_ppl.train import default_optimizer

__all__ = ["HeldOutCurve", "fit_with_held_out_loss", "held_out_loss"]


class HeldOutCurve(NamedTuple):
    """The held-out loss during training.

    Attributes:
        steps: ``(K,)`` int, optimizer steps done when each loss was taken (0: before training).
        loss: ``(K,)``, the model's ``loss`` on the held-out batch at those steps (nats).
    """

    steps: np.ndarray
    loss: np.ndarray


@eqx.filter_jit
def _batch_loss(model, batch):
    factors, symbols, *extra = batch
    return model.loss(symbols, factors, *extra)


def held_out_loss(model: eqx.Module, batch: tuple, *, chunk_size: int = 64) -> float:
    """``model.loss`` averaged over a fixed batch ``(factors (B, F), symbols (B, T), *extra)``.

    The batch goes ``chunk_size`` sequences at a time (the mean over equal chunks, the last one
    weighted by its size), so memory does not grow with ``B``.
    """
    chunk_size = check_int(chunk_size, "chunk_size")
    size = int(jnp.shape(batch[1])[0])
    if any(int(jnp.shape(a)[0]) != size for a in batch):
        raise ValueError(f"batch: every array needs the same leading size, got "
                         f"{[jnp.shape(a) for a in batch]}.")
    total = 0.0
    for start in range(0, size, chunk_size):
        part = tuple(a[start:start + chunk_size] for a in batch)
        total += float(_batch_loss(model, part)) * int(jnp.shape(part[1])[0])
    return total / size


def fit_with_held_out_loss(
    key: jax.Array,
    model: eqx.Module,
    sample_fn: Callable,
    held_out: tuple,
    *,
    eval_every: int = 250,
    num_steps: int = 2000,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    max_seconds: float | None = None,
    progress: bool = True,
) -> tuple[SequenceFitResult, HeldOutCurve]:
    """Train as :func:`~amortized_ppl.sequence.train.fit_sequence_model` does, scoring a held-out
    batch before training and every ``eval_every`` steps.

    Args:
        key: PRNG key; the model is the one ``fit_sequence_model`` trains with this key.
        model: an equinox module with ``loss(symbols, factors, *extra)``.
        sample_fn: ``(key, batch_size) -> (factors, symbols, *extra)``, jittable.
        held_out: one fixed batch in ``sample_fn``'s format, e.g. ``sample_fn(other_key, 256)``.
        eval_every: steps between held-out scores (also the compiled chunk of the loop).
        num_steps, batch_size, learning_rate, max_seconds, progress: as in
            ``fit_sequence_model``.

    Returns:
        ``(SequenceFitResult, HeldOutCurve)``; the result's ``seconds`` include the held-out
        scores (they run between the loop's chunks).
    """
    check_key(key, "key")
    num_steps = check_int(num_steps, "num_steps")
    batch_size = check_int(batch_size, "batch_size")
    eval_every = check_int(eval_every, "eval_every")
    learning_rate = check_positive_float(learning_rate, "learning_rate")
    if not isinstance(held_out, tuple) or len(held_out) < 2:
        raise ValueError("held_out: expected a tuple (factors, symbols, *extra) as sample_fn "
                         f"returns, got {type(held_out).__name__}.")
    params, static = eqx.partition(model, eqx.is_inexact_array)
    optimizer = default_optimizer(learning_rate, num_steps)
    init, step = build_sequence_kernel(static, sample_fn, optimizer, batch_size)
    steps, losses = [0], [held_out_loss(model, held_out)]

    def record(state, infos) -> bool:
        steps.append(steps[-1] + int(np.size(infos)))
        losses.append(held_out_loss(eqx.combine(state.params, static), held_out))
        return False  # never stop early: the curve is a report, not a rule

    out = run_chunked_loop(key, init(params), step, num_steps=num_steps, chunk_size=eval_every,
                           max_seconds=max_seconds, stop_fn=record, progress=progress,
                           desc="fit")
    fit = SequenceFitResult(eqx.combine(out.state.params, static), out.history, out.seconds,
                            out.interrupted)
    return fit, HeldOutCurve(np.asarray(steps), np.asarray(losses))
