"""Tests of Pareto-smoothed importance sampling against ArviZ, and of importance resampling.

Log weights are drawn in float64 with NumPy, cast to float32 for our (x64-off) run, and the same
float32 values are given to ``arviz.psislw`` in float64. ArviZ computes in float64, so the
tolerances cover float32 rounding: k-hat to 1e-5 (observed a few 1e-6), log weights to rtol 1e-5
(shifting by the max and normalizing costs a few ulps of values up to a few hundred). A float64
run (``jax.enable_x64``) must agree to 1e-10, which pins down the algorithm itself.
"""

import warnings

import arviz as az
import jax
import jax.numpy as jnp
import jax.scipy.stats as jstats
import numpy as np
import pytest

from amortized_ppl.diagnostics.psis import (
    PSISResult,
    check_log_weights,
    importance_resample,
    khat_threshold,
    psis,
    psis_diagnose,
)

NUM_DRAWS = 1000
KHAT_ATOL = 1e-5
LW_RTOL, LW_ATOL = 1e-5, 2e-5

_psis = jax.jit(psis)


def _norm_logpdf(x, scale=1.0):
    return -0.5 * (x / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi)


def _t3_logpdf(x):
    # Student-t with 3 degrees of freedom: Gamma(2) / (Gamma(3/2) sqrt(3 pi)) = 2 / (sqrt(3) pi).
    return np.log(2 / (np.sqrt(3) * np.pi)) - 2.0 * np.log1p(x**2 / 3)


CASES = [
    "t3_proposal_normal_target",
    "narrow_proposal",
    "pareto_weights",
    "lognormal_sd50",
    "with_zero_weights",
]


def _case(name: str) -> np.ndarray:
    """Log weights (NUM_DRAWS,) in float64 for a named proposal/target pair."""
    rng = np.random.default_rng(CASES.index(name))
    if name == "t3_proposal_normal_target":  # bounded weights: khat well below 0
        x = rng.standard_t(3, size=NUM_DRAWS)
        return _norm_logpdf(x) - _t3_logpdf(x)
    if name == "narrow_proposal":  # proposal N(0, 0.5^2), target N(0, 1): k around 0.5
        x = 0.5 * rng.normal(size=NUM_DRAWS)
        return _norm_logpdf(x) - _norm_logpdf(x, 0.5)
    if name == "pareto_weights":  # weights 1 + Pareto(shape 0.6): k about 1.7
        return np.log1p(rng.pareto(0.6, size=NUM_DRAWS))
    if name == "lognormal_sd50":  # k >> 1; the tail spans more than float32's exponent range
        return 50.0 * rng.normal(size=NUM_DRAWS)
    if name == "with_zero_weights":  # 30% of draws have zero weight
        lw = rng.normal(size=NUM_DRAWS)
        lw[rng.permutation(NUM_DRAWS)[:300]] = -np.inf
        return lw
    raise KeyError(name)


@pytest.mark.parametrize("name", CASES)
def test_matches_arviz_in_float32(name):
    lw32 = _case(name).astype(np.float32)
    ref_lw, ref_khat = az.psislw(lw32.astype(np.float64), reff=1.0)
    result = _psis(lw32)

    assert isinstance(result, PSISResult)
    assert result.log_weights.dtype == jnp.float32
    assert result.khat.shape == () and np.shape(ref_khat) == ()
    np.testing.assert_allclose(float(result.khat), float(ref_khat), atol=KHAT_ATOL)
    ours = np.asarray(result.log_weights, np.float64)
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref_lw))
    finite = np.isfinite(ref_lw)
    np.testing.assert_allclose(ours[finite], ref_lw[finite], rtol=LW_RTOL, atol=LW_ATOL)
    ref_ess = 1.0 / np.sum(np.exp(2 * ref_lw))
    np.testing.assert_allclose(float(result.ess), ref_ess, rtol=1e-4)


def test_heavy_tailed_cases_exceed_threshold():
    # Guard that the comparison above really covers the khat > 0.7 regime.
    for name in ["pareto_weights", "lognormal_sd50"]:
        assert float(_psis(_case(name).astype(np.float32)).khat) > 0.7


@pytest.mark.parametrize("name", CASES)
def test_matches_arviz_in_float64(name):
    lw = _case(name)
    ref_lw, ref_khat = az.psislw(lw.copy(), reff=1.0)
    with jax.enable_x64(True):
        result = _psis(jnp.asarray(lw))
        assert result.log_weights.dtype == jnp.float64
        np.testing.assert_allclose(float(result.khat), float(ref_khat), atol=1e-10)
        finite = np.isfinite(ref_lw)
        np.testing.assert_allclose(
            np.asarray(result.log_weights)[finite], ref_lw[finite], rtol=1e-10
        )


