"""L-C2ST against a conjugate Gaussian model, whose exact posterior is known."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.diagnostics.lc2st import lc2st

NOISE = 0.5
SHRINK = 1.0 / (1.0 + NOISE**2)  # posterior mean = SHRINK * x, variance = NOISE^2 * SHRINK
POSTERIOR_SD = NOISE * np.sqrt(SHRINK)
OBSERVED_X = jnp.array([[0.0, 0.0], [1.0, -1.0], [-1.5, 0.5]])
# Small and fast (1.7 s a call on two CPU cores with the tests' XLA flags); a two-unit-per-input
# classifier (8 hidden units) trained 150 steps is the smallest that separated the cases below.
NUM_NULL = 20
SETTINGS = dict(num_null=NUM_NULL, hidden_factor=2, num_steps=150)


def _simulations(key, num_sims=1000, num_draws=100, *, scale=1.0, shift=0.0):
    """Calibration thetas ~ N(0, I_2) and x = theta + noise; one draw of
    q = N(SHRINK x + shift, (scale * POSTERIOR_SD)^2) per x; ``num_draws`` q draws at each of
    the observations ``OBSERVED_X``. ``scale=1, shift=0`` is the exact posterior."""
    theta_key, noise_key, q_key, observed_key = jax.random.split(key, 4)
    thetas = jax.random.normal(theta_key, (num_sims, 2))
    xs = thetas + NOISE * jax.random.normal(noise_key, thetas.shape)
    sd = scale * POSTERIOR_SD
    posterior_thetas = SHRINK * xs + shift + sd * jax.random.normal(q_key, thetas.shape)
    observed_draws = SHRINK * OBSERVED_X[:, None, :] + shift + sd * jax.random.normal(
        observed_key, (OBSERVED_X.shape[0], num_draws, 2))
    return thetas, xs, posterior_thetas, observed_draws, OBSERVED_X


@pytest.fixture(scope="module")
def exact():
    return lc2st(jax.random.key(100), *_simulations(jax.random.key(0)), **SETTINGS)


@pytest.mark.slow  # the default tier's budget (3 minutes on 2 cores)
def test_the_exact_posterior_is_not_rejected(exact):
    # Ten seeds (data key s, lc2st key 100 + s, s = 0..9) at these settings gave p-values at the
    # three observations spread over 0.048-1.0 (one of 30 at the floor 1/21, as a valid test
    # gives) and statistics 0.0000-0.0079, against null statistics up to 0.024.
    # This seed: p = (0.857, 0.476, 0.952), T = (0.0003, 0.0013, 0.0001).
    assert exact.statistic.shape == exact.p_value.shape == (3,)
    assert exact.null_statistics.shape == (NUM_NULL, 3)
    assert exact.probabilities.shape == (3, 100)
    assert np.all(exact.p_value > 0.1), exact.p_value
    assert np.all(exact.statistic < 0.02), exact.statistic


@pytest.mark.slow  # the default tier's budget (3 minutes on 2 cores)
@pytest.mark.parametrize("wrong", [dict(scale=2.0), dict(shift=POSTERIOR_SD)],
                         ids=["sd_doubled", "mean_shifted_one_sd"])
def test_a_wrong_posterior_is_rejected_at_every_observation(exact, wrong):
    # Ten seeds each: every p-value at its floor 1 / 21 (all 30 observations, both cases), with
    # statistics 0.073-0.112 (SD doubled) and 0.068-0.114 (mean shifted), while the largest null
    # statistic was 0.033 and the exact posterior's statistic at most 0.008.
    result = lc2st(jax.random.key(100), *_simulations(jax.random.key(0), **wrong), **SETTINGS)
    np.testing.assert_array_equal(result.p_value, 1.0 / (1 + NUM_NULL))
    assert np.all(result.statistic > 0.05), result.statistic
    assert np.all(result.statistic > 5 * exact.statistic), (result.statistic, exact.statistic)
    # The classifier's probabilities are far from 1/2: mean |d - 1/2| was 0.246-0.292 over the
    # ten seeds of each wrong posterior, 0.011-0.032 over three of the exact one.
    assert np.mean(np.abs(result.probabilities - 0.5)) > 0.15


def _tiny(key=jax.random.key(0)):
    thetas, xs, posterior_thetas, observed_draws, observed_x = _simulations(
        key, num_sims=40, num_draws=7)
    return thetas, xs, posterior_thetas, observed_draws[:2], observed_x[:2]


TINY = dict(num_null=3, hidden_factor=1, num_steps=5)


def test_deterministic_given_the_key_and_consistent_across_observations():
    data = _tiny()
    first = lc2st(jax.random.key(3), *data, **TINY)
    again = lc2st(jax.random.key(3), *data, **TINY)
    other = lc2st(jax.random.key(4), *data, **TINY)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.null_statistics, other.null_statistics)
    # The statistic is the mean squared distance of the probabilities from 1/2.
    np.testing.assert_allclose(first.statistic, np.mean((first.probabilities - 0.5) ** 2, -1),
                               rtol=1e-6)
    # The same trained classifiers serve every observation: one observation alone gives the
    # same numbers as in the batch of two.
    *calibration, observed_draws, observed_x = data
    alone = lc2st(jax.random.key(3), *calibration, observed_draws[1:], observed_x[1:], **TINY)
    np.testing.assert_allclose(alone.statistic, first.statistic[1:], rtol=1e-5)
    np.testing.assert_allclose(alone.null_statistics, first.null_statistics[:, 1:], rtol=1e-5)


def _replace(index, value):
    def change(data):
        data = list(data)
        data[index] = value(data[index])
        return data
    return change


BAD_DATA = {
    "thetas_1d": (_replace(0, lambda a: a[:, 0]), "thetas"),
    "xs_fewer_rows": (_replace(1, lambda a: a[:-1]), "xs"),
    "posterior_thetas_wrong_dim": (_replace(2, lambda a: a[:, :1]), "posterior_thetas"),
    "observed_draws_2d": (_replace(3, lambda a: a[0]), "observed_draws"),
    "observed_draws_wrong_dim": (_replace(3, lambda a: a[..., :1]), "observed_draws"),
    "observed_draws_no_draws": (_replace(3, lambda a: a[:, :0]), "observed_draws"),
    "observed_x_wrong_count": (_replace(4, lambda a: a[:1]), "observed_x"),
    "observed_x_wrong_dim": (_replace(4, lambda a: a[:, :1]), "observed_x"),
    "xs_nan": (_replace(1, lambda a: a.at[5, 1].set(jnp.nan)), "xs"),
    "posterior_thetas_inf": (_replace(2, lambda a: a.at[0, 0].set(jnp.inf)), "posterior_thetas"),
    "observed_draws_nan": (_replace(3, lambda a: a.at[1, 2, 0].set(jnp.nan)), "observed_draws"),
    "observed_x_inf": (_replace(4, lambda a: a.at[0, 1].set(-jnp.inf)), "observed_x"),
    "too_few_simulations": (
        lambda d: [d[0][:9], d[1][:9], d[2][:9], d[3], d[4]], "thetas: expected at least 10"),
}


@pytest.mark.parametrize("change, name", BAD_DATA.values(), ids=BAD_DATA.keys())
def test_bad_data_is_refused_naming_the_argument(change, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        lc2st(jax.random.key(0), *change(_tiny()), **TINY)


@pytest.mark.parametrize("option, value", [
    ("num_null", 0), ("num_null", 2.5), ("hidden_factor", 0), ("num_steps", 0),
    ("learning_rate", 0.0), ("learning_rate", float("nan")),
])
def test_bad_options_are_refused_naming_the_option(option, value):
    with pytest.raises(ValueError, match=f"^{option}: "):
        lc2st(jax.random.key(0), *_tiny(), **{**TINY, option: value})


def test_an_integer_key_is_refused():
    with pytest.raises(TypeError, match="^key: "):
        lc2st(0, *_tiny(), **TINY)
