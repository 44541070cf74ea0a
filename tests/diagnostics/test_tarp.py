"""TARP against a conjugate Gaussian model, whose exact posterior is known."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.diagnostics.tarp import tarp

NOISE = 0.5
SHRINK = 1.0 / (1.0 + NOISE**2)  # posterior mean = SHRINK * x, variance = NOISE^2 * SHRINK


def _simulations(key, num_sims=400, num_draws=200, dim=2, *, scale=1.0, shift=0.0):
    """Truths from N(0, I), x = truth + noise, and draws of N(SHRINK x + shift, scale^2 var)."""
    truth_key, noise_key, draw_key = jax.random.split(key, 3)
    truths = jax.random.normal(truth_key, (num_sims, dim))
    x = truths + NOISE * jax.random.normal(noise_key, truths.shape)
    sd = scale * NOISE * np.sqrt(SHRINK)
    eps = jax.random.normal(draw_key, (num_sims, num_draws, dim))
    return SHRINK * x[:, None, :] + shift + sd * eps, truths


def test_the_exact_posterior_is_on_the_diagonal_and_wrong_ones_are_not():
    # Seeds 0-4 of the exact posterior gave KS p-values 0.04-0.61, |atc| <= 0.013 and ECP within
    # 0.07 of the diagonal; seeds 0-2 of a posterior half as wide gave p < 2e-10 and atc -0.05 to
    # -0.07, twice as wide p < 1e-12 and atc 0.06-0.08, shifted by one posterior SD p < 3e-5.
    draws, truths = _simulations(jax.random.key(0))
    exact = tarp(jax.random.key(1), draws, truths)
    assert exact.ks_pvalue > 0.01 and abs(exact.atc) < 0.03
    assert np.max(np.abs(exact.ecp - exact.alpha)) < 0.1
    assert exact.ecp[0] == 0.0 and exact.ecp[-1] == 1.0 and exact.coverage.shape == (400,)

    narrow = tarp(jax.random.key(1), *_simulations(jax.random.key(0), scale=0.5))
    wide = tarp(jax.random.key(1), *_simulations(jax.random.key(0), scale=2.0))
    shifted = tarp(jax.random.key(1), *_simulations(
        jax.random.key(0), shift=NOISE * np.sqrt(SHRINK)))
    for result in (narrow, wide, shifted):
        assert result.ks_pvalue < 1e-3
    assert narrow.atc < -0.03 < 0.03 < wide.atc


def test_given_references_are_used_and_the_result_is_deterministic():
    draws, truths = _simulations(jax.random.key(2), num_sims=50, num_draws=20)
    a = tarp(jax.random.key(3), draws, truths)
    b = tarp(jax.random.key(3), draws, truths)
    np.testing.assert_array_equal(a.coverage, b.coverage)
    # A reference at the truth: no draw is nearer, every coverage value is 0.
    at_truth = tarp(jax.random.key(3), draws, truths, references=truths)
    np.testing.assert_array_equal(at_truth.coverage, 0.0)


@pytest.mark.parametrize("change, message", [
    (lambda d, t: (d[0], t), "expected shapes"),
    (lambda d, t: (d, t[:, :1]), "expected shapes"),
    (lambda d, t: (d[:1], t[:1]), "at least 2 simulations"),
    (lambda d, t: (d.at[0, 0, 0].set(jnp.nan), t), "draws: holds NaN"),
    (lambda d, t: (d, t.at[1, 0].set(jnp.inf)), "truths: holds NaN"),
])
def test_bad_input_is_refused_by_name(change, message):
    draws, truths = _simulations(jax.random.key(4), num_sims=10, num_draws=5)
    with pytest.raises(ValueError, match=message):
        tarp(jax.random.key(0), *change(draws, truths))
