"""Train an amortized guide on simulations from its model: a pure init/step kernel and ``fit``.

``build_train_kernel`` returns ``init(params) -> TrainState`` and
``step(key, state) -> (TrainState, TrainInfo)`` in the style of blackjax; each step simulates a
fresh batch of data sets from the prior predictive (so there is no overfitting to a fixed
training set) and takes one optax step on the chosen loss. ``fit`` drives it in jitted chunks of
``lax.scan`` steps with a progress bar, records the loss history, and stops cleanly on Ctrl-C,
returning what it has.
"""

from __future__ import annotations

import time
import warnings
from functools import partial
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from amortized_ppl._checks import check_key
from amortized_ppl.losses import get_loss_fn
from amortized_ppl.simulate import build_simulator, check_num_obs

__all__ = ["FitResult", "TrainInfo", "TrainState", "build_train_kernel", "fit"]


class TrainState(NamedTuple):
    """State of the training kernel: guide parameters, optimizer state, step count."""

    params: Any
    opt_state: Any
    step: jax.Array


class TrainInfo(NamedTuple):
    """Diagnostics of one step: the loss and the global gradient norm."""

    loss: jax.Array
    grad_norm: jax.Array


class FitResult(NamedTuple):
    """What ``fit`` returns.

    Attributes:
        params: trained guide parameters (a dict, as NumPyro's ``SVI`` returns them).
        losses: loss per step, shape ``(num_steps_done,)``.
        state: the final :class:`TrainState` (pass it back to ``fit(..., init_state=)`` to resume).
        seconds: wall time of training, compilation included.
        interrupted: True when training stopped early (Ctrl-C or a non-finite loss).
    """

    params: Any
    losses: np.ndarray
    state: TrainState
    seconds: float
    interrupted: bool


