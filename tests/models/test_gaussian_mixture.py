"""The Gaussian mixture (amortized_ppl/models/gaussian_mixture.py): density, score, sampling, checks.

The mixtures come from the inverse-problem priors (amortized_ppl/models/inverse_problems.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.models.gaussian_mixture import gaussian_mixture
from amortized_ppl.models.inverse_problems import grid_prior_2d, random_gmm_prior


def test_log_prob_matches_numpyro_mixture(key):
    prior = random_gmm_prior(key, 8, 8)
    x = prior.sample(jax.random.key(1), 64) + 0.5

    @jax.jit
    def compute(gmm, x):
        return gmm.log_prob(x), gmm.to_numpyro().log_prob(x), gmm.log_prob(x.reshape(4, 16, 8))

    ours, numpyro_log_prob, reshaped = compute(prior, x)
    np.testing.assert_allclose(ours, numpyro_log_prob, rtol=1e-5, atol=1e-3)
    assert reshaped.shape == (4, 16)


@pytest.mark.slow
def test_sample_moments(key):
    prior = random_gmm_prior(key, 8, 8)
    draws = prior.sample(jax.random.key(2), 40_000)
    assert draws.shape == (40_000, 8)
    # Marginal SDs are about 3, so the mean's standard error is about 0.015.
    np.testing.assert_allclose(jnp.mean(draws, 0), prior.mean(), atol=0.075)
    np.testing.assert_allclose(jnp.cov(draws.T), prior.covariance(), rtol=0.05, atol=0.25)


def test_score_matches_finite_differences(key):
    prior = random_gmm_prior(key, 8, 8)
    x = prior.sample(jax.random.key(3), 16) * 1.1
    eps = 1e-2
    shifts = eps * jnp.eye(8)

    @jax.jit
    def compute(prior, x):
        plus = prior.log_prob(x[:, None, :] + shifts)
        minus = prior.log_prob(x[:, None, :] - shifts)
        return prior.score(x), (plus - minus) / (2 * eps), prior.score(x.reshape(2, 8, 8))

    score, finite_differences, reshaped = compute(prior, x)
    np.testing.assert_allclose(score, finite_differences, rtol=1e-2, atol=2e-2)
    assert reshaped.shape == (2, 8, 8)
    noised = prior.noised(0.8, 0.6)
    np.testing.assert_allclose(noised.covs, 0.64 * prior.covs + 0.36 * jnp.eye(8), rtol=1e-6)


def test_gaussian_mixture_validates():
    with pytest.raises(ValueError, match=r"weights must have shape \(K,\) = \(2,\)"):
        gaussian_mixture(jnp.ones(3), jnp.zeros((2, 1)), jnp.ones((2, 1, 1)))
    with pytest.raises(ValueError, match="positive definite"):
        gaussian_mixture(jnp.ones(2), jnp.zeros((2, 2)), -jnp.eye(2))
    with pytest.raises(ValueError, match="means: expected finite values"):
        gaussian_mixture(jnp.ones(1), jnp.array([[jnp.nan]]), jnp.ones((1, 1)))
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 2\)"):
        grid_prior_2d().log_prob(jnp.zeros(3))
