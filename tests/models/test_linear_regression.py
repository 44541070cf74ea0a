"""Tests of the linear-regression zoo model: sites, design, and the closed-form oracles.

The oracles are checked against independent float64 NumPy computations: the posterior by direct
Gaussian conditioning of the joint (theta, y), the evidence by the multivariate normal density of
the marginal of y. The JAX code runs in float32; relative float32 error of a Cholesky solve on
these well-conditioned systems is ~1e-6, so 1e-5 is a tight but safe tolerance.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
from numpyro.infer import Predictive
from scipy.stats import multivariate_normal

from amortized_ppl.models.linear_regression import (
    NOISE_SCALE,
    GaussianPosterior,
    design_fn,
    exact_posterior,
    log_evidence,
    model,
    model_known_noise,
)

NUM_OBS = 30
NUM_FEATURES = 3
ATOL = 1e-5


@jax.jit
def _draw_data(key, sigma):
    """One data set from the known-noise model's prior predictive (written out, and jitted)."""
    key_design, key_theta, key_noise = jax.random.split(key, 3)
    (x,), _ = design_fn(key_design, NUM_OBS, num_features=NUM_FEATURES)
    theta = jax.random.normal(key_theta, (NUM_FEATURES + 1,))
    noise = sigma * jax.random.normal(key_noise, (NUM_OBS,))
    return x, x @ theta[:-1] + theta[-1] + noise


def _data(key, sigma=NOISE_SCALE):
    return _draw_data(key, sigma)


