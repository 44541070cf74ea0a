"""The pseudo-observation encoder (encoders/pseudo_observations.py): sums over rows, ignores
padding and order, and its factors give the exact posterior of a linear-Gaussian model."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.encoders import PseudoObservations
from amortized_ppl.encoders.pseudo_observations import split_factor_summary
from amortized_ppl.families.gaussian_factors import factor_posterior
from amortized_ppl.models.linear_regression import NOISE_SCALE, exact_posterior

D, T = 3, 4


def _encoder(**settings):
    return PseudoObservations(**settings).build(jax.random.key(0), T, latent_dim=D)


def test_the_summary_is_a_sum_over_rows_blind_to_order_and_padding():
    encoder = _encoder(rank=2, summary_size=5, width=8, depth=1)
    rows = jax.random.normal(jax.random.key(1), (6, T))
    out = encoder(rows)
    assert out.shape == (D * (D + 1) // 2 + D + 5,) == (encoder.out_size,)
    np.testing.assert_allclose(encoder(rows[::-1]), out, rtol=1e-5, atol=1e-5)
    padded = jnp.concatenate([rows, jnp.full((3, T), jnp.nan)])
    mask = jnp.arange(9) < 6
    np.testing.assert_allclose(encoder(padded, mask), out, rtol=1e-5, atol=1e-5)
    # summed, not averaged: the data set twice over has twice the precision and shift
    twice = encoder(jnp.concatenate([rows, rows]))
    k = D * (D + 1) // 2 + D
    np.testing.assert_allclose(twice[:k], 2 * out[:k], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(twice[k:], out[k:], rtol=1e-4, atol=1e-5)  # features: a mean
    precision, _, _ = split_factor_summary(out, D)
    assert np.all(np.linalg.eigvalsh(np.asarray(precision)) > -1e-5)  # a sum of U U^T


def test_linear_gaussian_factors_give_the_exact_posterior():
    """With U_n = x_n / sigma and g_n = y_n / sigma (prior N(0, I) on [w, b]), the encoder's
    sums and factor_posterior are Bayes' rule for known-noise linear regression."""
    key_x, key_y = jax.random.split(jax.random.key(2))
    x = jax.random.normal(key_x, (25, D - 1))
    y = jax.random.normal(key_y, (25,))
    encoder = _encoder(rank=1, summary_size=0, width=4, depth=0)
    design = jnp.concatenate([x, jnp.ones((25, 1))], axis=1)  # rows [x, 1] -> factor [x, 1]
    weight = jnp.zeros((D + 1, T)).at[:D, : D - 1].set(jnp.eye(D, D - 1) / NOISE_SCALE)
    bias = jnp.zeros(D + 1).at[D - 1].set(1 / NOISE_SCALE)
    weight = weight.at[D, D - 1].set(1 / NOISE_SCALE)  # the target g_n = y_n / sigma
    encoder = eqx.tree_at(lambda e: (e.linear.weight, e.linear.bias), encoder, (weight, bias))
    encoder = eqx.tree_at(lambda e: e.mlp.layers[-1].weight, encoder,
                          jnp.zeros_like(encoder.mlp.layers[-1].weight))
    encoder = eqx.tree_at(lambda e: e.mlp.layers[-1].bias, encoder,
                          jnp.zeros_like(encoder.mlp.layers[-1].bias))
    tokens = jnp.concatenate([x, y[:, None], jnp.zeros((25, T - D))], axis=1)
    precision, shift, _ = split_factor_summary(encoder(tokens), D)
    np.testing.assert_allclose(precision, design.T @ design / NOISE_SCALE**2, rtol=1e-4)
    loc, tril, _, _ = factor_posterior(precision, shift, jnp.zeros(D), jnp.eye(D))
    exact = exact_posterior(x, y)
    np.testing.assert_allclose(loc, exact.mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tril @ tril.T, exact.cov, rtol=1e-3, atol=1e-6)


def test_factor_posterior_maps_through_the_prior_frame():
    precision = jnp.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 3.0]])
    shift = jnp.array([0.3, -1.0, 2.0])
    prior_loc, prior_tril = jnp.array([1.0, 2.0, 3.0]), jnp.array(
        [[2.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.1, -0.3, 0.5]])
    loc, tril, mean, log_sd = factor_posterior(precision, shift, prior_loc, prior_tril)
    cov_v = np.linalg.inv(np.eye(D) + np.asarray(precision))
    np.testing.assert_allclose(mean, cov_v @ np.asarray(shift), rtol=1e-5)
    np.testing.assert_allclose(log_sd, 0.5 * np.log(np.diag(cov_v)), rtol=1e-5)
    np.testing.assert_allclose(loc, prior_loc + prior_tril @ mean, rtol=1e-5)
    np.testing.assert_allclose(tril @ tril.T, prior_tril @ cov_v @ prior_tril.T, rtol=1e-4,
                               atol=1e-6)
    assert np.allclose(np.triu(np.asarray(tril), 1), 0)


def test_the_encoder_needs_the_latent_dimension_and_sane_settings():
    with pytest.raises(ValueError, match="latent_dim"):
        PseudoObservations().build(jax.random.key(0), T)
    with pytest.raises(ValueError, match="rank"):
        PseudoObservations(rank=0)
    with pytest.raises(ValueError, match="tokens must have shape"):
        _encoder()(jnp.zeros((5, T + 1)))
