"""Tests of the two-sample distances: MMD, its permutation test, the C2ST and the report.

Samples are standard normal draws in D = 2 with a fixed key, so every statistical assertion is
deterministic; tolerances are set from the sampling SD under the null and are several SDs wide.
Compiling dominates the run time, so the tests share a few shapes: the statistical MMD and C2ST
cases are four data sets of one batch (a module-scoped fixture), and the report reuses its shapes
and settings to hit the jit caches. Those cases train 200-step classifiers and run 200
permutations, which the fast-compile XLA flags of the test suite make slow to run, so they are in
the slow tier (``--runslow``); the default tier checks the same functions on small draws.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.diagnostics.distances import (
    DistanceReport,
    c2st,
    check_draws_finite,
    compare_to_reference,
    median_bandwidth,
    mmd,
    mmd_test,
)

DIM = 2
NUM_X, NUM_Y = 500, 600  # unequal, so the C2ST subsamples y; null accuracy SD ~0.016
NUM_PERMUTATIONS = 200  # smallest p-value 1 / 201 < 0.01
MMD_KWARGS = {"num_permutations": NUM_PERMUTATIONS}
C2ST_KWARGS = {"num_steps": 200}
SAME, SHIFT_1, SHIFT_2, HALF_SD = range(4)  # data sets of the `cases` fixture


def _normal(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape)


def _naive_mmd2(x, y, bandwidth):
    """Textbook unbiased MMD^2 in float64 with loops over blocks, on y-standardized draws."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mean, sd = y.mean(0), y.std(0, ddof=1)
    x, y = (x - mean) / sd, (y - mean) / sd

    def gram(a, b):
        return np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * bandwidth**2))

    n, m = len(x), len(y)
    kxx, kyy = gram(x, x), gram(y, y)
    return (
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2 * gram(x, y).mean()
    )


# ---------------------------------------------------------------------------------------------
# MMD
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cases():
    """Four data sets: same distribution, 1-SD and 2-SD shifts of dim 0, SD of dim 0 halved."""
    x = _normal(10, (4, NUM_X, DIM))
    y = _normal(11, (4, NUM_Y, DIM))
    x = x.at[SHIFT_1, :, 0].add(1.0).at[SHIFT_2, :, 0].add(2.0).at[HALF_SD, :, 0].multiply(0.5)
    return x, y


@pytest.fixture(scope="module")
def c2st_accuracy(cases):
    return c2st(jax.random.key(12), *cases, **C2ST_KWARGS)


def test_mmd_matches_naive_formula():
    x, y = _normal(0, (7, DIM)) * 2.0 + 1.0, _normal(1, (9, DIM)) * 3.0
    np.testing.assert_allclose(float(mmd(x, y, bandwidth=0.7)), _naive_mmd2(x, y, 0.7), atol=1e-5)
    # The default bandwidth is the median heuristic.
    h = float(median_bandwidth(x, y))
    np.testing.assert_allclose(float(mmd(x, y)), _naive_mmd2(x, y, h), atol=1e-5)


def test_median_bandwidth_is_median_pairwise_distance_in_reference_sd_units():
    x, y = _normal(0, (7, DIM)), _normal(1, (9, DIM)) * np.array([1.0, 4.0])
    y_np = np.asarray(y, np.float64)
    z = np.concatenate([np.asarray(x), y_np]) / y_np.std(0, ddof=1)
    dists = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
    expected = np.median(dists[np.triu_indices(len(z), k=1)])
    np.testing.assert_allclose(float(median_bandwidth(x, y)), expected, rtol=1e-5)


@pytest.mark.slow
def test_mmd_test_same_distribution_and_shift(cases):
    """Statistical (opt in with --runslow)."""
    x, y = cases
    mmd2, p_value = mmd_test(jax.random.key(2), x, y, **MMD_KWARGS)
    assert mmd2.shape == p_value.shape == (4,)
    # Null SD of MMD^2_u here is ~0.002 (seen over many replicates); a 1-SD shift gives ~0.1.
    assert abs(float(mmd2[SAME])) < 0.01
    assert float(p_value[SAME]) > 0.01
    assert float(mmd2[SHIFT_1]) > 0.05
    assert float(p_value[SHIFT_1]) < 0.01
    assert float(mmd2[SHIFT_2]) > float(mmd2[SHIFT_1])
    np.testing.assert_allclose(mmd2, mmd(x, y), atol=1e-6)  # same statistic as mmd()


