"""Importance weights of guide draws: k-hat separates an exact guide from a wrong one."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

from amortized_ppl.diagnostics.importance import (
    ImportanceResult,
    importance_weights,
    log_importance_weights,
    resample_draws,
)
from amortized_ppl.diagnostics.psis import psis
from amortized_ppl.models.linear_regression import exact_posterior, log_evidence
from tests.helpers import exact_linear_guide, small_design


@pytest.fixture(scope="module")
def exact():
    return exact_linear_guide(newton_steps=4)


@pytest.fixture(scope="module")
def data():
    (x,), _ = small_design(jax.random.key(1), 40)
    y = x @ jnp.array([1.0, -0.5, 0.2]) + 0.3 + 0.5 * jax.random.normal(jax.random.key(2), (40,))
    return x, y


@pytest.mark.slow  # the default tier's budget (3 minutes on 2 cores)
def test_exact_guide_has_constant_weights(data, exact):
    x, y = data
    guide, params = exact
    result = importance_weights(jax.random.key(0), guide, params, x, y=y, num_draws=500)
    assert result.draws.shape == (1, 500, 4) and result.log_weights.shape == (1, 500)
    assert not result.is_batch
    # p(theta, y) / q(theta | y) = p(y) when q is the exact posterior: every weight is the
    # evidence (float32 noise aside), so k-hat is far below 0.5 and ESS is S.
    np.testing.assert_allclose(result.log_weights[0], log_evidence(x, y), atol=2e-3)
    assert float(result.khat[0]) < 0.5
    assert float(result.ess[0]) > 0.99 * 500


@pytest.mark.slow  # the default tier's budget (3 minutes on 2 cores)
def test_wrong_guide_has_large_khat_and_resampling_corrects_it(data):
    x, y = data
    guide, params = exact_linear_guide(newton_steps=0)  # an untrained network
    xs, ys = jnp.stack([x, x]), jnp.stack([y, y + 0.1])
    result = importance_weights(jax.random.key(0), guide, params, xs, y=ys, num_draws=2000)
    assert result.is_batch and result.khat.shape == (2,)
    assert np.all(np.asarray(result.khat) > 0.7)
    assert np.all(np.asarray(result.ess) < 100)


@pytest.mark.slow
def test_resampling_moves_a_shifted_proposal_to_the_posterior(data, exact):
    """Statistical: 4,000 weighted draws (opt in with --runslow)."""
    x, y = data
    guide, params = exact
    post = exact_posterior(x, y)
    sd = jnp.sqrt(jnp.diag(post.cov))
    # A proposal off by 0.3 posterior SDs in every coordinate, weighted by the model.
    proposal = dist.MultivariateNormal(post.mean + 0.3 * sd, covariance_matrix=post.cov)
    draws = proposal.sample(jax.random.key(3), (4000,))[None]
    arguments, mask, _ = guide.prepare(x, y=y)
    log_p = log_importance_weights(guide.problem, arguments, mask, draws)
    log_w = log_p - proposal.log_prob(draws)
    result = ImportanceResult(draws, log_w, psis(log_w), None, None, arguments, mask, False)
    before = np.abs(draws[0].mean(0) - post.mean) / sd
    after = resample_draws(jax.random.key(4), result)[0]
    after = np.abs(after.mean(0) - post.mean) / sd
    assert float(result.khat[0]) < 0.7
    assert before.min() > 0.25 and after.max() < 0.1, (before, after)


def test_bad_input(data, exact):
    x, y = data
    guide, params = exact
    with pytest.raises(ValueError, match="num_draws"):
        importance_weights(jax.random.key(0), guide, params, x, y=y, num_draws=1)
    with pytest.raises(ValueError, match="NaN"):
        importance_weights(jax.random.key(0), guide, params, x, y=y.at[0].set(jnp.nan))
    with pytest.warns(RuntimeWarning, match="100"):
        importance_weights(jax.random.key(0), guide, params, x, y=y, num_draws=50)