def test_batch_equals_per_row_calls():
    lw = np.stack([_case(name) for name in CASES]).astype(np.float32)  # (5, S)
    batched = _psis(lw)
    assert batched.log_weights.shape == (5, NUM_DRAWS)
    assert batched.khat.shape == batched.ess.shape == (5,)
    for i in range(5):
        row = _psis(lw[i])
        # Equal up to float32 summation order inside the batched reductions.
        np.testing.assert_allclose(batched.log_weights[i], row.log_weights, rtol=1e-5)
        np.testing.assert_allclose(batched.khat[i], row.khat, rtol=1e-5)
        np.testing.assert_allclose(batched.ess[i], row.ess, rtol=1e-5)
    # Several leading axes are flattened and restored.
    nested = _psis(lw[:4].reshape(2, 2, NUM_DRAWS))
    assert nested.khat.shape == (2, 2)
    np.testing.assert_allclose(nested.khat.reshape(4), batched.khat[:4], rtol=1e-5)


def test_log_weights_are_normalized_and_ess_in_range():
    lw = np.stack([_case(name) for name in CASES]).astype(np.float32)
    result = _psis(lw)
    np.testing.assert_allclose(jax.nn.logsumexp(result.log_weights, axis=-1), 0.0, atol=1e-5)
    assert np.all((result.ess >= 1.0 - 1e-4) & (result.ess <= NUM_DRAWS * (1 + 1e-5)))


def test_good_proposal_has_small_khat_and_large_ess():
    # Proposal N(0, 1.1^2) for target N(0, 1): bounded weights, nearly uniform.
    x = 1.1 * jax.random.normal(jax.random.key(1), (5, NUM_DRAWS))
    lw = jstats.norm.logpdf(x) - jstats.norm.logpdf(x, 0.0, 1.1)
    result = _psis(lw)
    assert np.all(result.khat < 0.5)
    assert np.all(result.ess > 0.95 * NUM_DRAWS)


def test_constant_weights_follow_arviz_infinite_khat():
    # A proposal equal to the target gives constant weights: no tail above the cutoff to fit, so
    # khat is +inf (as in ArviZ and loo) even though the weights are uniform and ess is S.
    result = _psis(jnp.zeros(NUM_DRAWS))
    assert float(az.psislw(np.zeros(NUM_DRAWS))[1]) == np.inf
    assert float(result.khat) == np.inf
    np.testing.assert_allclose(result.ess, NUM_DRAWS, rtol=1e-5)
    np.testing.assert_allclose(result.log_weights, -np.log(NUM_DRAWS), rtol=1e-6)


def test_much_narrower_proposal_has_large_khat():
    # Proposal N(0, 0.1^2) for target N(0, 1): asymptotically k = 1 - 0.1^2; pre-asymptotic
    # estimates at S = 1000 spread over about 0.6-1.1, so test the median of 5 data sets.
    x = 0.1 * jax.random.normal(jax.random.key(2), (5, NUM_DRAWS))
    lw = jstats.norm.logpdf(x) - jstats.norm.logpdf(x, 0.0, 0.1)
    result = _psis(lw)
    assert float(jnp.median(result.khat)) > 0.7
    assert float(jnp.median(result.ess)) < 0.2 * NUM_DRAWS


def test_zero_weights_stay_zero_and_do_not_enter_the_tail():
    lw = _case("with_zero_weights").astype(np.float32)
    result = _psis(lw)
    assert np.all(np.isneginf(result.log_weights[np.isneginf(lw)]))
    assert np.isfinite(result.khat)
    # Fewer finite draws than the tail length: the tail is the finite draws above exp(-708).
    few = np.full(NUM_DRAWS, -np.inf, np.float32)
    few[:40] = _case("narrow_proposal")[:40]
    ref_lw, ref_khat = az.psislw(few.astype(np.float64))
    result = _psis(few)
    np.testing.assert_allclose(float(result.khat), float(ref_khat), atol=KHAT_ATOL)
    np.testing.assert_allclose(result.log_weights[:40], ref_lw[:40], rtol=LW_RTOL, atol=LW_ATOL)
    assert np.all(np.isneginf(result.log_weights[40:]))


