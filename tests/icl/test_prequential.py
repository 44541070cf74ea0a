"""Prequential code length (amortized_ppl/icl/prequential.py): exactness against the evidence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.icl import (
    bayesian_linear_predictor,
    linear_regression,
    prequential_code_length,
    sample_tasks,
)
from amortized_ppl.models.linear_regression import exact_posterior, log_evidence


@pytest.mark.parametrize(
    "x_dim", [1, pytest.param(3, marks=pytest.mark.slow), pytest.param(8, marks=pytest.mark.slow)]
)
def test_exact_predictor_codes_the_data_in_minus_log_evidence_nats(x_dim):
    # The chain rule: sum_i -log p(y_i | x_i, d_<i) = -log p(y | x) for the exact model.
    noise = 0.3
    batch = sample_tasks(
        jax.random.key(x_dim),
        linear_regression(x_dim, noise_scale=noise),
        1,
        max_context=40,
        min_context=40,
    )
    x, y = batch.context_x[0], batch.context_y[0]
    result = prequential_code_length(bayesian_linear_predictor(noise), x, y)
    evidence = log_evidence(x, y, sigma=noise, prior_scale=1.0)
    # float32: the total is ~ 10-60 nats, each term carries ~1e-6 relative error.
    np.testing.assert_allclose(result.total_nats, -evidence, rtol=2e-5, atol=2e-4)
    np.testing.assert_allclose(result.total_bits, result.total_nats / np.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(result.curve_nats, np.cumsum(result.per_point_nats), rtol=1e-5)
    # Every prefix is coded exactly as well: the curve is -log p(y_<=i | x_<=i).
    i = 7
    np.testing.assert_allclose(
        result.curve_nats[i - 1],
        -log_evidence(x[:i], y[:i], sigma=noise, prior_scale=1.0),
        rtol=2e-5,
        atol=2e-4,
    )


@pytest.mark.slow  # ~1 s of compilation; the default tier's exactness test is above
def test_exact_predictor_ignores_padding_and_matches_the_posterior():
    noise = 0.2
    predict = bayesian_linear_predictor(noise, return_moments=True)
    x = jax.random.normal(jax.random.key(1), (10, 2))
    y = jax.random.normal(jax.random.key(2), (10,))
    mask = jnp.arange(10) < 6
    queries = jax.random.normal(jax.random.key(3), (3, 2))
    mean, log_scale = predict(x, y, mask, queries)
    garbage = predict(x.at[8].set(1e3), y.at[9].set(-1e3), mask, queries)
    np.testing.assert_allclose(mean, garbage[0], rtol=1e-6)
    posterior = exact_posterior(x[:6], y[:6], sigma=noise, prior_scale=1.0)
    design = jnp.concatenate([queries, jnp.ones((3, 1))], axis=1)
    np.testing.assert_allclose(mean, design @ posterior.mean, rtol=1e-4, atol=1e-5)
    variance = noise**2 + jnp.einsum("qi,ij,qj->q", design, posterior.cov, design)
    np.testing.assert_allclose(jnp.exp(2 * log_scale), variance, rtol=1e-4)


def test_bad_inputs_name_the_argument():
    predict = bayesian_linear_predictor(0.5)
    with pytest.raises(ValueError, match="y: expected shape"):
        prequential_code_length(predict, jnp.zeros((4, 1)), jnp.zeros(3))
    with pytest.raises(ValueError, match="x: expected"):
        prequential_code_length(predict, jnp.zeros(4), jnp.zeros(4))
    with pytest.raises(TypeError, match="log_predictive"):
        prequential_code_length("not a predictor", jnp.zeros((4, 1)), jnp.zeros(4))
    with pytest.raises(ValueError, match="expected \\(m,\\) log densities"):
        prequential_code_length(lambda *a: jnp.zeros(2), jnp.zeros((4, 1)), jnp.zeros(4))
    with pytest.raises(ValueError, match="noise_scale"):
        bayesian_linear_predictor(0.0)
