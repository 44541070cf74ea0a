"""Training the update network: unrolled refinement on simulated data sets, a loss after every step.

Each optimizer step simulates a batch of (latents, data set) pairs from the model's prior
predictive at one training size, refines every data set from the initial state for whole passes
of mini-batches, and averages the forward KL loss ``-log q_k(u_true | steps so far)`` over every
step ``k``. Its optimum at step ``k`` is the posterior given what the update has read so far, so
the readout learns to stay calibrated mid-pass, not only at the end. A second term, minus the ELBO
of the running Gaussian at the end of each pass on the whole simulated data set, rewards step
sizes that reach the variational optimum in few passes. Backpropagation is
truncated: the state's gradient is cut every ``truncation`` steps. Sizes take turns; each compiles
once.
"""

from __future__ import annotations

import time
import warnings
from typing import Callable, NamedTuple, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from amortized_ppl._checks import check_key
from amortized_ppl.iterative.kernel import cubature_points
from amortized_ppl.iterative.passes import run_passes, steps_per_pass
from amortized_ppl.simulate import build_simulator, check_num_obs
from amortized_ppl.train import default_optimizer

__all__ = ["IterativeFitResult", "TrainingSize", "fit_iterative", "training_sizes"]


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


class IterativeFitResult(NamedTuple):
    """What :func:`fit_iterative` returns.

    Attributes:
        params: ``{guide.param_name: network arrays}``, for the guide's methods.
        history: mean loss per optimizer step, ``(num_iterations,)``.
        sizes: the index into ``training_sizes`` used at each optimizer step.
        training_sizes: the configurations.
        seconds: wall time.
        interrupted: stopped early (time budget, Ctrl-C or a non-finite loss).
    """

    params: dict
    history: np.ndarray
    sizes: np.ndarray
    training_sizes: tuple[TrainingSize, ...]
    seconds: float
    interrupted: bool


