"""Posterior predictive draws with amortized guides: NumPyro's Predictive and the helper.

The guide is the exact one for known-noise linear regression (tests/helpers.py), so the
posterior predictive is known: ``y_rep_n ~ Normal(z_n @ m, sigma^2 + z_n S z_n^T)`` with
``z_n = [x_n, 1]`` and ``(m, S)`` the conjugate posterior.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer import Predictive

from amortized_ppl import given, posterior_predictive, unobserve
from amortized_ppl.models.linear_regression import exact_posterior, model_known_noise
from tests.helpers import exact_linear_guide
from tests.iterative.linear import data

SIGMA = 0.5


def _exact_predictive(x, y):
    posterior = exact_posterior(x, y, sigma=SIGMA)
    z = jnp.concatenate([x, jnp.ones((x.shape[0], 1))], axis=1)
    mean = z @ posterior.mean
    sd = jnp.sqrt(SIGMA**2 + jnp.einsum("nd,de,ne->n", z, posterior.cov, z))
    return mean, sd


def _z_scores(draws, mean, sd):
    """Monte Carlo z-scores of the draws' mean and SD per observation."""
    num = draws.shape[0]
    mean_z = (draws.mean(0) - mean) / (sd / np.sqrt(num))
    sd_z = (draws.std(0) - sd) / (sd / np.sqrt(2 * num))
    return np.abs(np.asarray(mean_z)), np.abs(np.asarray(sd_z))


@pytest.mark.slow  # compiles the guide's sampler for 4,000 draws (~10 s on 2 cores)
def test_the_helper_draws_the_exact_posterior_predictive(key):
    guide, params = exact_linear_guide()
    x, y = data(30)
    draws = posterior_predictive(key, guide, params, x, y, num_samples=4000)
    assert draws["y"].shape == (4000, 30) and draws["w"].shape == (4000, 3)
    mean_z, sd_z = _z_scores(draws["y"], *_exact_predictive(x, y))
    # 30 observations x 2 statistics: |z| above 4 has probability ~4e-3 under the exact
    # predictive; a guide off by a fifth of an SD in mean or scale crosses it.
    assert mean_z.max() < 4.0 and sd_z.max() < 4.0, (mean_z.max(), sd_z.max())
    again = posterior_predictive(key, guide, params, x, y, num_samples=4000)
    np.testing.assert_array_equal(draws["y"], again["y"])


@pytest.mark.slow  # compiles the guide inside Predictive's map over draws
def test_numpyro_predictive_with_the_guide_draws_the_observed_sites(key):
    guide, params = exact_linear_guide()
    x, y = data(30)
    # As NumPyro users call it with an autoguide: without the observations (the guide holds them).
    held = Predictive(model_known_noise, guide=given(guide, y=y), params=params,
                      num_samples=200)(key, x)
    # With the observations in the call: the model draws its observed site anew.
    redrawn = Predictive(unobserve(model_known_noise), guide=guide, params=params,
                         num_samples=200)(key, x, y)
    # The plain call returns the observations themselves (NumPyro's semantics of obs=).
    plain = Predictive(model_known_noise, guide=guide, params=params, num_samples=2)(key, x, y)
    np.testing.assert_array_equal(plain["y"][0], y)
    mean, sd = _exact_predictive(x, y)
    for out in (held, redrawn):
        assert out["y"].shape == (200, 30)
        assert not np.allclose(out["y"][0], y)
        mean_z, _ = _z_scores(out["y"], mean, sd)
        assert mean_z.max() < 4.0


def test_bad_calls_are_refused_by_name(key):
    guide, params = exact_linear_guide()
    x, y = data(30)
    with pytest.raises(ValueError, match=r"\['z'\] are not observed arguments"):
        given(guide, y=y, z=y)
    with pytest.raises(ValueError, match=r"observations \['y'\] are missing"):
        given(guide)
    with pytest.raises(ValueError, match="given to the guide already"):
        Predictive(model_known_noise, guide=given(guide, y=y), params=params,
                   num_samples=2)(key, x, y)
    with pytest.raises(ValueError, match="one data set at a time"):
        posterior_predictive(key, guide, params, jnp.stack([x, x]), jnp.stack([y, y]))
    with pytest.raises(ValueError, match=r"observations \['y'\] are missing"):
        posterior_predictive(key, guide, params, x)
    from amortized_ppl import AutoAmortizedNormal

    with pytest.raises(ValueError, match="not set up"):
        given(AutoAmortizedNormal(model_known_noise), y=y)
