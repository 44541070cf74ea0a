"""Prior diffusions: the exact drift of a Gaussian-mixture prior, and training on prior samples.

Both target the same object: the drift ``f`` whose generative mean ``a_n x + h_n f(x, t_n)``
equals ``E_q[x_{n+1} | x_n = x]``, the conditional mean of the next state when data from the
prior are pushed back through the fixed noising kernel ``q`` (see
:mod:`amortized_ppl.diffusion.sampler`). With the generative variance fixed, that is the
maximum-likelihood policy for noising trajectories: it minimizes
``E[-sum_n log p(x_{n+1} | x_n)]`` over ``x_N ~ prior``, ``x_{0:N-1} ~ q(. | x_N)``, i.e. maximizes
the ELBO of ``log p(x_N)`` (``q`` has no parameters). As the number of steps grows the chain's
terminal law tends to the prior.

- :func:`gmm_exact_drift` computes it in closed form for a Gaussian mixture (duck-typed: any
  object with ``weights (K,)``, ``means (K, d)``, ``covs (K, d, d)``, such as
  ``amortized_ppl.models.inverse_problems.GaussianMixture``), from the posterior over components given a noised
  point: ``E[x_N | x_n] = sum_k p(k | x_n) (mu_k + m Sigma_k C_k^{-1} (x_n - m mu_k))`` with
  ``C_k = m^2 Sigma_k + v I`` (the noised prior's component covariances, ``gmm.noised(m, sqrt v)``).
- :func:`fit_prior_diffusion` learns it from samples by :func:`denoising_loss`, a
  Rao-Blackwellized one-step estimate of that negative ELBO (denoising score matching in this
  parameterization): its minimizer is the exact drift.

References:
    Ho, J., Jain, A., Abbeel, P. (2020). Denoising diffusion probabilistic models. *NeurIPS*.
    Vincent, P. (2011). A connection between score matching and denoising autoencoders.
    *Neural Computation*.
    Venkatraman, S., Jain, M., Scimeca, L., et al. (2024). Amortizing intractable inference in
    diffusion models for vision, language, and control. *NeurIPS*.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from amortized_ppl._checks import check_int, check_key
from amortized_ppl.diffusion.sampler import DiffusionSchedule, check_points, drift_call
from amortized_ppl.linalg import cho_solve, cholesky, solve_lower
from amortized_ppl.loop import run_chunked_loop
from amortized_ppl.train import default_optimizer

__all__ = [
    "PriorFitResult",
    "PriorTrainState",
    "build_prior_kernel",
    "denoising_loss",
    "fit_prior_diffusion",
    "gmm_exact_drift",
    "gmm_posterior_mean",
]

_MIN_VARIANCE = 1e-12  # floors v_n = 0 (the point-mass start): responsibilities become the weights


def gmm_posterior_mean(gmm, signal_scale, noise_std, x) -> jax.Array:
    """``E[x | m x + s eps = y]`` for ``x`` from a Gaussian mixture, one point ``y (d,) -> (d,)``.

    With ``m = 0`` (no signal left) it is the mixture mean.
    """
    weights, means, covs = (jnp.asarray(a) for a in (gmm.weights, gmm.means, gmm.covs))
    m = jnp.asarray(signal_scale, means.dtype)
    v = jnp.maximum(jnp.asarray(noise_std, means.dtype) ** 2, _MIN_VARIANCE)
    eye = jnp.eye(means.shape[-1], dtype=means.dtype)
    noised_covs = m**2 * covs + v * eye
    chol = jax.vmap(cholesky)(noised_covs)  # (K, d, d)
    resid = x[None] - m * means  # (K, d)
    z = jax.vmap(solve_lower)(chol, resid)
    log_det = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    resp = jax.nn.softmax(jnp.log(weights) - 0.5 * jnp.sum(z**2, axis=-1) - log_det)
    solved = jax.vmap(cho_solve)(chol, resid)  # C_k^{-1} (y - m mu_k)
    cond_means = means + m * jnp.einsum("kij,kj->ki", covs, solved)
    return resp @ cond_means


def gmm_exact_drift(gmm, schedule: DiffusionSchedule) -> Callable:
    """The exact drift ``f(x, t)`` of a Gaussian-mixture prior for ``schedule``.

    ``a_n x + h_n f(x, t_n) = A_n x + B_n E[x_N | x_n = x]``, the noising chain's conditional mean
    of the next state; sampling with it reproduces the mixture up to the discretization (the
    Gaussian kernel's fixed variance). ``t`` must be one of ``schedule.times[:-1]``.

    Args:
        gmm: A Gaussian mixture with ``weights (K,)``, ``means (K, d)``, ``covs (K, d, d)``.
        schedule: The :class:`DiffusionSchedule` (its ``dim`` must be ``d``).

    Returns:
        ``drift_fn(x (d,), t) -> (d,)``, jittable and vmappable.

    Examples:
        >>> from amortized_ppl.models.inverse_problems import grid_prior_2d
        >>> from amortized_ppl.diffusion import brownian_bridge_schedule, sample_trajectories
        >>> schedule = brownian_bridge_schedule(100, 2)
        >>> drift_fn = gmm_exact_drift(grid_prior_2d(), schedule)
        >>> sample_trajectories(jax.random.key(0), drift_fn, schedule, 5).states.shape
        (5, 101, 2)
    """
    means = jnp.asarray(gmm.means)
    if means.ndim != 2 or means.shape[-1] != schedule.dim:
        raise ValueError(
            f"gmm: expected means of shape (K, {schedule.dim}) for the schedule's dim, "
            f"got {means.shape}."
        )

    def drift_fn(x, t):
        n = jnp.argmin(jnp.abs(schedule.times[:-1] - t))
        mean_data = gmm_posterior_mean(
            gmm, schedule.marginal_scale[n], schedule.marginal_std[n], x
        )
        target = schedule.bridge_x_coef[n] * x + schedule.bridge_data_coef[n] * mean_data
        return (target - schedule.mean_scale[n] * x) / schedule.drift_step[n]

    return drift_fn


def denoising_loss(key: jax.Array, drift_fn: Callable, schedule: DiffusionSchedule, x_data,
                   *, cond=None) -> jax.Array:
    """Denoising loss of a drift on data ``x_data (B, d)``: a one-step estimate of the negative ELBO.

    For each data point draw a step ``n`` (stratified over the batch), ``x_n ~ q(x_n | x_N)``, and
    score ``N ||a_n x_n + h_n f(x_n, t_n) - (A_n x_n + B_n x_N)||^2 / (2 sigma_n^2)``. Its
    expectation is ``E[-sum_n log p(x_{n+1} | x_n)]`` over noising trajectories minus a constant
    that does not depend on ``f``, so it is minimized by the exact drift (maximum likelihood).

    Args:
        key: PRNG key.
        drift_fn: ``(x, t) -> (d,)`` or ``(x, t, cond) -> (d,)``.
        schedule: The :class:`DiffusionSchedule`.
        x_data: Data points ``x_N``, shape ``(B, d)``.
        cond: ``None``, ``(c,)`` or ``(B, c)``.

    Returns:
        The batch mean, a scalar.
    """
    x_data = check_points(x_data, schedule, None, "x_data")
    if cond is not None:
        cond = jnp.asarray(cond)
        if cond.ndim not in (1, 2) or (cond.ndim == 2 and cond.shape[0] != x_data.shape[0]):
            raise ValueError(f"cond: expected shape (c,) or ({x_data.shape[0]}, c), got {cond.shape}.")
    return _denoising_loss(key, drift_fn, schedule, x_data, cond)


@eqx.filter_jit
def _denoising_loss(key, drift_fn, schedule, x_data, cond):
    batch = x_data.shape[0]
    num_steps = schedule.num_steps
    key_step, key_noise = jax.random.split(key)
    u = jax.random.uniform(key_step, (), x_data.dtype)
    n = jnp.minimum((num_steps * (jnp.arange(batch) + u) / batch).astype(jnp.int32), num_steps - 1)
    eps = jax.random.normal(key_noise, x_data.shape, x_data.dtype)
    x_n = schedule.marginal_scale[n, None] * x_data + schedule.marginal_std[n, None] * eps
    target = schedule.bridge_x_coef[n, None] * x_n + schedule.bridge_data_coef[n, None] * x_data
    t = schedule.times[n]
    if cond is None:
        drift = jax.vmap(lambda xi, ti: drift_fn(xi, ti))(x_n, t)
    else:
        cond_axis = 0 if cond.ndim == 2 else None
        drift = jax.vmap(lambda xi, ti, ci: drift_call(drift_fn, xi, ti, ci),
                         in_axes=(0, 0, cond_axis))(x_n, t, cond)
    mean = schedule.mean_scale[n, None] * x_n + schedule.drift_step[n, None] * drift
    sq = jnp.sum((mean - target) ** 2, axis=-1) / (2.0 * schedule.noise_std[n] ** 2)
    return num_steps * jnp.mean(sq)


class PriorTrainState(NamedTuple):
    """Trainable arrays of the drift network and the optimizer state."""

    params: eqx.Module
    opt_state: optax.OptState


def build_prior_kernel(static, schedule: DiffusionSchedule, sample_prior_fn: Callable,
                       optimizer: optax.GradientTransformation, batch_size: int):
    """``(init, step)`` for prior training; ``static`` is the non-array part of the network.

    ``step(key, state) -> (state, loss)`` draws ``batch_size`` prior samples and takes one
    optimizer step on :func:`denoising_loss`.
    """

    def loss_of(params, key):
        key_data, key_loss = jax.random.split(key)
        x_data = sample_prior_fn(key_data, batch_size)
        return denoising_loss(key_loss, eqx.combine(params, static), schedule, x_data)

    def init(params) -> PriorTrainState:
        return PriorTrainState(params, optimizer.init(params))

    def step(key, state: PriorTrainState):
        loss, grads = jax.value_and_grad(loss_of)(state.params, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return PriorTrainState(optax.apply_updates(state.params, updates), opt_state), loss

    return init, step


class PriorFitResult(NamedTuple):
    """What :func:`fit_prior_diffusion` returns: the trained network and the loss per step.

    ``len(history) < num_steps`` when training stopped early (time budget, Ctrl-C, non-finite
    loss; the last two with a warning).
    """

    net: eqx.Module
    history: np.ndarray


def fit_prior_diffusion(
    key: jax.Array,
    drift_net: eqx.Module,
    schedule: DiffusionSchedule,
    sample_prior_fn: Callable,
    *,
    num_steps: int = 2000,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    optimizer: optax.GradientTransformation | None = None,
    chunk_size: int = 50,
    max_seconds: float | None = None,
    progress: bool = True,
) -> PriorFitResult:
    """Train a drift network on samples of a known prior by maximum likelihood (denoising loss).

    Args:
        key: PRNG key; the result is deterministic given it.
        drift_net: The network to train, ``(x (d,), t) -> (d,)`` (e.g. a ``DriftNetwork``).
        schedule: The :class:`DiffusionSchedule`.
        sample_prior_fn: ``(key, n) -> (n, d)`` prior samples, jittable (e.g. ``gmm.sample``).
        num_steps, batch_size, learning_rate: Budget and optimizer (Adam with warm-up and
            cosine decay, as :func:`amortized_ppl.train.default_optimizer`).
        optimizer: Overrides the default optimizer.
        chunk_size: Steps per compiled ``scan`` (progress and budget checks in between).
        max_seconds: Stop after this much wall time, keeping what was learned.
        progress: Show a progress bar.

    Returns:
        A :class:`PriorFitResult` ``(net, history)``.

    Examples:
        >>> from amortized_ppl.models.inverse_problems import grid_prior_2d
        >>> from amortized_ppl.diffusion import DriftNetwork, brownian_bridge_schedule
        >>> net = DriftNetwork(2, key=jax.random.key(1))
        >>> net, history = fit_prior_diffusion(jax.random.key(0), net,
        ...     brownian_bridge_schedule(50, 2), grid_prior_2d().sample, num_steps=20,
        ...     batch_size=64, progress=False)
        >>> history.shape
        (20,)
    """
    check_key(key, "key")
    for name, value in (("num_steps", num_steps), ("batch_size", batch_size),
                        ("chunk_size", chunk_size)):
        check_int(value, name)
    probe = jax.eval_shape(lambda k: sample_prior_fn(k, batch_size), jax.random.key(0))
    if probe.shape != (batch_size, schedule.dim):
        raise ValueError(
            f"sample_prior_fn: expected (key, n) -> (n, {schedule.dim}), got shape {probe.shape} "
            f"for n={batch_size}."
        )
    params, static = eqx.partition(drift_net, eqx.is_inexact_array)
    if optimizer is None:
        optimizer = default_optimizer(learning_rate, num_steps)
    init, step = build_prior_kernel(static, schedule, sample_prior_fn, optimizer, batch_size)
    state = init(params)

    out = run_chunked_loop(key, state, step, num_steps=num_steps, chunk_size=chunk_size,
                           max_seconds=max_seconds, progress=progress, desc="prior")
    return PriorFitResult(eqx.combine(out.state.params, static), out.history)