def training_sizes(
    sizes: Sequence[int | tuple[int, int]],
    batch_size: int,
    num_passes: int,
    min_steps: int,
) -> tuple[TrainingSize, ...]:
    """Expand sizes into configurations: an int ``N`` reads ``min(m, N)`` per step; a range
    ``(low, high)`` is read whole (``m = high``, masked); each unrolls at least ``min_steps``."""
    out = []
    for size in sizes:
        low, high = check_num_obs(size)
        m = high if low != high else min(int(batch_size), high)
        per_pass = steps_per_pass(high, m)
        passes = max(int(num_passes), -(-int(min_steps) // per_pass))
        out.append(TrainingSize((low, high), m, passes))
    return tuple(out)


def _build_update(
    guide, simulate, size: TrainingSize, optimizer, truncation: int, batch: int, elbo_weight: float
):
    step_fn = guide._step_fn

    def full_elbo(loc, tril, key, arguments, mask):
        # The running Gaussian's ELBO on the whole (small, simulated) data set: a low-variance
        # measure of how far each pass got, which the forward KL of single draws is not.
        points = cubature_points(key, loc.shape[0], loc.dtype)
        values = jax.vmap(lambda u: guide.log_density(u, arguments, mask, 1.0))(
            loc + points @ tril.T
        )
        return jnp.mean(values) + jnp.sum(jnp.log(jnp.diag(tril)))

    def loss_fn(arrays, static, key, sim):
        network = eqx.combine(arrays, static)

        def one(key, latents, arguments, mask):
            def step(key, network, state, batch_args, batch_mask, per_pass):
                cut = state.step % truncation == 0
                state = jax.tree.map(lambda v: jnp.where(cut, jax.lax.stop_gradient(v), v), state)
                new_state, _ = step_fn(key, network, state, batch_args, batch_mask, per_pass)
                nll = -guide.posterior(new_state).log_prob(latents)
                return new_state, (nll, new_state.run_loc, new_state.run_scale_tril)

            run_key, elbo_key = jax.random.split(key)
            _, (nll, locs, trils) = run_passes(
                run_key,
                step,
                network,
                guide.init_state(),
                arguments,
                mask,
                guide.take,
                batch_size=size.batch_size,
                num_passes=size.num_passes,
            )
            elbos = jax.vmap(lambda lo, tr: full_elbo(lo, tr, elbo_key, arguments, mask))(
                locs[:, -1], trils[:, -1]
            )
            return jnp.mean(nll) - elbo_weight * jnp.mean(elbos)

        keys = jax.random.split(key, batch)
        losses = eqx.filter_vmap(one, in_axes=(0, 0, eqx.if_array(0), 0))(
            keys, sim.latents, sim.arguments, sim.mask
        )
        return jnp.mean(losses)

    @eqx.filter_jit
    def update(arrays, static, opt_state, key):
        sim_key, loss_key = jax.random.split(key)
        sim = simulate(sim_key, batch)
        loss, grads = jax.value_and_grad(loss_fn)(arrays, static, loss_key, sim)
        updates, opt_state = optimizer.update(grads, opt_state, arrays)
        return optax.apply_updates(arrays, updates), opt_state, loss

    return update


def fit_iterative(
    key: jax.Array,
    guide,
    *,
    design_fn: Callable,
    sizes: Sequence[int | tuple[int, int]] = (64, 256, 1024),
    batch_size: int = 32,
    num_passes: int = 2,
    min_steps: int = 8,
    num_iterations: int = 600,
    datasets_per_step: int = 16,
    truncation: int = 32,
    elbo_weight: float = 1.0,
    learning_rate: float = 1e-3,
    params: dict | None = None,
    progress: bool = True,
    max_seconds: float | None = None,
) -> IterativeFitResult:
    """Train an iterative guide's update network on simulated data sets.

    Args:
        key: PRNG key.
        guide: an :class:`~amortized_ppl.guides.iterative.AutoIterativeAmortizedGuide`; set up
            here (from the training sizes) if it is not yet.
        design_fn: ``design_fn(key, num_obs) -> (args, kwargs)``, the model's inputs without
            observations.
        sizes: training data-set sizes, taking turns: ints (read in mini-batches of
            ``batch_size``) and inclusive ``(low, high)`` ranges (read whole, masked). Sizes well
            beyond the mini-batch teach the update to combine many steps.
        batch_size: mini-batch size during training.
        num_passes: passes unrolled per data set (at least ``min_steps`` steps).
        min_steps: the fewest steps unrolled for any size.
        num_iterations: optimizer steps.
        datasets_per_step: simulated data sets per optimizer step.
        truncation: steps between cuts of the state's gradient (truncated backpropagation).
        elbo_weight: weight of the second loss term, minus the ELBO of the running Gaussian at
            the end of each pass on the whole simulated data set (0 trains by forward KL only).
        learning_rate: peak learning rate of the default optimizer.
        params: parameters to continue from (e.g. an earlier result's).
        progress: show a progress bar.
        max_seconds: a wall-time budget; training stops after it, keeping what was learned.

    Returns:
        An :class:`IterativeFitResult`.
    """
    check_key(key, "key")
    for name, value in (
        ("num_iterations", num_iterations),
        ("datasets_per_step", datasets_per_step),
        ("truncation", truncation),
        ("batch_size", batch_size),
    ):
        if int(value) < 1:
            raise ValueError(f"{name}: expected a positive int, got {value}.")
    configs = training_sizes(sizes, batch_size, num_passes, min_steps)
    setup_key, key = jax.random.split(key)
    if not guide.is_setup:
        low = min(c.num_obs[0] for c in configs)
        high = max(c.num_obs[1] for c in configs)
        guide.setup(setup_key, design_fn, (low, high))
    optimizer = default_optimizer(learning_rate, int(num_iterations))
    arrays = (params or guide.init_params())[guide.param_name]
    _, static = eqx.partition(guide._network, eqx.is_inexact_array)
    opt_state = optimizer.init(arrays)
    updates = [
        _build_update(
            guide,
            build_simulator(guide.model, guide.sites, guide.spec, design_fn, c.num_obs),
            c,
            optimizer,
            int(truncation),
            int(datasets_per_step),
            float(elbo_weight),
        )
        for c in configs
    ]
    history, used, interrupted = [], [], False
    start = time.perf_counter()
    bar = tqdm(total=int(num_iterations), disable=not progress, desc="fit_iterative", unit="step")
    try:
        for i in range(int(num_iterations)):
            which = i % len(configs)
            new_arrays, new_opt_state, loss = updates[which](
                arrays, static, opt_state, jax.random.fold_in(key, i)
            )
            loss = float(loss)
            if not np.isfinite(loss):
                warnings.warn(
                    f"Non-finite training loss at step {i} (size {configs[which].num_obs}); "
                    "stopping with the parameters from before it.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                interrupted = True
                break
            arrays, opt_state = new_arrays, new_opt_state
            history.append(loss)
            used.append(which)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                interrupted = i + 1 < int(num_iterations)
                break
    except KeyboardInterrupt:
        warnings.warn(
            f"Training interrupted after {len(history)} steps; returning the parameters so far.",
            RuntimeWarning,
            stacklevel=2,
        )
        interrupted = True
    finally:
        bar.close()
    return IterativeFitResult(
        {guide.param_name: arrays},
        np.asarray(history),
        np.asarray(used, dtype=int),
        configs,
        time.perf_counter() - start,
        interrupted,
    )
