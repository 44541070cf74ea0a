"""Training a sequence model on simulated (latent, sequence) batches: init/step kernel and a driver.

The model is any equinox module with ``loss(symbols (B, T), factors (B, F)) -> scalar``
(:class:`~amortized_ppl.sequence.transformer.NextTokenTransformer`,
:class:`~amortized_ppl.sequence.monte_carlo.MonteCarloPredictor`); ``sample_fn(key, batch_size)``
returns ``(factors (B, F), symbols (B, T))``, fresh simulations at every step, so there is no
finite training set to overfit; anything it returns after those two is passed on to ``loss``
(e.g. exact posterior marginals as soft targets). Equal ``num_steps`` and ``batch_size`` give two models the same
training budget in sequences seen.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import equinox as eqx
import jax
import numpy as np
import optax

from amortized_ppl._checks import check_int, check_key, check_positive_float
from amortized_ppl.loop import run_chunked_loop
from amortized_ppl.train import default_optimizer

__all__ = ["SequenceFitResult", "SequenceTrainState", "build_sequence_kernel", "fit_sequence_model"]


class SequenceTrainState(NamedTuple):
    """Trainable arrays of the model and the optimizer state."""

    params: eqx.Module
    opt_state: optax.OptState


def build_sequence_kernel(static, sample_fn: Callable, optimizer, batch_size: int):
    """``(init, step)`` for training; ``static`` is the non-array part of the model.

    ``step(key, state) -> (state, loss)`` simulates one batch and takes one optimizer step.
    """

    def loss_of(params, factors, symbols, *extra):
        return eqx.combine(params, static).loss(symbols, factors, *extra)

    def init(params) -> SequenceTrainState:
        return SequenceTrainState(params, optimizer.init(params))

    def step(key, state: SequenceTrainState):
        batch = sample_fn(key, batch_size)
        loss, grads = jax.value_and_grad(loss_of)(state.params, *batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return SequenceTrainState(optax.apply_updates(state.params, updates), opt_state), loss

    return init, step


class SequenceFitResult(NamedTuple):
    """What :func:`fit_sequence_model` returns: the trained model, the loss per step, wall time,
    and whether training stopped early (time budget, Ctrl-C, non-finite loss)."""

    model: eqx.Module
    history: np.ndarray
    seconds: float
    interrupted: bool


def fit_sequence_model(
    key: jax.Array,
    model: eqx.Module,
    sample_fn: Callable,
    *,
    num_steps: int = 2000,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    chunk_size: int = 50,
    max_seconds: float | None = None,
    progress: bool = True,
) -> SequenceFitResult:
    """Train ``model`` on fresh simulations from ``sample_fn`` with Adam (warm-up, cosine decay).

    Args:
        key: PRNG key; the result is deterministic given it.
        model: an equinox module with a ``loss(symbols, factors)`` method.
        sample_fn: ``(key, batch_size) -> (factors (B, F), symbols (B, T))``, jittable.
        num_steps, batch_size, learning_rate: the budget and optimizer.
        chunk_size: steps per compiled ``scan`` (the progress bar and budget check between).
        max_seconds: stop after this much wall time, keeping what was learned.
        progress: show a progress bar.
    """
    check_key(key, "key")
    # (int() would let 2.5 through as 2.)
    num_steps = check_int(num_steps, "num_steps")
    batch_size = check_int(batch_size, "batch_size")
    chunk_size = check_int(chunk_size, "chunk_size")
    learning_rate = check_positive_float(learning_rate, "learning_rate")
    params, static = eqx.partition(model, eqx.is_inexact_array)
    optimizer = default_optimizer(learning_rate, num_steps)
    init, step = build_sequence_kernel(static, sample_fn, optimizer, batch_size)
    state = init(params)

    out = run_chunked_loop(key, state, step, num_steps=num_steps, chunk_size=chunk_size,
                           max_seconds=max_seconds, progress=progress, desc="fit")
    return SequenceFitResult(eqx.combine(out.state.params, static), out.history, out.seconds,
                             out.interrupted)
