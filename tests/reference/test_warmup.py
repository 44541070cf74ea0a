"""Warm-up alone, on a Gaussian target with known scales: window adaptation learns the step size
and the variances; with a given metric only the step size is tuned."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.reference.warmup import WarmupResult, warmup_chains, window_warmup

SCALES = jnp.array([1.0, 2.0, 0.5])
CONFIG = dict(target_accept=0.8, max_num_doublings=6)


def logdensity_fn(position):
    """A Normal(0, diag(SCALES ** 2)) over a dict position ``{"x": (3,)}``."""
    return -0.5 * jnp.sum((position["x"] / SCALES) ** 2)


@pytest.fixture(scope="module")
def window():
    run = eqx.filter_jit(
        lambda key: window_warmup(
            key, {"x": jnp.full(3, 1.5)}, logdensity_fn, num_steps=300, **CONFIG
        )
    )
    return run(jax.random.key(0)), run(jax.random.key(0))


def test_window_warmup_adapts_step_size_and_variances(window):
    result, _ = window
    assert isinstance(result, WarmupResult)
    assert result.step_size.shape == () and result.inverse_mass_matrix.shape == (3,)
    assert result.state.position["x"].shape == (3,)
    # With a metric close to the covariance the target is near standard normal in 3 dimensions,
    # where NUTS reaches 80% acceptance with a step size near 1.
    assert 0.3 < float(result.step_size) < 2.0, result.step_size
    # The last slow window (100 correlated draws) estimates each variance to ~20-30%: over
    # keys 0-7 the ratios to the true variances ranged over 0.6-1.35.
    ratio = np.asarray(result.inverse_mass_matrix) / np.asarray(SCALES**2)
    assert np.all((ratio > 0.4) & (ratio < 2.5)), ratio


def test_window_warmup_is_deterministic_given_the_key(window):
    first, again = window
    np.testing.assert_array_equal(first.step_size, again.step_size)
    np.testing.assert_array_equal(first.inverse_mass_matrix, again.inverse_mass_matrix)


def test_warmup_chains_with_a_given_metric_tunes_only_the_step_size():
    num_chains = 2
    metric = jnp.diag(SCALES**2)  # dense, exact: the target becomes standard normal
    positions = {"x": jnp.zeros((num_chains, 3))}
    run = eqx.filter_jit(
        lambda key: warmup_chains(key, positions, logdensity_fn, metric, num_steps=100, **CONFIG)
    )
    result = run(jax.random.key(1))
    assert result.step_size.shape == (num_chains,)
    assert result.state.position["x"].shape == (num_chains, 3)
    np.testing.assert_array_equal(result.inverse_mass_matrix, jnp.stack([metric, metric]))
    # Standard normal in 3 dimensions: over keys 0-4 the step sizes ranged over 0.84-0.95.
    assert np.all((result.step_size > 0.3) & (result.step_size < 2.0)), result.step_size
    # One key per chain: the chains adapt apart.
    assert result.step_size[0] != result.step_size[1]