def _numpy_posterior(x, y, sigma, prior_scale):
    """Posterior of theta = [w, b] by conditioning the joint Gaussian of (theta, y), in float64."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    design = np.hstack([x, np.ones((x.shape[0], 1))])
    prior_cov = prior_scale**2 * np.eye(design.shape[1])
    cov_theta_y = prior_cov @ design.T
    cov_y = design @ prior_cov @ design.T + sigma**2 * np.eye(x.shape[0])
    gain = np.linalg.solve(cov_y, cov_theta_y.T).T
    return gain @ y, prior_cov - gain @ cov_theta_y.T, cov_y


# ---------------------------------------------------------------------------------------------
# Models and design
# ---------------------------------------------------------------------------------------------


def test_design_fn_shapes_and_determinism(key):
    (x,), kwargs = design_fn(key, 17, num_features=4)
    assert x.shape == (17, 4)
    assert kwargs == {}
    (x_again,), _ = design_fn(key, 17, num_features=4)
    np.testing.assert_array_equal(x, x_again)
    (x_other,), _ = design_fn(jax.random.key(1), 17, num_features=4)
    assert not np.allclose(x, x_other)
    (x_default,), _ = design_fn(key, 5)
    assert x_default.shape == (5, 8)


@pytest.mark.parametrize("bad", [dict(num_obs=0), dict(num_features=0), dict(num_obs=2.5)])
def test_design_fn_rejects_bad_sizes(key, bad):
    arguments = dict(num_obs=5, num_features=2) | bad
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        design_fn(key, **arguments)


def test_model_sites_and_shapes(key):
    (x,), _ = design_fn(key, NUM_OBS, num_features=NUM_FEATURES)
    trace = numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace(x)
    assert set(trace) == {"w", "b", "sigma", "y", "data"}
    assert trace["w"]["value"].shape == (NUM_FEATURES,)
    assert trace["b"]["value"].shape == ()
    assert trace["sigma"]["value"] > 0
    assert trace["y"]["value"].shape == (NUM_OBS,)
    assert not trace["y"]["is_observed"]

    trace = numpyro.handlers.trace(numpyro.handlers.seed(model_known_noise, 0)).get_trace(x)
    latent = {k for k, v in trace.items() if v["type"] == "sample" and not v["is_observed"]}
    assert latent == {"w", "b", "y"}  # y is sampled, not observed, when simulating
    trace = numpyro.handlers.trace(numpyro.handlers.seed(model_known_noise, 0)).get_trace(
        x, jnp.zeros(NUM_OBS)
    )
    latent = {k for k, v in trace.items() if v["type"] == "sample" and not v["is_observed"]}
    assert latent == {"w", "b"}
    assert trace["y"]["fn"].scale == pytest.approx(NOISE_SCALE)


def test_model_known_noise_uses_sigma_keyword(key):
    (x,), _ = design_fn(key, 200, num_features=1)
    conditioned = numpyro.handlers.condition(
        model_known_noise, data={"w": jnp.zeros(1), "b": jnp.array(0.0)}
    )
    y = Predictive(conditioned, num_samples=1)(jax.random.key(1), x, sigma=3.0)["y"][0]
    assert 2.5 < float(jnp.std(y)) < 3.5


def test_model_rejects_bad_shapes(key):
    (x,), _ = design_fn(key, NUM_OBS, num_features=NUM_FEATURES)
    seeded = numpyro.handlers.seed(model, 0)
    with pytest.raises(ValueError, match="x must be a 2-D"):
        seeded(x[:, 0])
    with pytest.raises(ValueError, match="y must be"):
        seeded(x, jnp.zeros(NUM_OBS + 1))


# ---------------------------------------------------------------------------------------------
# Exact posterior
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma, prior_scale", [(NOISE_SCALE, 1.0), (2.0, 0.3)])
def test_exact_posterior_matches_gaussian_conditioning(key, sigma, prior_scale):
    x, y = _data(key, sigma=sigma)
    posterior = exact_posterior(x, y, sigma=sigma, prior_scale=prior_scale)
    mean, cov, _ = _numpy_posterior(x, y, sigma, prior_scale)
    assert isinstance(posterior, GaussianPosterior)
    assert posterior.mean.shape == (NUM_FEATURES + 1,)
    assert posterior.cov.shape == (NUM_FEATURES + 1, NUM_FEATURES + 1)
    np.testing.assert_allclose(posterior.mean, mean, atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(posterior.cov, cov, atol=ATOL, rtol=ATOL)
    np.testing.assert_array_equal(posterior.cov, posterior.cov.T)


def test_marginals_split_by_site(key):
    x, y = _data(key)
    posterior = exact_posterior(x, y)
    marginals = posterior.marginals()
    assert marginals.mean["w"].shape == (NUM_FEATURES,)
    assert marginals.mean["b"].shape == ()
    np.testing.assert_allclose(marginals.mean["w"], posterior.mean[:NUM_FEATURES])
    np.testing.assert_allclose(marginals.mean["b"], posterior.mean[-1])
    sd = np.sqrt(np.diag(posterior.cov))
    np.testing.assert_allclose(marginals.sd["w"], sd[:NUM_FEATURES], rtol=1e-6)
    np.testing.assert_allclose(marginals.sd["b"], sd[-1], rtol=1e-6)
    distribution = posterior.to_distribution()
    assert distribution.event_shape == (NUM_FEATURES + 1,)


def test_exact_posterior_recovers_truth_with_much_data(key):
    (x,), _ = design_fn(key, 5000, num_features=NUM_FEATURES)
    w, b = jnp.array([1.0, -2.0, 0.5]), 0.7
    y = x @ w + b + NOISE_SCALE * jax.random.normal(jax.random.key(3), (5000,))
    marginals = exact_posterior(x, y).marginals()
    np.testing.assert_allclose(marginals.mean["w"], w, atol=5 * NOISE_SCALE / np.sqrt(5000))
    np.testing.assert_allclose(marginals.mean["b"], b, atol=5 * NOISE_SCALE / np.sqrt(5000))


def test_exact_posterior_and_evidence_vmap(key):
    keys = jax.random.split(key, 3)
    xs, ys = jax.vmap(_data)(keys)
    batched = jax.jit(jax.vmap(exact_posterior))(xs, ys)
    assert batched.mean.shape == (3, NUM_FEATURES + 1)
    assert batched.cov.shape == (3, NUM_FEATURES + 1, NUM_FEATURES + 1)
    marginals = batched.marginals()
    assert marginals.mean["w"].shape == (3, NUM_FEATURES)
    assert marginals.sd["b"].shape == (3,)
    evidence = jax.jit(jax.vmap(log_evidence))(xs, ys)
    assert evidence.shape == (3,)
    for i in range(3):
        single = exact_posterior(xs[i], ys[i])
        np.testing.assert_allclose(batched.mean[i], single.mean, atol=ATOL)
        np.testing.assert_allclose(batched.cov[i], single.cov, atol=ATOL)
        np.testing.assert_allclose(evidence[i], log_evidence(xs[i], ys[i]), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Evidence
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma, prior_scale", [(NOISE_SCALE, 1.0), (2.0, 0.3)])
def test_log_evidence_matches_marginal_density(key, sigma, prior_scale):
    x, y = _data(key, sigma=sigma)
    _, _, cov_y = _numpy_posterior(x, y, sigma, prior_scale)
    expected = multivariate_normal(np.zeros(NUM_OBS), cov_y).logpdf(np.asarray(y, np.float64))
    got = log_evidence(x, y, sigma=sigma, prior_scale=prior_scale)
    assert got.shape == ()
    # |log p| ~ 30-60 here; float32 keeps ~7 digits, so 1e-4 relative is ample.
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_log_evidence_satisfies_bayes_identity(key):
    """log p(y) = log p(y | theta) + log p(theta) - log p(theta | y) for any theta."""
    x, y = _data(key)
    posterior = exact_posterior(x, y)
    theta = posterior.mean + 0.1
    w, b = theta[:-1], theta[-1]
    # Full float32 products: accelerators default to TF32 for float32 matmuls.
    mean_fn = jnp.matmul(x, w, precision=jax.lax.Precision.HIGHEST) + b
    log_lik = jnp.sum(jax.scipy.stats.norm.logpdf(y, mean_fn, NOISE_SCALE))
    log_prior = jnp.sum(jax.scipy.stats.norm.logpdf(theta))
    log_post = posterior.to_distribution().log_prob(theta)
    np.testing.assert_allclose(log_evidence(x, y), log_lik + log_prior - log_post, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("oracle", [exact_posterior, log_evidence])
def test_oracles_validate_inputs(key, oracle):
    x, y = _data(key)
    with pytest.raises(ValueError, match="x must be a 2-D"):
        oracle(x[:, 0], y)
    with pytest.raises(ValueError, match="y must be a 1-D"):
        oracle(x, y[:-1])
    with pytest.raises(ValueError, match="y must be a 1-D"):
        oracle(x, y[:, None])
    with pytest.raises(ValueError, match="x: expected finite values"):
        oracle(x.at[2, 1].set(jnp.nan), y)
    with pytest.raises(ValueError, match="y: expected finite values"):
        oracle(x, y.at[0].set(jnp.inf))
    with pytest.raises(ValueError, match="sigma must be positive"):
        oracle(x, y, sigma=0.0)
    with pytest.raises(ValueError, match="prior_scale must be positive"):
        oracle(x, y, prior_scale=-1.0)


def test_exact_posterior_checks_finiteness_under_jit(key):
    x, y = _data(key)
    jitted = eqx.filter_jit(exact_posterior)
    with pytest.raises(eqx.EquinoxRuntimeError, match="x: expected finite values"):
        jitted(x.at[0, 0].set(jnp.nan), y)
    # Finite inputs pass through jit unchanged.
    np.testing.assert_allclose(jitted(x, y).mean, exact_posterior(x, y).mean, atol=ATOL)