def build_train_kernel(
    guide,
    simulate: Callable,
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
):
    """Build the pure training kernel.

    Args:
        guide: a set-up amortized guide.
        simulate: ``simulate(key, batch_size) -> SimulatedBatch``.
        loss_fn: ``loss_fn(key, params, guide, batch) -> scalar``.
        optimizer: an optax transformation.
        batch_size: data sets simulated per step.

    Returns:
        ``(init, step)`` with ``init(params) -> TrainState`` and
        ``step(key, state) -> (TrainState, TrainInfo)``.
    """

    def init(params) -> TrainState:
        return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))

    def step(key, state: TrainState):
        sim_key, loss_key = jax.random.split(key)
        batch = simulate(sim_key, batch_size)
        loss, grads = jax.value_and_grad(loss_fn, argnums=1)(loss_key, state.params, guide, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        info = TrainInfo(loss, optax.tree.norm(grads))
        return TrainState(params, opt_state, state.step + 1), info

    return init, step


def default_optimizer(learning_rate: float, num_steps: int) -> optax.GradientTransformation:
    """Adam with warm-up, cosine decay and gradient clipping; steps with non-finite gradients
    (a rare simulated data set whose ELBO overflows) are skipped rather than applied."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=learning_rate / 20,
        peak_value=learning_rate,
        warmup_steps=max(1, min(500, num_steps // 10)),
        decay_steps=max(num_steps, 2),
        end_value=learning_rate / 50,
    )
    adam = optax.chain(optax.clip_by_global_norm(5.0), optax.adamw(schedule, weight_decay=1e-5))
    return optax.apply_if_finite(adam, max_consecutive_errors=25)


def fit(
    key: jax.Array,
    guide,
    *,
    design_fn: Callable,
    num_obs: int | tuple[int, int],
    loss: str | Callable = "forward_kl",
    num_steps: int = 2000,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    optimizer: optax.GradientTransformation | None = None,
    loss_kwargs: dict | None = None,
    init_state: TrainState | None = None,
    chunk_size: int = 50,
    progress: bool = True,
    max_seconds: float | None = None,
) -> FitResult:
    """Train ``guide`` on simulations from its model's prior predictive.

    Args:
        key: PRNG key.
        guide: an amortized guide; set up here if it is not yet.
        design_fn: ``design_fn(key, num_obs) -> (args, kwargs)``, the model's inputs for one data
            set without observations (covariates come from here).
        num_obs: observations per simulated data set, an int or an inclusive ``(low, high)`` range.
        loss: ``"forward_kl"``, ``"elbo"``, ``"mixed"`` or ``loss_fn(key, params, guide, batch)``.
        num_steps: optimizer steps.
        batch_size: simulated data sets per step.
        learning_rate: peak learning rate of the default optimizer.
        optimizer: an optax transformation replacing the default.
        loss_kwargs: extra keyword arguments of the loss (e.g. ``num_particles``).
        init_state: a state from an earlier ``fit`` to resume from.
        chunk_size: steps per compiled chunk (the progress bar moves per chunk).
        progress: show a progress bar.
        max_seconds: stop after this much wall time (a budget), keeping what was learned.

    Returns:
        A :class:`FitResult`.

    Examples:
        >>> guide = AutoAmortizedMultivariateNormal(model)
        >>> result = fit(jax.random.key(0), guide, design_fn=design_fn, num_obs=(10, 200))
    """
    check_key(key, "key")
    if num_steps < 1:
        raise ValueError(f"num_steps: expected a positive int, got {num_steps}.")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size}.")
    num_obs = check_num_obs(num_obs)
    setup_key, key = jax.random.split(key)
    if not guide.is_setup:
        guide.setup(setup_key, design_fn, num_obs)
    loss_fn = get_loss_fn(loss)
    if loss_kwargs:
        loss_fn = partial(loss_fn, **loss_kwargs)
    optimizer = optimizer or default_optimizer(learning_rate, num_steps)
    simulate = build_simulator(guide.model, guide.sites, guide.spec, design_fn, num_obs)
    init, step = build_train_kernel(guide, simulate, loss_fn, optimizer, batch_size=batch_size)
    state = init_state if init_state is not None else init(guide.init_params())

    @eqx.filter_jit
    def run_chunk(keys, state):
        return jax.lax.scan(lambda s, k: step(k, s), state, keys)

    losses, interrupted, num_skipped = [], False, 0
    start = time.perf_counter()
    bar = tqdm(total=num_steps, disable=not progress, desc="fit", unit="step")
    done = 0
    try:
        while done < num_steps:
            size = min(chunk_size, num_steps - done)
            keys = jax.random.split(jax.random.fold_in(key, done), size)
            new_state, info = run_chunk(keys, state)
            chunk_losses = np.asarray(info.loss)
            finite = np.isfinite(chunk_losses)
            params_ok = all(
                bool(np.all(np.isfinite(leaf)))
                for leaf in jax.tree.leaves(eqx.filter(new_state.params, eqx.is_inexact_array))
            )
            if not params_ok or finite.mean() < 0.5:
                warnings.warn(
                    f"Non-finite loss from step {done + int(np.argmin(finite))} on"
                    f"{'' if params_ok else ' (and non-finite parameters)'}; stopping and keeping "
                    "the parameters from before this chunk. Lower the learning rate or use "
                    "loss='forward_kl'.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                interrupted = True
                break
            num_skipped += int(np.sum(~finite))
            state = new_state
            losses.append(chunk_losses)
            done += size
            bar.update(size)
            bar.set_postfix(loss=f"{chunk_losses.mean():.3f}")
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                interrupted = done < num_steps
                break
    except KeyboardInterrupt:
        warnings.warn(
            f"Training interrupted after {done} steps; returning the parameters so far.",
            RuntimeWarning,
            stacklevel=2,
        )
        interrupted = True
    finally:
        bar.close()
    if num_skipped:
        warnings.warn(
            f"{num_skipped} of {done} steps had a non-finite loss; the optimizer skipped them.",
            RuntimeWarning,
            stacklevel=2,
        )
    history = np.concatenate(losses) if losses else np.zeros((0,))
    return FitResult(state.params, history, state, time.perf_counter() - start, interrupted)
