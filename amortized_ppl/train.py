"""Train an amortized guide on simulations from its model: a pure init/step kernel and ``fit``.

``build_train_kernel`` returns ``init(params) -> TrainState`` and
``step(key, state) -> (TrainState, TrainInfo)`` in the style of blackjax; each step simulates a
fresh batch of data sets from the prior predictive (so there is no overfitting to a fixed
training set) and takes one optax step on the chosen loss. ``fit`` runs it on the one driver
(:func:`amortized_ppl.loop.run_chunked_loop`): compiled chunks, a progress bar, a time budget,
Ctrl-C keeps the last complete chunk, a resumed run continues where it stopped.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from amortized_ppl import early_stopping as stopping
from amortized_ppl._checks import check_int, check_key, check_positive_float
from amortized_ppl.families.laplace import LaplaceRefinedHead
from amortized_ppl.loop import run_chunked_loop
from amortized_ppl.losses import get_loss_fn
from amortized_ppl.sharding import check_divides, replicate, resolve_mesh, sharded_simulator
from amortized_ppl.simulate import check_num_obs

__all__ = [
    "FitResult",
    "TrainInfo",
    "TrainState",
    "build_train_kernel",
    "default_optimizer",
    "fit",
    "skip_nonfinite",
]


class TrainState(NamedTuple):
    """State of the training kernel: engine parameters, optimizer state, step count."""

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
        interrupted: True when training stopped early (Ctrl-C, time budget, non-finite values).
        reason: why it stopped (see :data:`amortized_ppl.loop.REASONS`).
        num_skipped: steps skipped because their loss was not finite (NaN in ``losses``; a
            batch with one overflowing data set is skipped whole, and warned about).
        validation: the held-out record with ``early_stopping`` (``params`` are then its best),
            else None.
    """

    params: Any
    losses: np.ndarray
    state: TrainState
    seconds: float
    interrupted: bool
    reason: str = "done"
    num_skipped: int = 0
    validation: stopping.Validation | None = None