@pytest.mark.slow
def test_mmd_is_unbiased_under_the_null():
    """Statistical: 400 data sets of their own shape (opt in with --runslow)."""
    # 400 independent same-distribution pairs, unequal sizes; the V-statistic would sit near
    # (1/n + 1/m) (1 - E k) ~ 0.01 here, the unbiased one at 0 within its standard error.
    values = np.asarray(mmd(_normal(0, (400, 60, DIM)), _normal(1, (400, 80, DIM))))
    std_error = values.std() / np.sqrt(values.size)
    assert abs(values.mean()) < 3 * std_error
    assert abs(values.mean()) < 0.002
    assert np.any(values < 0)  # unbiased, hence sometimes negative


def test_bandwidth_and_mmd_invariant_to_per_dimension_scaling():
    x, y = _normal(0, (3, 40, DIM)), _normal(1, (3, 50, DIM)) + 0.5
    scale, shift = jnp.array([100.0, 0.01]), jnp.array([3.0, -7.0])
    np.testing.assert_allclose(
        median_bandwidth(x * scale + shift, y * scale + shift), median_bandwidth(x, y), rtol=1e-4
    )
    np.testing.assert_allclose(mmd(x * scale + shift, y * scale + shift), mmd(x, y), atol=1e-5)


def test_vectorized_mmd_equals_loop_over_datasets():
    x, y = _normal(0, (3, 40, DIM)), _normal(1, (3, 50, DIM))
    key = jax.random.key(3)
    mmd2, p_value = mmd_test(key, x, y, num_permutations=50)
    bandwidth = median_bandwidth(x, y)
    assert mmd2.shape == p_value.shape == bandwidth.shape == (3,)
    keys = jax.random.split(key, 3)  # data set i uses split(key, B)[i]
    for i in range(3):
        np.testing.assert_allclose(median_bandwidth(x[i], y[i]), bandwidth[i], rtol=1e-6)
        loop_mmd2, loop_p = mmd_test(keys[i], x[i], y[i], num_permutations=50)
        np.testing.assert_allclose(loop_mmd2, mmd2[i], atol=1e-6)
        np.testing.assert_allclose(loop_p, p_value[i])
    # Several batch axes behave as their flattening.
    np.testing.assert_allclose(mmd(x[None], y[None]), mmd2[None], atol=1e-6)


def test_explicit_bandwidth_scalar_or_per_dataset():
    x, y = _normal(0, (3, 40, DIM)), _normal(1, (3, 50, DIM))
    bandwidth = median_bandwidth(x, y)
    np.testing.assert_allclose(mmd(x, y, bandwidth=bandwidth), mmd(x, y), atol=1e-6)
    assert mmd(x, y, bandwidth=1.0).shape == (3,)
    with pytest.raises(ValueError, match="bandwidth"):
        mmd(x, y, bandwidth=jnp.ones(4))


def test_mmd_runs_under_jit():
    x, y = _normal(0, (3, 40, DIM)), _normal(1, (3, 50, DIM))
    np.testing.assert_allclose(jax.jit(mmd)(x, y), mmd(x, y), atol=1e-6)
    jitted = jax.jit(lambda k, a, b: mmd_test(k, a, b, num_permutations=50))
    assert jitted(jax.random.key(0), x, y)[1].shape == (3,)


# ---------------------------------------------------------------------------------------------
# C2ST
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_c2st_same_distribution_near_chance(c2st_accuracy):
    """Statistical (opt in with --runslow)."""
    assert c2st_accuracy.shape == (4,)
    assert 0.4 < float(c2st_accuracy[SAME]) < 0.6


