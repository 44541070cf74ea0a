"""Tests of the tempered-SMC ground truth (:mod:`amortized_ppl.diffusion.ground_truth`).

Statistical tolerances. Tempering from the prior fixes each mode's share of the particles at the
prior draw; later steps only reweight and resample, and the moves stay within modes. At the level
of modes the SMC weight estimates therefore behave like self-normalized importance sampling of
the posterior mode weights ``p`` from the prior's ``pi`` with ``N`` draws:
``Cov(p_hat_k, p_hat_l) = (1/N) sum_j pi_j r_j^2 (delta_jk - p_k)(delta_jl - p_l)``,
``r_j = p_j / pi_j`` (:func:`_mode_weight_covariance`), which exceeds multinomial sampling of
``p`` by the factor ``sum_j p_j^2 / pi_j`` (about 11 on the 2-D toy). Over 20 keys (2-D toy,
``N = 4000``; 8-D blurs and inpainting, ``N = 2000``) the observed mean total variation was
1.1-1.6 times the model's expectation, the largest 1.9-3.7 times, and the largest per-coordinate
mean error 3.4 of the model's standard errors; the log-evidence errors had SD 0.044 (toy) and
0.056-0.070 (8-D). The tolerances below are about 3-4 of those SDs, with a fixed key.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.diffusion.ground_truth import (
    SMCResult,
    mixture_log_density,
    problem_reference,
    tempered_smc_posterior,
)
from amortized_ppl.models.inverse_problems import blur_problem, toy_2d_problem


def _mode_weight_covariance(posterior_weights, prior_weights, num_particles: int) -> np.ndarray:
    """Importance-sampling covariance ``(K, K)`` of mode weights estimated from prior draws."""
    p = np.asarray(posterior_weights, np.float64)
    pi = np.asarray(prior_weights, np.float64)
    ratio = p / pi
    centred = np.eye(p.size) - p[None, :]  # [j, k] = delta_jk - p_k
    return np.einsum("j,jk,jl->kl", pi * ratio**2, centred, centred) / num_particles


def _expected_total_variation(covariance: np.ndarray) -> float:
    """``E[0.5 sum_k |p_hat_k - p_k|]`` for Gaussian errors with this covariance."""
    return 0.5 * math.sqrt(2.0 / math.pi) * float(np.sum(np.sqrt(np.diag(covariance))))


def _mode_weights(posterior, samples) -> np.ndarray:
    counts = np.bincount(np.asarray(posterior.assign(samples)), minlength=posterior.num_components)
    return counts / samples.shape[0]


# Module-scoped problems: building one compiles its exact posterior, and its log_likelihood
# (by identity) keys the compiled sampler.
@pytest.fixture(scope="module")
def toy():
    return toy_2d_problem()


@pytest.fixture(scope="module")
def blur():
    # A "valid" blur with an exact null space: two posterior modes (weights 0.604 and 0.396)
    # that differ only in what the blur cannot see.
    return blur_problem(jax.random.key(1), d=8)


def _check_result(result: SMCResult, num_particles: int, dim: int) -> None:
    num_steps = result.num_tempering_steps
    assert result.samples.shape == (num_particles, dim)
    assert result.log_evidence.shape == ()
    for history in (
        result.tempering_schedule,
        result.log_evidence_increments,
        result.ess,
        result.acceptance_rate,
        result.step_size,
    ):
        assert history.shape == (num_steps,)
        assert bool(jnp.all(jnp.isfinite(history)))
    schedule = np.asarray(result.tempering_schedule)
    assert schedule[-1] == 1.0
    assert np.all(np.diff(schedule) > 0) and schedule[0] > 0
    np.testing.assert_allclose(
        float(jnp.sum(result.log_evidence_increments)), float(result.log_evidence), atol=1e-5
    )
    assert bool(jnp.all((result.ess > 0) & (result.ess <= 1 + 1e-6)))
    # The step size adapts towards 0.75 acceptance; a frozen or diverging kernel would show here.
    assert 0.5 < float(result.final_acceptance_rate) <= 1.0


@pytest.mark.slow  # tempered SMC to its statistical targets
def test_toy_2d_mode_weights_and_evidence(toy):
    num_particles = 4000
    result = problem_reference(jax.random.key(0), toy, num_particles=num_particles)
    _check_result(result, num_particles, 2)

    posterior = toy.exact_posterior
    weights = _mode_weights(posterior, result.samples)
    covariance = _mode_weight_covariance(posterior.weights, toy.prior.weights, num_particles)
    tolerance = 3.0 * _expected_total_variation(covariance)  # 3 x 0.021
    total_variation = 0.5 * np.sum(np.abs(weights - np.asarray(posterior.weights)))
    assert total_variation < tolerance, (total_variation, tolerance, np.round(weights, 4))
    # 9 main modes; the 16 outer ones hold 7.8e-4 of the mass.
    assert weights[[6, 7, 8, 11, 12, 13, 16, 17, 18]].sum() > 0.99

    # log Z: SD 0.044 over 20 keys at N = 4000; -6.40331 exactly.
    assert abs(float(result.log_evidence - toy.log_evidence)) < 0.15

    # Deterministic given the key (the compiled program is reused).
    again = problem_reference(jax.random.key(0), toy, num_particles=num_particles)
    np.testing.assert_array_equal(np.asarray(again.samples), np.asarray(result.samples))
    assert float(again.log_evidence) == float(result.log_evidence)

    # The toy needs 4 tempering steps: a cap of 2 raises (same compiled program).
    with pytest.raises(RuntimeError, match="did not reach lambda = 1.*max_iterations=2"):
        problem_reference(jax.random.key(0), toy, num_particles=num_particles, max_iterations=2)


@pytest.mark.slow  # statistical only (the toy test checks the API in the default tier)
def test_blur_8d_moments_and_evidence(blur):
    problem = blur
    posterior = problem.exact_posterior
    num_particles = 2000
    result = problem_reference(jax.random.key(2), problem, num_particles=num_particles)
    _check_result(result, num_particles, 8)
    samples = np.asarray(result.samples, np.float64)

    covariance = _mode_weight_covariance(posterior.weights, problem.prior.weights, num_particles)
    weights = _mode_weights(posterior, result.samples)
    total_variation = 0.5 * np.sum(np.abs(weights - np.asarray(posterior.weights)))
    assert total_variation < 4.0 * _expected_total_variation(covariance)  # 4 x 0.019

    # Mean: standard error from the mode weights' covariance plus within-mode Monte Carlo.
    means = np.asarray(posterior.means, np.float64)
    p = np.asarray(posterior.weights, np.float64)
    within = np.einsum("k,kii->i", p, np.asarray(posterior.covs, np.float64))
    standard_error = np.sqrt(
        np.einsum("ki,kl,li->i", means, covariance, means) + within / num_particles
    )
    exact_mean = np.asarray(posterior.mean(), np.float64)
    z = np.abs(samples.mean(axis=0) - exact_mean) / standard_error
    assert np.all(z < 4.5), np.round(z, 2)
    # Per-coordinate SD within 10% (largest error over 20 keys: 5.7%).
    exact_sd = np.sqrt(np.diag(np.asarray(posterior.covariance(), np.float64)))
    np.testing.assert_allclose(samples.std(axis=0), exact_sd, rtol=0.1)
    # log Z: SD 0.068 over 20 keys at N = 2000.
    assert abs(float(result.log_evidence - problem.log_evidence)) < 0.25


@pytest.mark.slow
def test_random_walk_kernel_on_toy(toy):
    num_particles = 4000
    result = problem_reference(
        jax.random.key(1), toy, num_particles=num_particles, kernel="rwmh", num_mcmc_steps=20
    )
    assert result.samples.shape == (num_particles, 2)
    posterior = toy.exact_posterior
    covariance = _mode_weight_covariance(posterior.weights, toy.prior.weights, num_particles)
    weights = _mode_weights(posterior, result.samples)
    total_variation = 0.5 * np.sum(np.abs(weights - np.asarray(posterior.weights)))
    assert total_variation < 3.0 * _expected_total_variation(covariance)
    assert abs(float(result.log_evidence - toy.log_evidence)) < 0.15


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_mixture_log_density_matches_log_prob(blur):
    prior = blur.prior  # 8 components with full covariances in R^8
    # Points at, between and far from the modes (no sampling: one compilation fewer).
    x = jnp.concatenate([prior.means, 0.5 * prior.means[::-1] + 0.3 * prior.means, -prior.means])
    fast = jax.jit(jax.vmap(mixture_log_density(prior)))(x)
    np.testing.assert_allclose(fast, prior.log_prob(x), rtol=1e-5, atol=1e-4)


def _gaussian_log_prior(x):
    return -0.5 * jnp.sum(x**2)


def _gaussian_log_likelihood(x):
    return -0.5 * jnp.sum((x - 1.0) ** 2) / 0.01


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
@pytest.mark.parametrize(
    ("particles", "message"),
    [
        (np.zeros(10), "shape \\(N, d\\)"),
        (np.zeros((1, 2)), "shape \\(N, d\\)"),
        (np.zeros((10, 2, 1)), "shape \\(N, d\\)"),
        (np.array([[0.0, 0.0], [np.nan, 1.0], [1.0, 1.0]]), "initial_particles must be finite"),
    ],
)
def test_bad_particles_raise(particles, message):
    with pytest.raises(ValueError, match=message):
        tempered_smc_posterior(
            jax.random.key(0), _gaussian_log_prior, _gaussian_log_likelihood, particles
        )


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_non_finite_densities_raise():
    particles = jnp.array([[0.0, 0.0], [1.0, 1.0], [-1.0, 2.0]])

    def log_likelihood_with_a_hole(x):
        return jnp.where(x[0] > 0.5, -jnp.inf, _gaussian_log_likelihood(x))

    def nan_prior(x):
        return jnp.where(x[1] > 1.5, jnp.nan, _gaussian_log_prior(x))

    def vector_likelihood(x):
        return -0.5 * x**2

    key = jax.random.key(0)
    with pytest.raises(ValueError, match="log_likelihood is not finite at 1 of 3.*row 1"):
        tempered_smc_posterior(key, _gaussian_log_prior, log_likelihood_with_a_hole, particles)
    with pytest.raises(ValueError, match="log_prior is not finite at 1 of 3.*row 2"):
        tempered_smc_posterior(key, nan_prior, _gaussian_log_likelihood, particles)
    with pytest.raises(ValueError, match="log_likelihood must map one point"):
        tempered_smc_posterior(key, _gaussian_log_prior, vector_likelihood, particles)
    with pytest.raises(TypeError, match="log_prior must be a callable"):
        tempered_smc_posterior(key, None, _gaussian_log_likelihood, particles)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"target_ess": 1.0}, "target_ess"),
        ({"target_ess": 0.0}, "target_ess"),
        ({"kernel": "nuts"}, "kernel must be one of"),
        ({"num_mcmc_steps": 0}, "num_mcmc_steps"),
        ({"num_integration_steps": 2.5}, "num_integration_steps"),
        ({"max_iterations": 0}, "max_iterations"),
        ({"initial_step_size": -1.0}, "initial_step_size"),
        ({"target_acceptance": 1.5}, "target_acceptance"),
        ({"step_size_jitter": float("nan")}, "step_size_jitter"),
    ],
)
def test_bad_options_raise(option, message):
    particles = jnp.zeros((10, 2))
    with pytest.raises(ValueError, match=message):
        tempered_smc_posterior(
            jax.random.key(0), _gaussian_log_prior, _gaussian_log_likelihood, particles, **option
        )


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_bad_key_and_problem_raise(toy):
    particles = jnp.zeros((10, 2))
    with pytest.raises(TypeError, match="jax.random.key\\(0\\)"):
        tempered_smc_posterior(0, _gaussian_log_prior, _gaussian_log_likelihood, particles)
    with pytest.raises(TypeError, match="no attribute 'prior'"):
        problem_reference(jax.random.key(0), toy.prior)
    with pytest.raises(ValueError, match="num_particles"):
        problem_reference(jax.random.key(0), toy, num_particles=1)