def skip_nonfinite(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """``optimizer`` that skips steps whose gradients are not finite (the driver's policy)."""
    return optax.apply_if_finite(optimizer, max_consecutive_errors=25)


def check_optimizer(optimizer) -> optax.GradientTransformation:
    """``optimizer``, or a ``TypeError`` unless it is an optax transformation."""
    if not (callable(getattr(optimizer, "init", None))
            and callable(getattr(optimizer, "update", None))):
        raise TypeError(
            f"optimizer: expected an optax GradientTransformation such as optax.adam(1e-3), got "
            f"{optimizer!r}.")
    return optimizer


def warmup_cosine_schedule(learning_rate: float, num_steps: int) -> optax.Schedule:
    """The house's learning-rate schedule: a linear warm-up over a tenth of the steps (at most
    500) from a twentieth of the rate, then cosine decay to a fiftieth of it."""
    learning_rate = check_positive_float(learning_rate, "learning_rate")
    return optax.warmup_cosine_decay_schedule(
        init_value=learning_rate / 20,
        peak_value=learning_rate,
        warmup_steps=max(1, min(500, num_steps // 10)),
        decay_steps=max(num_steps, 2),
        end_value=learning_rate / 50,
    )


def default_optimizer(learning_rate: float, num_steps: int) -> optax.GradientTransformation:
    """Adam with warm-up, cosine decay and gradient clipping, skipping non-finite steps (a rare
    simulated data set whose ELBO overflows)."""
    schedule = warmup_cosine_schedule(learning_rate, num_steps)
    return skip_nonfinite(
        optax.chain(optax.clip_by_global_norm(5.0), optax.adamw(schedule, weight_decay=1e-5)))


def build_train_kernel(
    problem,
    static,
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    *,
    simulate: Callable,
    batch_size: int,
):
    """Build the pure training kernel.

    Args:
        problem: the :class:`~amortized_ppl.problem.Problem`.
        static: the engine's non-array part (``eqx.partition(engine, eqx.is_inexact_array)[1]``).
        loss_fn: ``loss_fn(key, problem, engine, batch) -> scalar``.
        optimizer: an optax transformation.
        simulate: ``simulate(key, batch_size) -> SimulatedBatch``.
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

        def objective(params):
            return loss_fn(loss_key, problem, eqx.combine(params, static), batch)

        loss, grads = jax.value_and_grad(objective)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        info = TrainInfo(loss, optax.tree.norm(grads))
        return TrainState(params, opt_state, state.step + 1), info

    return init, step


def _check_resume(state, params) -> None:
    """Raise unless ``state`` holds parameters shaped like ``params``."""
    if not isinstance(state, TrainState):
        raise TypeError(f"init_state: expected a TrainState from fit, got {type(state).__name__}.")
    got = jax.tree.map(lambda v: (jnp.shape(v), jnp.result_type(v)), state.params)
    want = jax.tree.map(lambda v: (jnp.shape(v), jnp.result_type(v)), params)
    if jax.tree.structure(got) != jax.tree.structure(want) or got != want:
        raise ValueError(
            "init_state: its parameters do not match this guide's engine (another guide, or "
            "other settings); resume with the state fit returned for this guide."
        )


def fit(
    key: jax.Array,
    guide,
    *,
    design_fn: Callable | None = None,
    num_obs: int | tuple[int, int] | None = None,
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
    early_stopping: stopping.EarlyStopping | None = None,
    simulate: Callable | None = None,
    mesh=None,
) -> FitResult:
    """Train ``guide``'s engine on simulations from its model's prior predictive.

    Args:
        key: PRNG key.
        guide: an :class:`~amortized_ppl.guides.AutoAmortized` guide; set up here (from
            ``design_fn`` and ``num_obs``) if it is not yet.
        design_fn: ``design_fn(key, num_obs) -> (args, kwargs)``, the model's inputs for one data
            set without observations (default: the problem's own).
        num_obs: observations per simulated data set, an int or an inclusive ``(low, high)``
            range (default: the problem's range).
        loss: ``"forward_kl"``, ``"elbo"``, ``"mixed"`` or ``loss_fn(key, problem, engine,
            batch)``.
        num_steps: optimizer steps (in this call; a resumed run adds them).
        batch_size: simulated data sets per step.
        learning_rate: peak learning rate of the default optimizer.
        optimizer: an optax transformation replacing the default (steps with non-finite
            gradients are skipped either way).
        loss_kwargs: extra keyword arguments of the loss (e.g. ``num_particles``).
        init_state: a state from an earlier ``fit`` of this guide to resume from.
        chunk_size: steps per compiled chunk (the progress bar moves per chunk).
        progress: show a progress bar.
        max_seconds: stop after this much wall time (a budget), keeping what was learned.
        early_stopping: an :class:`~amortized_ppl.early_stopping.EarlyStopping`: score a fixed
            held-out simulation set between chunks, stop when it stops improving, and return the
            best parameters (the returned ``state`` stays the last one, to resume from).
        simulate: ``simulate(key, batch_size) -> SimulatedBatch`` replacing fresh simulations
            from the prior predictive, e.g. :func:`~amortized_ppl.simulation_budget.from_budget`
            of a fixed simulation budget.
        mesh: data parallelism: a device count or a :class:`jax.sharding.Mesh` from
            :func:`~amortized_ppl.sharding.data_mesh`; each step's simulated batch is split over
            its devices and the parameters replicated (``batch_size`` must divide evenly). For a
            fixed key the result equals one device's up to float rounding. Default: one device.

    Returns:
        A :class:`FitResult`.

    Examples:
        >>> guide = AutoAmortizedMultivariateNormal(model)
        >>> result = fit(jax.random.key(0), guide, design_fn=design_fn, num_obs=(10, 200))
    """
    check_key(key, "key")
    num_steps = check_int(num_steps, "num_steps")
    batch_size = check_int(batch_size, "batch_size")
    if early_stopping is not None:
        if not isinstance(early_stopping, stopping.EarlyStopping):
            raise TypeError(f"early_stopping: expected an EarlyStopping, got "
                            f"{type(early_stopping).__name__}.")
        early_stopping.checked()
    setup_key, key = jax.random.split(key)
    if not guide.is_setup:
        if design_fn is None or num_obs is None:
            raise ValueError(
                "fit: the guide is not set up; pass design_fn and num_obs (the simulator it "
                "trains on), or set it up first."
            )
        guide.setup(setup_key, design_fn, num_obs)
    problem = guide.problem
    if simulate is None:
        simulate = problem.simulator(design_fn, num_obs)
    elif not callable(simulate):
        raise TypeError(f"simulate: expected simulate(key, batch_size), got "
                        f"{type(simulate).__name__}.")
    mesh = resolve_mesh(mesh)
    check_divides(batch_size, mesh, "batch_size")
    simulate = sharded_simulator(simulate, mesh)
    loss_fn = get_loss_fn(loss)
    if loss_kwargs:
        loss_fn = partial(loss_fn, **loss_kwargs)
    optimizer = (default_optimizer(learning_rate, num_steps) if optimizer is None
                 else skip_nonfinite(check_optimizer(optimizer)))
    if num_obs is not None and guide.max_obs is not None and \
            check_num_obs(num_obs)[1] > guide.max_obs:
        raise ValueError(
            f"num_obs: training on up to {check_num_obs(num_obs)[1]} observations, more than "
            f"the {guide.max_obs} this guide takes (its max_obs); set the guide up with the "
            "larger range.")
    params, static = eqx.partition(guide.engine(guide.init_params()), eqx.is_inexact_array)
    init, step = build_train_kernel(problem, static, loss_fn, optimizer, simulate=simulate,
                                    batch_size=batch_size)
    if init_state is None:
        state = init(params)
    else:
        _check_resume(init_state, params)
        state = init_state
    state = replicate(state, mesh)
    stop_fn, record = None, None
    if early_stopping is not None:
        stop_fn, record = _early_stopping(jax.random.fold_in(setup_key, 2), problem, static,
                                          loss_fn, simulate, early_stopping)
    out = run_chunked_loop(key, state, step, num_steps=num_steps, chunk_size=chunk_size,
                           start_step=int(state.step), max_seconds=max_seconds,
                           progress=progress, desc="fit", stop_fn=stop_fn)
    validation = None if record is None else record()
    best = out.state.params if validation is None or validation.best_params is None \
        else validation.best_params
    trained = {guide.param_name: best}
    if isinstance(getattr(static, "family", None), LaplaceRefinedHead) and out.history.size:
        _warn_if_worse_than_laplace(jax.random.fold_in(setup_key, 1), guide, trained,
                                    design_fn, num_obs)
    return FitResult(trained, out.history, out.state, out.seconds, out.interrupted, out.reason,
                     out.num_skipped, validation)


def _early_stopping(key, problem, static, loss_fn, simulate, settings):
    """``(stop_fn, record)`` for the driver: ``stop_fn`` scores the held-out set every
    ``settings.every`` chunks and says when to stop; ``record()`` is the record so far."""
    sim_key, loss_key = jax.random.split(key)
    held_out = settings.held_out
    if held_out is None:
        held_out = simulate(sim_key, settings.num_datasets)

    @eqx.filter_jit
    def held_out_loss(params):
        return loss_fn(loss_key, problem, eqx.combine(params, static), held_out)

    record = stopping.Validation()
    chunks = 0

    def stop_fn(state, info) -> bool:
        nonlocal record, chunks
        del info
        chunks += 1
        if chunks % settings.every:
            return False
        record = stopping.update(record, int(state.step), held_out_loss(state.params),
                                 state.params, settings.min_delta)
        return record.since_best >= settings.patience

    return stop_fn, lambda: record


def _warn_if_worse_than_laplace(key, guide, params, design_fn, num_obs) -> None:
    """The network on against the network off, after training (issue 15: a badly trained
    correction was far worse than its Laplace base, without a word)."""
    from amortized_ppl.correction import check_correction

    report = check_correction(key, guide, params, design_fn=design_fn, num_obs=num_obs)
    if report.worse:
        warnings.warn(
            f"The trained correction is worse than the Laplace fit it corrects on "
            f"{report.corrected.size} simulated data sets (mean ELBO change "
            f"{report.gain:+.3g} +/- {report.gain_se:.2g} nats): train longer or with another "
            "loss, or use the Laplace base (amortized_ppl.correction.without_correction).",
            RuntimeWarning, stacklevel=3)