@pytest.mark.slow
def test_c2st_detects_mean_shift(c2st_accuracy):
    """Statistical (opt in with --runslow)."""
    # Bayes accuracy for a 2-SD shift is Phi(1) = 0.84.
    assert float(c2st_accuracy[SHIFT_2]) > 0.8
    assert 0.6 < float(c2st_accuracy[SHIFT_1]) < float(c2st_accuracy[SHIFT_2])


@pytest.mark.slow
def test_c2st_detects_halved_sd(c2st_accuracy):
    """Statistical (opt in with --runslow)."""
    # Bayes accuracy is 0.66 (threshold |z| = 0.68), 5 null SDs above chance.
    assert float(c2st_accuracy[HALF_SD]) > 0.58


@pytest.mark.slow
def test_c2st_deterministic_given_key(cases, c2st_accuracy):
    """Three 200-step C2STs (opt in with --runslow; the fast tier has a small one)."""
    again = c2st(jax.random.key(12), *cases, **C2ST_KWARGS)
    np.testing.assert_array_equal(again, c2st_accuracy)
    other = c2st(jax.random.key(13), *cases, **C2ST_KWARGS)
    assert not np.array_equal(other, c2st_accuracy)


@pytest.mark.slow
def test_c2st_vectorized_matches_loop_over_datasets(cases, c2st_accuracy):
    """Statistical tolerance, 200-step C2STs (opt in with --runslow)."""
    # Data set i uses split(key, B)[i], so the unbatched call with that key trains the same
    # networks on the same folds. Batched and unbatched matrix products round differently and
    # 200 Adam steps amplify that, so a few held-out predictions can flip: 0.02 was seen.
    x, y = cases
    keys = jax.random.split(jax.random.key(12), 4)
    for i in (SAME, SHIFT_2):
        loop = c2st(keys[i], x[i], y[i], **C2ST_KWARGS)
        np.testing.assert_allclose(loop, c2st_accuracy[i], atol=0.03)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_compare_to_reference(cases):
    """Statistical (opt in with --runslow; the fast tier has a small report)."""
    x, y = cases
    report = compare_to_reference(
        jax.random.key(12), x, y, mmd_kwargs=MMD_KWARGS, c2st_kwargs=C2ST_KWARGS
    )
    assert isinstance(report, DistanceReport)
    assert report.mean_error.shape == report.sd_ratio.shape == (4, DIM)
    assert report.mmd2.shape == report.mmd_p_value.shape == report.c2st_accuracy.shape == (4,)
    np.testing.assert_allclose(report.mean_error[SHIFT_2, 0], 2.0, atol=0.2)
    np.testing.assert_allclose(report.sd_ratio[HALF_SD, 0], 0.5, atol=0.05)
    assert np.all(np.asarray(report.mmd_p_value[SHIFT_1:]) < 0.01)
    summary = report.to_dict()
    json.dumps(summary)
    assert summary["num_datasets"] == 4
    assert summary["max_mean_error"] == pytest.approx(float(np.max(report.mean_error)))
    assert summary["min_sd_ratio"] == pytest.approx(float(np.min(report.sd_ratio)))
    assert summary["max_c2st_accuracy"] > 0.8
    assert all(isinstance(v, (int, float)) for v in summary.values())
    full = report.to_dict(include_arrays=True)
    json.dumps(full)
    assert np.asarray(full["sd_ratio"]).shape == (4, DIM)


