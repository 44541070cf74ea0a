"""Out-of-distribution detector: calibrated p-values in distribution, flags far outside."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.diagnostics.ood import fit_ood_detector, ood_features, ood_pvalues
from tests.helpers import exact_linear_guide, small_design


class _NoSummary(eqx.Module):
    """An engine without a whole-data-set summary (as an iterative engine)."""


@pytest.fixture(scope="module")
def fitted():
    guide, params = exact_linear_guide(newton_steps=0)
    detector = fit_ood_detector(
        jax.random.key(1), guide, params, design_fn=small_design, num_obs=(20, 60)
    )
    return guide, params, detector


@pytest.mark.slow  # a statistical check over many simulations
def test_pvalues_are_uniform_in_distribution(fitted):
    guide, params, detector = fitted
    assert detector.null_distances.shape == detector.null_log_obs.shape == (2000,)
    simulate = guide.problem.simulator(small_design, (20, 60))
    batch = simulate(jax.random.key(7), 500)
    features = ood_features(guide.problem, guide.engine(params), batch.arguments, batch.mask)
    assert features.shape == (500, detector.mean.size)
    p = detector.p_values(features, batch.num_obs)
    # Conformal p-values of fresh simulations: about 10% below 0.1 and 1% below 0.01.
    assert 0.06 <= np.mean(p < 0.1) <= 0.14
    assert np.mean(p < 0.01) <= 0.03


@pytest.mark.slow  # statistical flags on simulated groups
def test_flags_scaled_covariates_and_outliers(fitted):
    guide, params, detector = fitted
    xs, ys = [], []
    for i in range(10):
        (x,), _ = small_design(jax.random.key(100 + i), 40)
        xs.append(x)
        ys.append(x @ jnp.ones(3) + 0.5 * jax.random.normal(jax.random.key(200 + i), (40,)))
    xs, ys = jnp.stack(xs), jnp.stack(ys)
    scaled = ood_pvalues(detector, guide, params, 10 * xs, y=10 * ys)
    outliers = ood_pvalues(detector, guide, params, xs, y=ys.at[:, :4].add(50.0))
    assert np.all(scaled < detector.level) and np.all(outliers < detector.level)
    assert np.mean(ood_pvalues(detector, guide, params, xs, y=ys) < detector.level) <= 0.2


def test_sampling_warns_when_attached(fitted):
    guide, params, detector = fitted
    (x,), _ = small_design(jax.random.key(3), 40)
    y = x @ jnp.ones(3)
    watched = guide.with_ood_detector(detector)
    assert watched.problem is guide.problem and guide.ood_detector is None  # guide unchanged
    with pytest.warns(RuntimeWarning, match="out of the training distribution"):
        watched.sample_posterior(jax.random.key(0), params, 10 * x, y=10 * y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        draws = watched.sample_posterior(jax.random.key(0), params, x, y=y)
    with warnings.catch_warnings():
        # Without a detector there is no OOD warning (the training-range warning remains).
        warnings.filterwarnings("error", message=".*out of the training distribution")
        guide.sample_posterior(jax.random.key(0), params, 10 * x, y=10 * y)
    # The detector only watches: the draws are the plain guide's.
    plain = guide.sample_posterior(jax.random.key(0), params, x, y=y)
    for name in plain:
        np.testing.assert_array_equal(draws[name], plain[name])


def test_bad_input(fitted):
    guide, params, detector = fitted
    with pytest.raises(ValueError, match="num_simulations"):
        fit_ood_detector(
            jax.random.key(0), guide, params, design_fn=small_design, num_obs=40, num_simulations=10
        )
    with pytest.raises(TypeError, match="summary of the whole data set"):
        ood_features(guide.problem, _NoSummary(), {}, np.ones((1, 40), bool))
    with pytest.raises(ValueError, match="features"):
        detector.p_values(np.zeros((3, 2)), 40)
    assert detector.p_values(np.full((1, detector.mean.size), np.inf), 40)[0] < detector.level


def test_a_level_no_p_value_can_reach_is_refused(fitted):
    # Issue 15: with 200 simulations the smallest p-value was 0.0198, above the level 0.01, and
    # the detector flagged nothing, even on data 10x outside the training range.
    guide, params, detector = fitted
    with pytest.raises(ValueError, match=r"level=0.01 cannot be reached.*num_simulations >= 400"):
        fit_ood_detector(jax.random.key(0), guide, params, design_fn=small_design, num_obs=40,
                         num_simulations=200)
    assert detector.smallest_p_value == pytest.approx(2 / 667)
    features = np.zeros((1, detector.mean.size))
    with pytest.raises(ValueError, match="level=0.001 cannot be reached"):
        detector.flag(features, 40, level=0.001)
    assert detector.flag(np.full_like(features, np.inf), 40, level=0.01)[0]
