"""The evidence by importance sampling: exact statistics of given weights, the closed form of
Bayesian linear regression with an exact guide, and a wrong guide flagged by k-hat."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from amortized_ppl import EvidenceResult, log_evidence
from amortized_ppl.diagnostics import evidence_from_log_weights
from amortized_ppl.diagnostics.psis import PSISResult, psis_diagnose
from amortized_ppl.models.linear_regression import log_evidence as exact_log_evidence
from tests.helpers import exact_linear_guide, small_design

NUM_OBS = 30

# Seed-to-seed spread of the exact guide's estimate, measured over seeds 0..9 (CPU, float32,
# the tests' fast-compile XLA flags) on data sets of N = 30 and 60, with S = 200 and 1000 draws:
# every weight equals p(D) up to float32 rounding, so the estimates agree with the closed form
# to at most 3.8e-6 (SD over seeds at most 1.2e-6), with reported standard errors of at most
# 1.2e-4. The tolerance below is 25 times the largest error seen and 1e-4 of a nat: far below
# any difference in log evidence that could change a model comparison.
EXACT_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def data():
    (x,), _ = small_design(jax.random.key(1), NUM_OBS)
    noise = 0.5 * jax.random.normal(jax.random.key(2), (NUM_OBS,))
    return x, x @ jnp.array([1.0, -0.5, 0.2]) + 0.3 + noise


# ---------------------------------------------------------------------------------------------
# Statistics of given weights (exact values)
# ---------------------------------------------------------------------------------------------


# One shape (2 rows of 200 draws) throughout: PSIS compiles once per shape.


def test_constant_weights_give_the_exact_value_and_a_bounded_tail():
    log_weights = jnp.full((2, 200), -7.25)
    result = evidence_from_log_weights(log_weights)
    assert isinstance(result, EvidenceResult) and result.num_samples == 200
    np.testing.assert_allclose(result.log_evidence, [-7.25, -7.25], rtol=1e-7)
    np.testing.assert_array_equal(result.standard_error, [0.0, 0.0])
    # PSIS says +inf (no tail to fit); for the evidence that is the exact case: -inf.
    assert np.all(np.asarray(psis_diagnose(log_weights).khat) == np.inf)
    np.testing.assert_array_equal(result.pareto_k, [-np.inf, -np.inf])
    np.testing.assert_allclose(result.ess, [200, 200], rtol=1e-5)


def test_estimate_and_standard_error_match_float64_formulas():
    rng = np.random.default_rng(0)
    log_weights = rng.normal(-40.0, 0.7, size=(2, 200))
    result = evidence_from_log_weights(jnp.asarray(log_weights, jnp.float32))
    num = log_weights.shape[-1]
    expected = scipy.special.logsumexp(log_weights, axis=-1) - math.log(num)
    np.testing.assert_allclose(result.log_evidence, expected, rtol=1e-6)
    # Delta method: sd(w) / (sqrt(S) mean(w)), with the unbiased variance.
    w = np.exp(log_weights - log_weights.max(axis=-1, keepdims=True))
    se = w.std(axis=-1, ddof=1) / (math.sqrt(num) * w.mean(axis=-1))
    np.testing.assert_allclose(result.standard_error, se, rtol=1e-4)
    smoothed = psis_diagnose(jnp.asarray(log_weights, jnp.float32))
    np.testing.assert_array_equal(result.pareto_k, smoothed.khat)
    np.testing.assert_array_equal(result.ess, smoothed.ess)
    assert result.log_evidence.shape == result.pareto_k.shape == (2,)
    assert np.all(np.asarray(result.pareto_k) < 0.5)
    # Given the PSIS result, the same statistics.
    again = evidence_from_log_weights(jnp.asarray(log_weights, jnp.float32), smoothed)
    np.testing.assert_array_equal(again.standard_error, result.standard_error)


def test_bad_input():
    with pytest.raises(ValueError, match=r"log_weights: expected shape \(..., S\) with S >= 2"):
        evidence_from_log_weights(jnp.zeros((4, 1)))
    with pytest.raises(ValueError, match=r"NaN or \+inf entries in data sets \[1\]"):
        evidence_from_log_weights(jnp.zeros((2, 200)).at[1, 3].set(jnp.nan))
    wrong_shape = PSISResult(jnp.zeros((3, 200)), jnp.zeros(3), jnp.zeros(3))
    with pytest.raises(ValueError, match=r"psis_result: expected k-hat of shape \(2,\)"):
        evidence_from_log_weights(jnp.zeros((2, 200)), wrong_shape)
    with pytest.raises(ValueError, match="num_samples: expected an int >= 2, got 1"):
        log_evidence(jax.random.key(0), None, None, num_samples=1)


# ---------------------------------------------------------------------------------------------
# With a guide: the closed form of Bayesian linear regression
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # the default tier's budget (3 minutes on 2 cores)
def test_exact_guide_recovers_the_closed_form(data):
    # The shapes of test_inference_data.py (N = 30, 200 draws, sigma an array), so that a worker
    # running both compiles the guide's program once.
    x, y = data
    guide, params = exact_linear_guide(newton_steps=4)
    for sigma in (0.5, 2.0):
        result = log_evidence(
            jax.random.key(0), guide, params, x, y=y, sigma=jnp.asarray(sigma), num_samples=200
        )
        assert result.log_evidence.shape == () and result.num_samples == 200
        truth = float(exact_log_evidence(x, y, sigma=sigma))
        assert abs(float(result.log_evidence) - truth) < EXACT_TOLERANCE
        assert float(result.standard_error) < EXACT_TOLERANCE
        assert float(result.pareto_k) < 0.5 and float(result.ess) > 0.99 * 200


@pytest.mark.slow
def test_exact_guide_seed_spread(data):
    """The figures of EXACT_TOLERANCE, over 10 seeds and a batch of two data sets."""
    x, y = data
    guide, params = exact_linear_guide(newton_steps=4)
    xs, ys = jnp.stack([x, x]), jnp.stack([y, -y])
    truth = np.array([float(exact_log_evidence(x, y)), float(exact_log_evidence(x, -y))])
    estimates = []
    for seed in range(10):
        result = log_evidence(jax.random.key(seed), guide, params, xs, y=ys, num_samples=1000)
        assert result.log_evidence.shape == (2,)
        assert np.all(np.asarray(result.pareto_k) < 0.5)
        assert np.all(np.asarray(result.standard_error) < EXACT_TOLERANCE)
        estimates.append(np.asarray(result.log_evidence))
    estimates = np.array(estimates)
    assert np.abs(estimates - truth).max() < EXACT_TOLERANCE
    assert estimates.std(axis=0, ddof=1).max() < EXACT_TOLERANCE


@pytest.mark.slow
def test_untrained_guide_is_flagged(data):
    """Measured over seeds 0..4 (S = 1000): k-hat 14 to 24, ESS 2 to 4, estimates 3 to 10 nats
    below the truth with standard errors of 0.7 to 1.0: k-hat flags every one, and the error
    is several standard errors, so the standard error alone would mislead."""
    x, y = data
    guide, params = exact_linear_guide(newton_steps=0)
    truth = float(exact_log_evidence(x, y))
    for seed in range(3):
        result = log_evidence(jax.random.key(seed), guide, params, x, y=y, num_samples=1000)
        assert float(result.pareto_k) > 0.7
        assert float(result.ess) < 50
        assert truth - float(result.log_evidence) > 2 * float(result.standard_error)


@pytest.mark.slow
def test_standard_error_matches_the_spread_over_batches():
    """Where k < 0.5 the delta-method standard error is the spread of repeated estimates.

    Target ``Z N(0, I_4)`` with ``log Z = -3``, proposal ``N(0.3, 1.3^2 I_4)`` (wider than the
    target: bounded weights, k-hat < 0), 400 independent batches of S = 1000 draws.
    """
    num_batches, num, dim, log_z = 400, 1000, 4, -3.0
    shift, scale = 0.3, 1.3
    draws = shift + scale * jax.random.normal(jax.random.key(0), (num_batches, num, dim))
    log_p = log_z + jnp.sum(jax.scipy.stats.norm.logpdf(draws), axis=-1)
    log_q = jnp.sum(jax.scipy.stats.norm.logpdf(draws, shift, scale), axis=-1)
    result = evidence_from_log_weights(log_p - log_q)
    assert np.all(np.asarray(result.pareto_k) < 0.5)
    spread = float(jnp.std(result.log_evidence, ddof=1))
    mean_se = float(jnp.mean(result.standard_error))
    # The SD of 400 estimates is within about 7% (2 x 1/sqrt(2 x 399)) of the true spread.
    assert 0.85 < mean_se / spread < 1.15, (mean_se, spread)
    # Unbiased up to the Jensen term -SE^2 / 2, within the spread's standard error.
    bias = float(jnp.mean(result.log_evidence)) - log_z
    assert abs(bias + mean_se**2 / 2) < 3 * spread / math.sqrt(num_batches), bias
