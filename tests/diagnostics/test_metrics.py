"""Exact-value tests of the accuracy metrics on hand-made draws.

Draws are an affine map of ``np.linspace(-1, 1, 101)``, standardized in float64 to sample mean 0
and SD 1 (ddof=1), so their mean and SD are exactly the ones asked for; interval ends come from
``linspace(0, 1, 101)``, whose 5% and 95% quantiles are exactly 0.05 and 0.95. The functions run
in float32, so comparisons use rtol 1e-5.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.diagnostics import (
    SD_RATIO_BOUNDS,
    AccuracyReport,
    accuracy_report,
    flatten_draws,
    gaussian_moments_from_draws,
    interval_coverage,
    moment_errors,
)

RTOL = 1e-5
NUM_DRAWS = 101
BASE = np.linspace(-1.0, 1.0, NUM_DRAWS)  # mean 0, symmetric
BASE_SD = float(np.std(BASE, ddof=1))


def _draws(means, sds):
    """Draws (..., S, D) with exact mean ``means`` and SD ``sds`` (each (..., D))."""
    means, sds = np.asarray(means, float), np.asarray(sds, float)
    return means[..., None, :] + sds[..., None, :] * (BASE / BASE_SD)[:, None]


def test_flatten_draws_concatenates_in_order():
    samples = {
        "b": np.arange(4.0).reshape(4),
        "w": np.arange(24.0).reshape(4, 2, 3),
    }
    flat = flatten_draws(samples, ["w", "b"])
    assert flat.shape == (4, 7)
    np.testing.assert_array_equal(flat[:, :6], samples["w"].reshape(4, 6))
    np.testing.assert_array_equal(flat[:, 6], samples["b"])
    flat_reversed = flatten_draws(samples, ["b", "w"])
    np.testing.assert_array_equal(flat_reversed[:, 0], samples["b"])


def test_flatten_draws_with_batch():
    samples = {"b": np.zeros((3, 5)), "w": np.ones((3, 5, 2))}
    flat = flatten_draws(samples, ("b", "w"), batch_ndim=1)
    assert flat.shape == (3, 5, 3)
    np.testing.assert_array_equal(flat[..., 0], 0.0)
    np.testing.assert_array_equal(flat[..., 1:], 1.0)


def test_flatten_draws_validation():
    with pytest.raises(TypeError, match="samples must be a dict"):
        flatten_draws(np.zeros((4, 2)), ["w"])
    with pytest.raises(KeyError, match=r"\['z'\]"):
        flatten_draws({"w": np.zeros((4, 2))}, ["w", "z"])
    with pytest.raises(ValueError, match="'w'.*'b'"):
        flatten_draws({"w": np.zeros((4, 2)), "b": np.zeros(5)}, ["w", "b"])
    with pytest.raises(ValueError, match=r"samples\['b'\]: expected"):
        flatten_draws({"b": np.zeros(5)}, ["b"], batch_ndim=1)
    with pytest.raises(ValueError, match="site_names"):
        flatten_draws({"b": np.zeros(5)}, [])


def test_gaussian_moments_exact():
    means, sds = np.array([[1.0, -2.0], [0.5, 3.0]]), np.array([[0.5, 2.0], [1.0, 0.1]])
    mean, sd = gaussian_moments_from_draws(_draws(means, sds))
    np.testing.assert_allclose(mean, means, rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(sd, sds, rtol=RTOL)


def test_moment_errors_exact():
    ref_mean, ref_sd = np.array([0.0, 1.0, -1.0]), np.array([1.0, 2.0, 0.5])
    offsets, ratios = np.array([0.5, -1.0, 0.0]), np.array([1.0, 0.5, 2.0])
    draws = _draws(ref_mean + offsets * ref_sd, ratios * ref_sd)
    mean_error, sd_ratio = moment_errors(draws, ref_mean, ref_sd)
    np.testing.assert_allclose(mean_error, [0.5, 1.0, 0.0], rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(sd_ratio, [1.0, 0.5, 2.0], rtol=RTOL)


def test_moment_errors_batched_and_jitted():
    ref_mean, ref_sd = np.zeros((4, 2)), np.ones((4, 2))
    draws = _draws(ref_mean + 0.25, ref_sd * 1.5)
    mean_error, sd_ratio = jax.jit(moment_errors)(draws, ref_mean, ref_sd)
    assert mean_error.shape == sd_ratio.shape == (4, 2)
    np.testing.assert_allclose(mean_error, 0.25, rtol=RTOL)
    np.testing.assert_allclose(sd_ratio, 1.5, rtol=RTOL)


def test_moment_errors_validation():
    draws = np.zeros((3, 10, 2))
    with pytest.raises(ValueError, match=r"ref_mean: expected shape \(3, 2\), got \(2,\)"):
        moment_errors(draws, np.zeros(2), np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"ref_sd: expected shape \(3, 2\), got \(3, 3\)"):
        moment_errors(draws, np.zeros((3, 2)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="ref_sd: expected positive"):
        moment_errors(draws, np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"draws: expected shape \(\.\.\., S, D\)"):
        moment_errors(np.zeros(10), np.zeros(()), np.ones(()))


def test_interval_coverage_on_linspace():
    # linspace(0, 1, 101) has (linear-interpolation) quantiles 0.05 and 0.95 exactly.
    draws = np.linspace(0.0, 1.0, NUM_DRAWS)[:, None] * np.ones(5)
    truth = np.array([0.5, 0.05, 0.95, 0.04, 0.96])
    is_covered = interval_coverage(draws, truth, level=0.9)
    assert is_covered.dtype == jnp.bool_
    np.testing.assert_array_equal(is_covered, [True, True, True, False, False])
    # At level 0.5 the interval is [0.25, 0.75].
    np.testing.assert_array_equal(
        interval_coverage(draws, np.array([0.3, 0.2, 0.7, 0.8, 0.5]), level=0.5),
        [True, False, True, False, True],
    )


def test_interval_coverage_validation():
    with pytest.raises(ValueError, match="level: expected a probability"):
        interval_coverage(np.zeros((10, 2)), np.zeros(2), level=1.0)
    with pytest.raises(ValueError, match=r"truth: expected shape \(2,\), got \(3,\)"):
        interval_coverage(np.zeros((10, 2)), np.zeros(3))


def test_accuracy_report_exact():
    ref_mean, ref_sd = np.zeros(4), np.ones(4)
    draws = _draws(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.5, 0.9, 1.0, 1.3]))
    truth = np.array([0.0, 5.0, 0.0, -5.0])
    report = accuracy_report(draws, ref_mean, ref_sd, truth=truth, level=0.9)
    assert isinstance(report, AccuracyReport)
    assert report.median_mean_error == pytest.approx(0.25, rel=RTOL)
    assert report.median_sd_ratio == pytest.approx(0.95, rel=RTOL)
    assert SD_RATIO_BOUNDS == (0.8, 1.25)
    assert report.fraction_sd_ratio_ok == 0.5  # 0.9 and 1.0 in bounds; 0.5 and 1.3 out
    assert report.coverage == 0.5
    np.testing.assert_array_equal(report.is_covered, [True, False, True, False])
    assert report.mean_error.shape == report.sd_ratio.shape == (4,)

    summary = json.loads(json.dumps(report.to_dict()))
    assert summary["coverage"] == 0.5 and summary["level"] == 0.9
    assert "mean_error" not in summary
    full = json.loads(json.dumps(report.to_dict(include_arrays=True)))
    assert full["is_covered"] == [True, False, True, False]


def test_accuracy_report_without_truth():
    ref_mean, ref_sd = np.zeros((2, 3)), np.ones((2, 3))
    report = accuracy_report(_draws(ref_mean, ref_sd), ref_mean, ref_sd)
    assert report.coverage is None and report.is_covered is None
    assert report.fraction_sd_ratio_ok == 1.0
    assert json.loads(json.dumps(report.to_dict(include_arrays=True)))["is_covered"] is None