def test_invalid_rows_get_infinite_khat_without_touching_others():
    lw = np.stack([_case("narrow_proposal")] * 5).astype(np.float32)
    lw[1, 5] = np.nan
    lw[2, 7] = np.inf
    lw[3] = -np.inf
    result = _psis(lw)
    assert np.all(np.isinf(result.khat[1:4]))
    assert np.all(np.isnan(result.log_weights[1:4])) and np.all(np.isnan(result.ess[1:4]))
    np.testing.assert_array_equal(result.log_weights[4], result.log_weights[0])
    np.testing.assert_allclose(result.log_weights[0], _psis(lw[0]).log_weights, rtol=1e-5)


def test_check_log_weights_names_invalid_rows():
    lw = np.zeros((5, 200), np.float32)
    lw[2, 3] = np.nan
    lw[4, 0] = np.inf
    lw[1] = -np.inf
    with pytest.raises(ValueError, match=r"NaN or \+inf entries in data sets \[2, 4\]") as info:
        check_log_weights(lw)
    assert "only -inf entries (all weights zero) in data sets [1]" in str(info.value)
    nested = np.zeros((2, 3, 200))
    nested[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"data sets \[\(1, 2\)\]"):
        check_log_weights(nested)
    with pytest.raises(ValueError, match="expected shape"):
        check_log_weights(np.float32(0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # valid input with enough draws: silent
        check_log_weights(np.zeros((3, 200)))


def test_check_log_weights_warns_for_few_draws():
    with pytest.warns(RuntimeWarning, match="S=50 draws"):
        check_log_weights(np.zeros((2, 50)))


def test_psis_diagnose_checks_then_smooths():
    lw = np.stack([_case(name) for name in CASES]).astype(np.float32)
    result = psis_diagnose(lw)
    np.testing.assert_allclose(result.khat, _psis(lw).khat, rtol=1e-5)
    lw[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"\[1\]"):
        psis_diagnose(lw)


def test_khat_threshold():
    assert khat_threshold(100) == pytest.approx(0.5)
    assert khat_threshold(1000) == pytest.approx(2 / 3)
    assert khat_threshold(10_000) == 0.7
    assert khat_threshold(10) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="num_draws"):
        khat_threshold(1)


PROBS = np.array([[0.1, 0.2, 0.0, 0.3, 0.4], [0.4, 0.0, 0.3, 0.2, 0.1]])
NUM_SAMPLES = 20_000


@pytest.mark.parametrize("method", ["multinomial", "systematic"])
def test_importance_resample_frequencies_match_weights(method):
    with np.errstate(divide="ignore"):
        lw = jnp.asarray(np.log(PROBS) + 3.0, jnp.float32)  # unnormalized on purpose
    idx = importance_resample(jax.random.key(3), lw, NUM_SAMPLES, method=method)
    assert idx.shape == (2, NUM_SAMPLES) and idx.dtype == jnp.int32
    assert np.all((idx >= 0) & (idx < PROBS.shape[1]))
    counts = np.stack([np.bincount(row, minlength=PROBS.shape[1]) for row in np.asarray(idx)])
    assert np.all(counts[PROBS == 0] == 0)
    if method == "systematic":
        # Each count is N * p rounded down or up.
        assert np.all(np.abs(counts - NUM_SAMPLES * PROBS) <= 1)
    else:
        sd = np.sqrt(NUM_SAMPLES * PROBS * (1 - PROBS))
        assert np.all(np.abs(counts - NUM_SAMPLES * PROBS) <= 4 * sd)


@pytest.mark.parametrize("method", ["multinomial", "systematic"])
def test_importance_resample_is_deterministic_given_key(method):
    lw = _psis(np.stack([_case(name) for name in CASES]).astype(np.float32)).log_weights
    resample = jax.jit(importance_resample, static_argnames=("num_samples", "method"))
    first = resample(jax.random.key(4), lw, num_samples=300, method=method)
    again = resample(jax.random.key(4), lw, num_samples=300, method=method)
    other = resample(jax.random.key(5), lw, num_samples=300, method=method)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.shape == (5, 300)


def test_importance_resample_rejects_bad_arguments():
    lw = jnp.zeros((2, 10))
    with pytest.raises(
        ValueError, match=r"method: expected one of \('multinomial', 'systematic'\)"
    ):
        importance_resample(jax.random.key(0), lw, 5, method="stratified")
    with pytest.raises(ValueError, match="num_samples"):
        importance_resample(jax.random.key(0), lw, 0)