def test_small_report_is_deterministic_given_key():
    """The C2ST and the report on small draws: shapes, JSON, and fixed by the key (fast tier).

    The draws' shapes and the MMD settings are those of the MMD tests above (their program is
    reused); the C2ST trains for 20 steps only, since its accuracy is not judged here.
    """
    x, y = _normal(0, (3, 40, DIM)), _normal(1, (3, 50, DIM))
    settings = dict(mmd_kwargs={"num_permutations": 50}, c2st_kwargs={"num_steps": 20})
    report = compare_to_reference(jax.random.key(12), x, y, **settings)
    assert isinstance(report, DistanceReport)
    assert report.mean_error.shape == report.sd_ratio.shape == (3, DIM)
    assert report.mmd2.shape == report.mmd_p_value.shape == report.c2st_accuracy.shape == (3,)
    assert np.all((np.asarray(report.c2st_accuracy) >= 0) & (np.asarray(report.c2st_accuracy) <= 1))
    np.testing.assert_allclose(report.mmd2, mmd(x, y), atol=1e-6)
    json.dumps(report.to_dict(include_arrays=True))
    again = compare_to_reference(jax.random.key(12), x, y, **settings)
    for name, value in report._asdict().items():
        np.testing.assert_array_equal(getattr(again, name), value, err_msg=name)
    # The C2ST's key enters: data set i of the batch uses split(key, B)[i].
    c2st_key = jax.random.split(jax.random.key(12))[1]
    accuracy = c2st(c2st_key, x, y, num_steps=20)
    np.testing.assert_array_equal(accuracy, report.c2st_accuracy)
    other = c2st(jax.random.key(13), x, y, num_steps=20)
    assert not np.array_equal(other, accuracy)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_mismatched_shapes_raise():
    x = np.zeros((2, 20, DIM))
    with pytest.raises(ValueError, match="same number of dimensions"):
        mmd(x, np.zeros((2, 20, DIM + 1)))
    with pytest.raises(ValueError, match="same leading"):
        mmd(x, np.zeros((3, 20, DIM)))
    with pytest.raises(ValueError, match=r"expected shape \(\.\.\., S, D\)"):
        median_bandwidth(np.zeros(20), np.zeros(20))
    with pytest.raises(ValueError, match="same number of dimensions"):
        c2st(jax.random.key(0), x, np.zeros((2, 20, 3)))


def test_too_few_draws_raise_with_minimum():
    with pytest.raises(ValueError, match="at least 2 draws"):
        mmd(np.zeros((1, DIM)), np.ones((5, DIM)))
    with pytest.raises(ValueError, match="y: expected at least 2 draws"):
        mmd_test(jax.random.key(0), np.zeros((5, DIM)), np.ones((1, DIM)))
    with pytest.raises(ValueError, match="at least 10 draws"):
        c2st(jax.random.key(0), np.zeros((9, DIM)), np.ones((50, DIM)))
    with pytest.raises(ValueError, match="at least 6 draws"):
        c2st(jax.random.key(0), np.zeros((50, DIM)), np.ones((5, DIM)), num_folds=3)
    with pytest.raises(ValueError, match="reference: expected at least 10 draws"):
        compare_to_reference(jax.random.key(0), np.zeros((50, DIM)), np.ones((9, DIM)))


def test_bad_arguments_raise():
    x = np.zeros((20, DIM))
    with pytest.raises(ValueError, match="num_folds"):
        c2st(jax.random.key(0), x, x, num_folds=1)
    with pytest.raises(ValueError, match="num_permutations"):
        mmd_test(jax.random.key(0), x, x, num_permutations=0)
    with pytest.raises(ValueError, match="learning_rate"):
        c2st(jax.random.key(0), x, x, learning_rate=0.0)


def test_non_finite_draws_raise_naming_array_and_dataset():
    x, y = np.zeros((3, 20, DIM)), np.ones((3, 20, DIM))
    bad = x.copy()
    bad[2, 5, 1] = np.nan
    with pytest.raises(ValueError, match=r"x holds NaN or Inf values in 1 of 3 data sets.*\(2,\)"):
        mmd(bad, y)
    bad_ref = y.copy()
    bad_ref[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"reference holds NaN or Inf.*\(0,\)"):
        compare_to_reference(jax.random.key(0), x, bad_ref)
    with pytest.raises(ValueError, match="y holds NaN or Inf values"):
        c2st(jax.random.key(0), x[0], bad_ref[0])
    check_draws_finite(x, "x")  # finite: no error
    # Traced arrays cannot be inspected, so under jit the check passes silently.
    assert np.isnan(float(jax.jit(mmd)(bad[2], y[2])))
