"""Training the update network: unrolled refinement on simulated data sets, a loss after every step.

Each optimizer step simulates a batch of (latents, data set) pairs from the model's prior
predictive at one training size, refines every data set from the initial state for whole passes
of mini-batches, and averages the forward KL loss ``-log q_k(u_true | steps so far)`` over every
step ``k`` (weight ``kl_weight``). Its optimum at step ``k`` is the posterior given what the update
has read so far. A second term, minus the ELBO of the readout at the end of each pass on the whole
simulated data set (weight ``elbo_weight``), rewards a readout that reaches the variational
optimum in few passes: where single draws of the latents are far too noisy a signal for
corrections of a few hundredths of an SD, the ELBO's is not. Backpropagation is truncated: the
state's gradient is cut every ``truncation`` steps. Sizes take turns, one per optimizer step (a
``lax.switch`` over the sizes inside the kernel's step), so training is a pure ``init``/``step``
kernel run by the one driver (:func:`amortized_ppl.loop.run_chunked_loop`).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from amortized_ppl._checks import check_int, check_key, check_positive_float
from amortized_ppl.iterative.kernel import cubature_points
from amortized_ppl.iterative.passes import steps_per_pass
from amortized_ppl.loop import run_chunked_loop
from amortized_ppl.per_example import per_example_value_and_grad
from amortized_ppl.sharding import check_divides, constrain_batch, replicate, resolve_mesh
from amortized_ppl.simulate import check_num_obs
from amortized_ppl.train import check_optimizer, default_optimizer, skip_nonfinite

__all__ = [
    "IterativeFitResult",
    "IterativeTrainInfo",
    "IterativeTrainState",
    "TrainingSize",
    "build_iterative_train_kernel",
    "fit_iterative",
    "training_sizes",
]


class TrainingSize(NamedTuple):
    """One training configuration.

    Attributes:
        num_obs: ``(low, high)`` observations per simulated data set (``low == high`` for a fixed
            size; a range is padded to ``high`` and masked).
        batch_size: mini-batch size ``m``.
        num_passes: passes unrolled.
    """

    num_obs: tuple[int, int]
    batch_size: int
    num_passes: int

    @property
    def num_steps(self) -> int:
        return self.num_passes * steps_per_pass(self.num_obs[1], self.batch_size)


class IterativeTrainState(NamedTuple):
    """State of the iterative training kernel: engine parameters, optimizer state, step count."""

    params: Any
    opt_state: Any
    step: jax.Array


class IterativeTrainInfo(NamedTuple):
    """One optimizer step.

    Attributes:
        loss: mean loss over the simulated data sets kept (NaN if none was).
        size: the index of the training size it used.
        num_dropped: simulated data sets left out for a non-finite loss or gradient.
        num_clipped: data sets whose gradient norm was clipped to ``max_example_grad_norm``.
    """

    loss: jax.Array
    size: jax.Array
    num_dropped: jax.Array
    num_clipped: jax.Array


class IterativeFitResult(NamedTuple):
    """What :func:`fit_iterative` returns.

    Attributes:
        params: ``{guide.param_name: engine arrays}``, for the guide's methods.
        history: mean loss per optimizer step, ``(num_iterations,)``.
        sizes: the index into ``training_sizes`` used at each optimizer step.
        training_sizes: the configurations.
        seconds: wall time.
        interrupted: stopped early (time budget, Ctrl-C or non-finite values).
        state: the final :class:`IterativeTrainState` (``fit_iterative(..., init_state=)``
            resumes from it).
        reason: why it stopped (see :data:`amortized_ppl.loop.REASONS`).
        num_dropped: simulated data sets left out of their step for a non-finite loss or
            gradient, over the whole run.
        num_datasets: simulated data sets drawn over the whole run.
    """

    params: dict
    history: np.ndarray
    sizes: np.ndarray
    training_sizes: tuple[TrainingSize, ...]
    seconds: float
    interrupted: bool
    state: IterativeTrainState | None = None
    reason: str = "done"
    num_dropped: int = 0
    num_datasets: int = 0


def training_sizes(
    sizes: Sequence[int | tuple[int, int] | TrainingSize],
    batch_size: int,
    num_passes: int,
    min_steps: int,
) -> tuple[TrainingSize, ...]:
    """Expand sizes into configurations: an int ``N`` reads ``min(m, N)`` per step; a range
    ``(low, high)`` is read whole (``m = high``, masked); each unrolls at least ``min_steps``.
    A :class:`TrainingSize` is taken as it is (its own mini-batch and passes), e.g. to train
    at ``N = 10^4`` in mini-batches of 1,000 beside ``N = 10^3`` in mini-batches of 100."""
    out = []
    for size in sizes:
        if isinstance(size, TrainingSize):
            low, high = check_num_obs(size.num_obs)
            m = check_int(size.batch_size, "TrainingSize.batch_size")
            passes = check_int(size.num_passes, "TrainingSize.num_passes")
            if low != high and m != high:
                raise ValueError(
                    f"TrainingSize{tuple(size)}: a range of sizes is read whole; its batch_size "
                    f"must be its high end ({high}), got {m}.")
            if m > high:
                raise ValueError(
                    f"TrainingSize{tuple(size)}: batch_size {m} is larger than the data set "
                    f"({high}).")
            out.append(TrainingSize((low, high), m, passes))
            continue
        low, high = check_num_obs(size)
        m = high if low != high else min(int(batch_size), high)
        per_pass = steps_per_pass(high, m)
        passes = max(int(num_passes), -(-int(min_steps) // per_pass))
        out.append(TrainingSize((low, high), m, passes))
    return tuple(out)


def _size_loss(problem, static, simulate, size: TrainingSize, truncation: int,
               elbo_weight: float, kl_weight: float) -> Callable:
    """``loss(params, key)`` of one simulated data set at one training size: simulate, unroll,
    average the losses over the steps."""

    def full_elbo(loc, tril, key, arguments, mask):
        # The readout's ELBO on the whole simulated data set: a low-variance measure of how far
        # each pass got, which the forward KL of single draws is not (the symmetric cubature
        # makes its gradient exact up to the log density's fourth derivatives), and what
        # trains the readout network to undo the staleness of the running Gaussian.
        points = cubature_points(key, loc.shape[0], loc.dtype)
        values = jax.vmap(lambda u: problem.log_density(u, arguments, mask))(loc + points @ tril.T)
        return jnp.mean(values) + jnp.sum(jnp.log(jnp.diag(tril)))

    def loss(params, key):
        engine = eqx.combine(params, static)
        kernel_step = engine.kernel(problem)[1]

        def truncated_step(key, network, state, batch_args, batch_mask, per_pass):
            cut = state.step % truncation == 0
            state = jax.tree.map(lambda v: jnp.where(cut, jax.lax.stop_gradient(v), v), state)
            return kernel_step(key, network, state, batch_args, batch_mask, per_pass)

        sim_key, run_key, elbo_key = jax.random.split(key, 3)
        # arrays carry the batch axis; other arguments (e.g. a known noise scale) are shared
        sim = jax.tree.map(lambda v: v[0] if eqx.is_array(v) else v, simulate(sim_key, 1))
        latents, arguments, mask = sim.latents, sim.arguments, sim.mask

        def step(key, network, state, batch_args, batch_mask, per_pass):
            new_state, _ = truncated_step(key, network, state, batch_args, batch_mask, per_pass)
            nll = -engine.readout(new_state).log_prob(latents)
            return new_state, (nll, new_state.loc, new_state.scale_tril)

        _, (nll, locs, trils) = engine.refine(
            run_key, problem, arguments, mask, batch_size=size.batch_size,
            num_passes=size.num_passes, step_fn=step)
        elbos = jax.vmap(lambda lo, tr: full_elbo(lo, tr, elbo_key, arguments, mask))(
            locs[:, -1], trils[:, -1])
        return kl_weight * jnp.mean(nll) - elbo_weight * jnp.mean(elbos)

    return loss


def build_iterative_train_kernel(
    problem,
    static,
    configs: Sequence[TrainingSize],
    optimizer: optax.GradientTransformation,
    *,
    design_fn=None,
    truncation: int = 32,
    datasets_per_step: int = 16,
    elbo_weight: float = 1.0,
    kl_weight: float = 1.0,
    max_example_grad_norm: float | None = 1.0,
    mesh=None,
):
    """Build the pure training kernel of an iterative engine.

    Args:
        problem: the :class:`~amortized_ppl.problem.Problem`.
        static: the engine's non-array part (``eqx.partition(engine, eqx.is_inexact_array)[1]``).
        configs: the training sizes (:func:`training_sizes`); step ``i`` uses
            ``configs[i % len(configs)]``.
        optimizer: an optax transformation.
        design_fn: the design function (default: the problem's own).
        truncation, datasets_per_step, elbo_weight, kl_weight, max_example_grad_norm: see
            :func:`fit_iterative`.
        mesh: ``None`` or a :class:`jax.sharding.Mesh`: each step's simulated data sets (their
            keys, and so every per-data-set computation) split over its devices.

    Returns:
        ``(init, step)`` with ``init(params) -> IterativeTrainState`` and
        ``step(key, state) -> (IterativeTrainState, IterativeTrainInfo)``.
    """
    # Each data set's gradient on its own: one whose density overflows is left out and counted,
    # and an outlier's is clipped (see amortized_ppl.per_example).
    branches = [
        per_example_value_and_grad(
            _size_loss(problem, static, problem.simulator(design_fn, c.num_obs), c,
                       int(truncation), float(elbo_weight), float(kl_weight)),
            max_example_grad_norm)
        for c in configs
    ]
    datasets_per_step = int(datasets_per_step)

    def init(params) -> IterativeTrainState:
        return IterativeTrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))

    def step(key, state: IterativeTrainState):
        which = state.step % len(branches)
        keys = constrain_batch(jax.random.split(key, datasets_per_step), mesh, datasets_per_step)
        out = jax.lax.switch(which, branches, state.params, keys)
        updates, opt_state = optimizer.update(out.grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        info = IterativeTrainInfo(out.loss, which, out.num_dropped, out.num_clipped)
        return IterativeTrainState(params, opt_state, state.step + 1), info

    return init, step


def fit_iterative(
    key: jax.Array,
    guide,
    *,
    design_fn: Callable | None = None,
    sizes: Sequence[int | tuple[int, int]] = (64, 256, 1024),
    batch_size: int = 32,
    num_passes: int = 2,
    min_steps: int = 8,
    num_iterations: int = 600,
    datasets_per_step: int = 16,
    truncation: int = 32,
    elbo_weight: float = 1.0,
    kl_weight: float = 1.0,
    max_example_grad_norm: float | None = 1.0,
    learning_rate: float = 1e-3,
    optimizer: optax.GradientTransformation | None = None,
    init_state: IterativeTrainState | None = None,
    chunk_size: int | None = None,
    progress: bool = True,
    max_seconds: float | None = None,
    mesh=None,
) -> IterativeFitResult:
    """Train an iterative guide's update network on simulated data sets.

    Args:
        key: PRNG key.
        guide: a guide with an :class:`~amortized_ppl.engines.IterativePosterior` engine (e.g.
            ``AutoIterativeAmortizedMultivariateNormal``); set up here (from the training
            sizes) if it is not yet.
        design_fn: ``design_fn(key, num_obs) -> (args, kwargs)``, the model's inputs without
            observations (default: the problem's own).
        sizes: training data-set sizes, taking turns: ints (read in mini-batches of
            ``batch_size``), inclusive ``(low, high)`` ranges (read whole, masked) and
            :class:`TrainingSize` values (their own mini-batch size and passes). Sizes well
            beyond the mini-batch teach the update to combine many steps.
        batch_size: mini-batch size during training.
        num_passes: passes unrolled per data set (at least ``min_steps`` steps).
        min_steps: the fewest steps unrolled for any size.
        num_iterations: optimizer steps (in this call).
        datasets_per_step: simulated data sets per optimizer step.
        truncation: steps between cuts of the state's gradient (truncated backpropagation).
        elbo_weight: weight of the second loss term, minus the ELBO of the readout at the
            end of each pass on the whole simulated data set (0 trains by forward KL only).
        kl_weight: weight of the first term, the forward KL ``-log q_k(u_true)`` after every
            step. On large data sets (thousands of observations) the corrections the readout
            learns are hundredths of a posterior SD, and single true draws are far too noisy a
            signal for them: there train by the ELBO alone (``kl_weight=0``).
        max_example_grad_norm: each simulated data set's gradient is clipped to this norm
            before the step's mean (None: no clipping); data sets with a non-finite loss or
            gradient are left out and counted (``num_dropped``), never averaged in.
        learning_rate: peak learning rate of the default optimizer.
        optimizer: an optax transformation replacing the default (non-finite steps are
            skipped either way).
        init_state: a state from an earlier call to resume from.
        chunk_size: optimizer steps per compiled chunk (default: one per training size).
        progress: show a progress bar.
        max_seconds: a wall-time budget; training stops after it, keeping what was learned.
        mesh: data parallelism: a device count or a :class:`jax.sharding.Mesh` from
            :func:`~amortized_ppl.sharding.data_mesh`; each step's ``datasets_per_step``
            simulated data sets are split over its devices (they must divide evenly) and the
            state is replicated. Default: one device.

    Returns:
        An :class:`IterativeFitResult`.
    """
    check_key(key, "key")
    num_iterations = check_int(num_iterations, "num_iterations")
    datasets_per_step = check_int(datasets_per_step, "datasets_per_step")
    truncation = check_int(truncation, "truncation")
    batch_size = check_int(batch_size, "batch_size")
    elbo_weight = check_positive_float(elbo_weight, "elbo_weight", allow_zero=True)
    kl_weight = check_positive_float(kl_weight, "kl_weight", allow_zero=True)
    if elbo_weight == 0 and kl_weight == 0:
        raise ValueError("elbo_weight and kl_weight are both 0: the loss would be empty.")
    mesh = resolve_mesh(mesh)
    check_divides(datasets_per_step, mesh, "datasets_per_step")
    configs = training_sizes(sizes, batch_size, num_passes, min_steps)
    setup_key, key = jax.random.split(key)
    if not guide.is_setup:
        if design_fn is None:
            raise ValueError("fit_iterative: the guide is not set up; pass design_fn.")
        low = min(c.num_obs[0] for c in configs)
        high = max(c.num_obs[1] for c in configs)
        guide.setup(setup_key, design_fn, (low, high))
    problem = guide.problem
    engine = guide.engine(guide.init_params())
    if not hasattr(engine, "refine"):
        raise TypeError(
            f"fit_iterative trains iterative engines; this guide's engine is a "
            f"{type(engine).__name__} (train it with fit)."
        )
    params, static = eqx.partition(engine, eqx.is_inexact_array)
    optimizer = (default_optimizer(learning_rate, num_iterations) if optimizer is None
                 else skip_nonfinite(check_optimizer(optimizer)))
    init, step = build_iterative_train_kernel(
        problem, static, configs, optimizer, design_fn=design_fn, truncation=truncation,
        datasets_per_step=datasets_per_step, elbo_weight=elbo_weight, kl_weight=kl_weight,
        max_example_grad_norm=max_example_grad_norm, mesh=mesh)
    state = replicate(init(params) if init_state is None else init_state, mesh)
    out = run_chunked_loop(key, state, step, num_steps=num_iterations,
                           chunk_size=chunk_size or len(configs), start_step=int(state.step),
                           max_seconds=max_seconds, progress=progress, desc="fit_iterative")
    if out.infos is None:
        used, dropped = np.zeros((0,), int), 0
    else:
        used, dropped = np.asarray(out.infos.size, dtype=int), int(np.sum(out.infos.num_dropped))
    drawn = len(used) * datasets_per_step
    if dropped:
        warnings.warn(
            f"fit_iterative: {dropped} of {drawn} simulated data sets had a non-finite loss or "
            f"gradient and were left out of their steps (the refinement overflowed on them; a "
            f"high share means the update diverges on part of the prior predictive: try a larger "
            f"batch_size or a narrower prior).", RuntimeWarning, stacklevel=2)
    return IterativeFitResult({guide.param_name: out.state.params}, out.history, used, configs,
                              out.seconds, out.interrupted, out.state, out.reason, dropped,
                              drawn)
