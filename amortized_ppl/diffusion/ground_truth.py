"""Ground truth for diffusion-posterior inverse problems: adaptive tempered SMC (blackjax).

The target is a posterior ``p(x | y) ∝ p(x) r(x)`` on ``R^d`` (``d`` = 2..16) with a prior whose
exact samples are available (a Gaussian mixture) and a sharp, possibly multimodal likelihood
``r(x) = p(y | x)``. NUTS on such a target stays in the mode it starts in, so it gets the mode
weights wrong; tempered sequential Monte Carlo does not need to cross between modes. It moves
``N`` particles along the path ``pi_lambda(x) ∝ p(x) r(x)^lambda`` from ``lambda = 0`` (the
prior: exact initial particles) to ``lambda = 1`` (the posterior). Each step of blackjax's
``adaptive_tempered_smc``:

1. chooses ``lambda_t`` by bisection so that the incremental weights
   ``r(x_i)^(lambda_t - lambda_{t-1})`` have an effective sample size of ``target_ess * N``;
2. resamples the particles (systematic resampling) by their current weights;
3. moves each particle with ``num_mcmc_steps`` steps of an MCMC kernel (HMC by default, or a
   Gaussian random-walk Metropolis) invariant for ``pi_{lambda_{t-1}}``;
4. reweights them by ``r(x_i)^(lambda_t - lambda_{t-1})``; the log mean weight is the step's
   log-evidence increment ``log Z_t / Z_{t-1}``, and their sum estimates ``log p(y)``.

Mode weights come from the importance weights, not from the MCMC crossing between modes: the
moves only have to equilibrate particles within their mode. After ``lambda`` reaches 1 a last
resample-and-move at ``lambda = 1`` returns ``N`` equally weighted posterior samples.

The inner kernel is tuned between tempering steps from the particles (as blackjax's
``inner_kernel_tuning`` does, written out in the loop): its metric is the weighted per-coordinate
variance of the current particles (HMC inverse mass matrix; random-walk proposal SDs), so that
the kernel follows the target as the likelihood sharpens it by orders of magnitude, and its step
size is multiplied by ``exp(gain * (mean acceptance - target_acceptance))`` after each step. Each
particle's step size is jittered by a random factor in ``[exp(-jitter), exp(jitter)]``, which
spreads the trajectories' lengths.

:func:`problem_reference` runs it on an ``InverseProblem`` (``amortized_ppl.models.inverse_problems``), with
the Gaussian-mixture prior's density precomputed by :func:`mixture_log_density`.

Accuracy. Each mode's share of the particles is settled when the prior is drawn and is then only
reweighted, so the mode weights have roughly the error of importance sampling from the prior's
mode weights ``pi`` with ``N`` draws, which exceeds multinomial sampling error by a factor of
about ``sqrt(sum_k p_k^2 / pi_k)`` (``p``: posterior mode weights; see
``tests/test_ground_truth.py``). Measured over 20 keys: with ``N = 2000`` the total variation
of the mode weights was 0.02-0.03 (2-D toy and 8-D linear problems) and the log evidence had an
SD of 0.06-0.07; on 8-D phase retrieval the log evidence had an SD of 0.10 (``N = 2000``) and
0.07 (``N = 8000``). For a benchmark reference use ``N >= 10^4`` and compare a few keys.

The tempering loop is a :func:`jax.lax.while_loop` inside one jitted program (compiled once per
pair of density functions, configuration and particle shape) and stops at ``lambda = 1`` or at
``max_iterations`` (then :func:`tempered_smc_posterior` raises ``RuntimeError``). No device is
named: the program runs where JAX puts it, with full-precision float32 matrix products.

References:
    Del Moral, P., Doucet, A. and Jasra, A. (2006). Sequential Monte Carlo samplers. *Journal of
    the Royal Statistical Society B* 68(3), 411-436.
    Jasra, A., Stephens, D. A., Doucet, A. and Tsagaris, T. (2011). Inference for Lévy-driven
    stochastic volatility models via adaptive sequential Monte Carlo. *Scandinavian Journal of
    Statistics* 38(1). (The ESS-based adaptive tempering schedule.)
    Buchholz, A., Chopin, N. and Jacob, P. E. (2021). Adaptive tuning of Hamiltonian Monte Carlo
    within sequential Monte Carlo. *Bayesian Analysis* 16(3). (HMC moves tuned from particles.)
    Cabezas, A., Corenflos, A., Lao, J., Louf, R., et al. (2024). BlackJAX: composable Bayesian
    inference in JAX. arXiv:2402.10797. (``blackjax.adaptive_tempered_smc``.)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import blackjax
import blackjax.smc.resampling as resampling
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl._checks import check_int, check_key, check_open_unit, check_positive_float

__all__ = [
    "INNER_KERNELS",
    "SMCResult",
    "mixture_log_density",
    "problem_reference",
    "tempered_smc_posterior",
]

INNER_KERNELS = ("hmc", "rwmh")
"""Names of the MCMC kernels that move the particles: HMC, or Gaussian random-walk Metropolis."""

_DEFAULT_TARGET_ACCEPTANCE = {"hmc": 0.75, "rwmh": 0.3}
_MIN_LOG_STEP, _MAX_LOG_STEP = math.log(1e-4), math.log(10.0)
# lambda is snapped to exactly 1 once within this distance (float32 sums of increments).
_LAMBDA_SNAP = 1e-6
# Minimum length of the history buffers: caps up to 511 tempering steps share one program.
_MIN_CAPACITY = 512


class SMCResult(NamedTuple):
    """Posterior samples, log evidence and diagnostics of a tempered SMC run.

    ``T`` is the number of tempering steps; entry ``t`` of a history is step ``t`` (resample,
    move at ``lambda_{t-1}``, reweight to ``lambda_t``), ``lambda_{-1} = 0``.

    Attributes:
        samples: Equally weighted posterior samples, shape ``(N, d)`` (resampled and moved at
            ``lambda = 1`` after the last tempering step).
        log_evidence: Estimate of ``log integral p(x) r(x) dx``, shape ``()``.
        num_tempering_steps: ``T``, a Python int.
        tempering_schedule: ``lambda_t`` after each step, shape ``(T,)``; the last is 1.
        log_evidence_increments: ``log Z_t / Z_{t-1}`` of each step, shape ``(T,)``; they sum
            to ``log_evidence``.
        ess: Effective sample size of the weights after each step, as a fraction of ``N``,
            shape ``(T,)`` (close to ``target_ess`` except at the last step).
        acceptance_rate: Mean acceptance probability of each step's moves, shape ``(T,)``.
        step_size: Each step's step size before jitter (the particles' step sizes are spread
            around it), relative to the particles' per-coordinate SD, shape ``(T,)``.
        final_acceptance_rate: Mean acceptance probability of the last moves at
            ``lambda = 1``, shape ``()``.
    """

    samples: jax.Array
    log_evidence: jax.Array
    num_tempering_steps: int
    tempering_schedule: jax.Array
    log_evidence_increments: jax.Array
    ess: jax.Array
    acceptance_rate: jax.Array
    step_size: jax.Array
    final_acceptance_rate: jax.Array


class _LoopState(NamedTuple):
    """Carry of the tempering loop; histories are buffers of a static capacity."""

    key: jax.Array
    smc_state: Any  # blackjax TemperedSMCState
    log_step_size: jax.Array
    index: jax.Array
    is_done: jax.Array
    schedule: jax.Array
    increments: jax.Array
    ess: jax.Array
    acceptance: jax.Array
    step_size: jax.Array


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------





def _check_particles(particles) -> jax.Array:
    if isinstance(particles, jax.core.Tracer):
        raise TypeError(
            "tempered_smc_posterior runs its own jitted program and checks its inputs on the "
            "host; call it outside jit/vmap."
        )
    particles = jnp.asarray(particles)
    if not jnp.issubdtype(particles.dtype, jnp.floating):
        particles = particles.astype(jnp.result_type(float))
    if particles.ndim != 2 or particles.shape[0] < 2 or particles.shape[1] < 1:
        raise ValueError(
            "initial_particles must have shape (N, d) with N >= 2 particles drawn from the "
            f"prior; got shape {particles.shape}."
        )
    finite = np.asarray(jnp.all(jnp.isfinite(particles), axis=1))
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"initial_particles must be finite; {bad.size} of {finite.size} particles have NaN "
            f"or Inf entries (first: row {bad[0]})."
        )
    return particles


@eqx.filter_jit
def _evaluate(fn: Callable, particles: jax.Array) -> jax.Array:
    return jax.vmap(fn)(particles)


def _check_density_at(fn: Callable, name: str, particles: jax.Array) -> None:
    """Evaluate ``fn`` on each particle; raise ``ValueError`` naming ``fn`` unless finite."""
    if not callable(fn):
        raise TypeError(f"{name} must be a callable x (d,) -> (); got {type(fn).__name__}.")
    values = _evaluate(fn, particles)
    if values.shape != (particles.shape[0],):
        raise ValueError(
            f"{name} must map one point of shape ({particles.shape[1]},) to a scalar; on "
            f"{particles.shape[0]} particles it returned shape {values.shape}."
        )
    finite = np.asarray(jnp.isfinite(values))
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"{name} is not finite at {bad.size} of {finite.size} initial particles (first: "
            f"row {bad[0]}, value {float(values[bad[0]])}); tempering needs a finite "
            f"{name} wherever the prior puts mass."
        )


# ---------------------------------------------------------------------------------------------
# Inner kernels: step functions with a per-particle step size and a shared per-coordinate scale
# ---------------------------------------------------------------------------------------------


def _build_inner_kernel(kernel: str, num_integration_steps: int):
    """``(step_fn, init_fn, info_to_acceptance)`` in the form blackjax's SMC expects.

    ``step_fn(key, state, logdensity_fn, step_size, scale)``: ``step_size`` a scalar (per
    particle), ``scale`` the particles' per-coordinate SD, shape ``(d,)`` (shared).
    """
    if kernel == "hmc":
        hmc_kernel = blackjax.hmc.build_kernel()

        def step_fn(key, state, logdensity_fn, step_size, scale):
            return hmc_kernel(key, state, logdensity_fn, step_size, scale**2, num_integration_steps)

        return step_fn, blackjax.hmc.init

    rw_kernel = blackjax.additive_step_random_walk.build_kernel()

    def step_fn(key, state, logdensity_fn, step_size, scale):
        return rw_kernel(
            key, state, logdensity_fn, blackjax.mcmc.random_walk.normal(step_size * scale)
        )

    return step_fn, blackjax.additive_step_random_walk.init


def _weighted_scale(particles: jax.Array, weights: jax.Array) -> jax.Array:
    """Weighted per-coordinate SD of the particles, shape ``(d,)``, floored away from 0."""
    mean = weights @ particles
    var = weights @ (particles - mean) ** 2
    floor = 1e-12 * jnp.maximum(1.0, jnp.max(var))
    return jnp.sqrt(jnp.maximum(var, floor))


# ---------------------------------------------------------------------------------------------
# The sampler
# ---------------------------------------------------------------------------------------------


@eqx.filter_jit
def _run(
    key,
    particles,
    log_prior_fn,
    log_likelihood_fn,
    target_ess,
    kernel,
    num_mcmc_steps,
    num_integration_steps,
    initial_step_size,
    target_acceptance,
    adaptation_gain,
    step_size_jitter,
    max_iterations,
    capacity,
):
    num_particles = particles.shape[0]
    dtype = particles.dtype
    step_fn, init_fn = _build_inner_kernel(kernel, num_integration_steps)
    smc_kernel = blackjax.adaptive_tempered_smc.build_kernel(
        log_prior_fn,
        log_likelihood_fn,
        step_fn,
        init_fn,
        resampling.systematic,
        target_ess,
    )

    def parameters(key, smc_state, log_step_size):
        jitter = jax.random.uniform(
            key, (num_particles,), dtype, -step_size_jitter, step_size_jitter
        )
        scale = _weighted_scale(smc_state.particles, smc_state.weights)
        # Leading axis N: one value per particle; leading axis 1: shared (blackjax's rule).
        return {"step_size": jnp.exp(log_step_size + jitter), "scale": scale[None]}

    def mean_acceptance(info):
        return jnp.mean(info.update_info.acceptance_rate)

    def cond(carry: _LoopState):
        # Run until a step has started at lambda = 1: that last step's increment is 0 and it
        # resamples by the final weights and moves the particles at lambda = 1.
        tempering_param = carry.smc_state.tempering_param
        is_running = (carry.index < max_iterations) | (tempering_param >= 1.0)
        return ~carry.is_done & ~jnp.isnan(tempering_param) & is_running

    def body(carry: _LoopState):
        key, key_parameters, key_step = jax.random.split(carry.key, 3)
        params = parameters(key_parameters, carry.smc_state, carry.log_step_size)
        is_final = carry.smc_state.tempering_param >= 1.0
        smc_state, info = smc_kernel(key_step, carry.smc_state, num_mcmc_steps, params)
        tempering_param = smc_state.tempering_param
        tempering_param = jnp.where(tempering_param > 1.0 - _LAMBDA_SNAP, 1.0, tempering_param)
        smc_state = smc_state._replace(tempering_param=tempering_param.astype(dtype))
        acceptance = mean_acceptance(info)
        # A NaN acceptance (non-finite densities on a trajectory) counts as a rejection.
        log_step_size = carry.log_step_size + adaptation_gain * (
            jnp.nan_to_num(acceptance, nan=0.0) - target_acceptance
        )
        log_step_size = jnp.clip(log_step_size, _MIN_LOG_STEP, _MAX_LOG_STEP)
        ess = 1.0 / jnp.sum(smc_state.weights**2) / num_particles
        i = carry.index
        return _LoopState(
            key=key,
            smc_state=smc_state,
            log_step_size=log_step_size,
            index=i + 1,
            is_done=is_final,
            schedule=carry.schedule.at[i].set(tempering_param),
            increments=carry.increments.at[i].set(info.log_likelihood_increment),
            ess=carry.ess.at[i].set(ess),
            acceptance=carry.acceptance.at[i].set(acceptance),
            step_size=carry.step_size.at[i].set(jnp.exp(carry.log_step_size)),
        )

    smc_state = blackjax.adaptive_tempered_smc.init(particles)
    smc_state = smc_state._replace(tempering_param=jnp.zeros((), dtype))
    # One slot per tempering step and one for the final move.
    history = jnp.full((capacity,), jnp.nan, dtype)
    carry = _LoopState(
        key=key,
        smc_state=smc_state,
        log_step_size=jnp.log(jnp.asarray(initial_step_size, dtype)),
        index=jnp.zeros((), jnp.int32),
        is_done=jnp.zeros((), bool),
        schedule=history,
        increments=history,
        ess=history,
        acceptance=history,
        step_size=history,
    )
    carry = jax.lax.while_loop(cond, body, carry)
    filled = jnp.arange(capacity) < carry.index
    log_evidence = jnp.sum(jnp.where(filled, carry.increments, 0.0))
    return carry, log_evidence


def tempered_smc_posterior(
    key,
    log_prior: Callable[[jax.Array], jax.Array],
    log_likelihood: Callable[[jax.Array], jax.Array],
    initial_particles,
    *,
    target_ess: float = 0.5,
    kernel: str = "hmc",
    num_mcmc_steps: int = 10,
    num_integration_steps: int = 10,
    initial_step_size: float | None = None,
    target_acceptance: float | None = None,
    adaptation_gain: float = 2.0,
    step_size_jitter: float = 0.5,
    max_iterations: int = 500,
    matmul_precision: str | None = "highest",
) -> SMCResult:
    """Sample ``p(x | y) ∝ prior(x) r(x)`` and estimate ``log p(y)`` by adaptive tempered SMC.

    ``log_prior`` and ``log_likelihood`` map one point ``x`` of shape ``(d,)`` to a scalar
    (functions of ``(..., d)`` such as ``GaussianMixture.log_prob`` and
    ``InverseProblem.log_likelihood`` qualify); they are vmapped over particles. ``log_prior``
    must be differentiable for ``kernel="hmc"`` and need not be normalized only if the evidence
    is not wanted: the evidence estimate is that of ``integral exp(log_prior) r``.

    The jitted program is cached per ``(log_prior, log_likelihood)`` (plain functions by
    identity; :class:`jax.tree_util.Partial` objects by their function, with their arrays
    traced), configuration and particle shape, so repeated calls with new keys only run.

    Args:
        key: A JAX PRNG key; the run is a deterministic function of it.
        log_prior: ``x (d,) -> log p(x)``, a scalar.
        log_likelihood: ``x (d,) -> log r(x) = log p(y | x)``, a scalar.
        initial_particles: Exact prior draws, shape ``(N, d)`` with ``N >= 2``.
        target_ess: Fraction of ``N`` that each step's incremental weights keep as effective
            sample size, in ``(0, 1)``; larger means more, smaller tempering steps.
        kernel: Inner MCMC kernel, one of :data:`INNER_KERNELS`: ``"hmc"`` (gradient-based,
            diagonal inverse mass matrix from the particles' variances) or ``"rwmh"`` (Gaussian
            random walk with per-coordinate SDs proportional to the particles').
        num_mcmc_steps: MCMC steps per particle and tempering step.
        num_integration_steps: Leapfrog steps per HMC trajectory (ignored by ``"rwmh"``).
        initial_step_size: Step size relative to the particles' SD at the first step; ``None``
            for ``d^{-1/4}`` (HMC) or ``2.38 / sqrt(d)`` (random walk).
        target_acceptance: Mean acceptance probability the step size is tuned towards; ``None``
            for 0.75 (HMC) or 0.3 (random walk).
        adaptation_gain: ``log step_size += gain * (acceptance - target_acceptance)`` after
            each tempering step.
        step_size_jitter: Each particle's step size is multiplied by ``exp(u)``,
            ``u ~ Uniform(-jitter, jitter)``; 0 turns jitter off.
        max_iterations: Cap on the number of tempering steps.
        matmul_precision: As :func:`jax.default_matmul_precision` inside the sampler; the
            default ``"highest"`` keeps float32 products exact on GPUs (no TF32); ``None``
            keeps JAX's default.

    Returns:
        An :class:`SMCResult`.

    Raises:
        ValueError: On a bad configuration, ``initial_particles`` not of shape ``(N, d)`` or not
            finite, or ``log_prior`` / ``log_likelihood`` not scalar-valued or not finite at
            some initial particle (the message names which).
        RuntimeError: If ``lambda`` has not reached 1 after ``max_iterations`` steps (or became
            NaN), or if the samples or the evidence are not finite.

    Examples:
        >>> from amortized_ppl.models.inverse_problems import toy_2d_problem
        >>> problem = toy_2d_problem()
        >>> key_prior, key_smc = jax.random.split(jax.random.key(0))
        >>> particles = problem.prior.sample(key_prior, 1000)
        >>> result = tempered_smc_posterior(
        ...     key_smc, problem.prior.log_prob, problem.log_likelihood, particles
        ... )
        >>> result.samples.shape, result.log_evidence.shape
        ((1000, 2), ())
    """
    check_key(key, "key")
    if kernel not in INNER_KERNELS:
        raise ValueError(f"kernel must be one of {INNER_KERNELS}; got {kernel!r}.")
    target_ess = check_open_unit(target_ess, "target_ess")
    num_mcmc_steps = check_int(num_mcmc_steps, "num_mcmc_steps", 1)
    num_integration_steps = check_int(num_integration_steps, "num_integration_steps", 1)
    max_iterations = check_int(max_iterations, "max_iterations", 1)
    if target_acceptance is None:
        target_acceptance = _DEFAULT_TARGET_ACCEPTANCE[kernel]
    target_acceptance = check_open_unit(target_acceptance, "target_acceptance")
    adaptation_gain = check_positive_float(adaptation_gain, "adaptation_gain", allow_zero=True)
    step_size_jitter = check_positive_float(step_size_jitter, "step_size_jitter", allow_zero=True)
    particles = _check_particles(initial_particles)
    dim = particles.shape[1]
    if initial_step_size is None:
        initial_step_size = dim**-0.25 if kernel == "hmc" else 2.38 / math.sqrt(dim)
    initial_step_size = check_positive_float(initial_step_size, "initial_step_size")
    if matmul_precision is None:
        precision = contextlib.nullcontext()
    else:
        precision = jax.default_matmul_precision(matmul_precision)

    with precision:
        _check_density_at(log_prior, "log_prior", particles)
        _check_density_at(log_likelihood, "log_likelihood", particles)
        # Floats and the cap are traced (no recompilation when they change); the history
        # buffers have a static capacity of at least _MIN_CAPACITY slots.
        traced = (
            jnp.asarray(value, particles.dtype)
            for value in (
                target_ess,
                initial_step_size,
                target_acceptance,
                adaptation_gain,
                step_size_jitter,
            )
        )
        target_ess, initial_step_size, target_acceptance, adaptation_gain, step_size_jitter = traced
        capacity = max(_MIN_CAPACITY, 1 << max_iterations.bit_length())  # > max_iterations
        carry, log_evidence = _run(
            key,
            particles,
            log_prior,
            log_likelihood,
            target_ess,
            kernel,
            num_mcmc_steps,
            num_integration_steps,
            initial_step_size,
            target_acceptance,
            adaptation_gain,
            step_size_jitter,
            jnp.asarray(max_iterations, jnp.int32),
            capacity,
        )

    num_steps = int(carry.index) - 1  # the last step is the final move at lambda = 1
    if not bool(carry.is_done):
        final_lambda = float(carry.smc_state.tempering_param)
        if math.isnan(final_lambda):
            why = "the tempering parameter became NaN (non-finite log-likelihood increments)"
        else:
            why = f"lambda = {final_lambda:.4g} after max_iterations={max_iterations} steps"
        raise RuntimeError(
            f"tempered SMC did not reach lambda = 1: {why}. Raise max_iterations, lower "
            "target_ess (larger steps), or check that log_likelihood is finite on the prior's "
            "support."
        )
    samples = carry.smc_state.particles
    if not bool(jnp.isfinite(log_evidence)) or not bool(jnp.all(jnp.isfinite(samples))):
        raise RuntimeError(
            "tempered SMC produced a non-finite log evidence or non-finite samples; check that "
            "log_prior and log_likelihood are finite (and differentiable, for HMC) on the "
            "posterior's support."
        )
    return SMCResult(
        samples=samples,
        log_evidence=log_evidence,
        num_tempering_steps=num_steps,
        tempering_schedule=carry.schedule[:num_steps],
        log_evidence_increments=carry.increments[:num_steps],
        ess=carry.ess[:num_steps],
        acceptance_rate=carry.acceptance[:num_steps],
        step_size=carry.step_size[:num_steps],
        final_acceptance_rate=carry.acceptance[num_steps],
    )


def _whitened_mixture_log_prob(log_constants, means, whiteners, x):
    """``log sum_k exp(c_k - |W_k (x - mu_k)|^2 / 2)`` for one point ``x`` of shape ``(d,)``."""
    z = jnp.einsum("kij,kj->ki", whiteners, x - means, precision=jax.lax.Precision.HIGHEST)
    return jax.nn.logsumexp(log_constants - 0.5 * jnp.sum(z**2, axis=-1))


def mixture_log_density(prior) -> jax.tree_util.Partial:
    """The log density of a Gaussian mixture as a traced-array :class:`~jax.tree_util.Partial`.

    The whitening factors ``W_k = L_k^{-1}`` (``Sigma_k = L_k L_k^T``) and the constants
    ``log w_k - log det L_k - d log(2 pi) / 2`` are computed once on the host in float64, so that
    each evaluation is one batched matrix product (``GaussianMixture.log_prob`` factors every
    covariance at every call, which dominates an SMC run's cost and compile time). The arrays
    are leaves of the returned ``Partial``: mixtures of one shape share a compiled sampler.

    Args:
        prior: A Gaussian mixture with ``weights (K,)``, ``means (K, d)`` and symmetric positive
            definite ``covs (K, d, d)`` (e.g. ``amortized_ppl.models.inverse_problems.GaussianMixture``).

    Returns:
        ``log_prob(x (d,)) -> ()``, equal to ``prior.log_prob`` up to float32 rounding.

    Raises:
        ValueError: If a covariance is not positive definite.
    """
    weights = np.asarray(prior.weights, np.float64)
    means = np.asarray(prior.means, np.float64)
    covs = np.asarray(prior.covs, np.float64)
    dtype = jnp.asarray(prior.means).dtype
    try:
        factors = np.linalg.cholesky(covs)  # host LAPACK, float64
    except np.linalg.LinAlgError:
        raise ValueError("prior.covs must be positive definite.") from None
    whiteners = np.linalg.inv(factors)
    log_det = np.sum(np.log(np.diagonal(factors, axis1=-2, axis2=-1)), axis=-1)
    with np.errstate(divide="ignore"):
        log_weights = np.log(weights / weights.sum())
    log_constants = log_weights - log_det - 0.5 * means.shape[-1] * math.log(2.0 * math.pi)
    return jax.tree_util.Partial(
        _whitened_mixture_log_prob,
        jnp.asarray(log_constants, dtype),
        jnp.asarray(means, dtype),
        jnp.asarray(whiteners, dtype),
    )


def problem_reference(key, problem, num_particles: int = 2000, **kwargs) -> SMCResult:
    """Ground truth for an inverse problem: :func:`tempered_smc_posterior` from prior draws.

    Draws ``num_particles`` initial particles with ``problem.prior.sample`` and tempers from the
    prior to ``prior x exp(problem.log_likelihood)``. The prior's density is
    :func:`mixture_log_density` (arrays traced), so repeated calls on one problem reuse the
    compiled program (the likelihood is static, by identity).

    Args:
        key: A JAX PRNG key (split into the prior draws' and the sampler's).
        problem: A ``amortized_ppl.models.inverse_problems.InverseProblem``, or any object with ``prior``
            (a Gaussian mixture with ``weights``, ``means``, ``covs`` and
            ``sample(key, n) -> (n, d)``) and ``log_likelihood`` (``x (..., d) -> (...)``).
        num_particles: Number of particles ``N``, at least 2.
        **kwargs: Keyword arguments of :func:`tempered_smc_posterior`.

    Returns:
        An :class:`SMCResult`; ``log_evidence`` estimates ``log p(y)`` (the prior is normalized).

    Examples:
        >>> from amortized_ppl.models.inverse_problems import toy_2d_problem
        >>> result = problem_reference(jax.random.key(0), toy_2d_problem(), num_particles=1000)
        >>> result.samples.shape
        (1000, 2)
    """
    check_key(key, "key")
    num_particles = check_int(num_particles, "num_particles", 2)
    for name in ("prior", "log_likelihood"):
        if not hasattr(problem, name):
            raise TypeError(
                f"problem must be an InverseProblem (with prior and log_likelihood); it has no "
                f"attribute {name!r}."
            )
    key_prior, key_smc = jax.random.split(key)
    particles = problem.prior.sample(key_prior, num_particles)
    log_prior = mixture_log_density(problem.prior)
    return tempered_smc_posterior(key_smc, log_prior, problem.log_likelihood, particles, **kwargs)
