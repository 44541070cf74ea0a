"""The parametric regime (amortized_ppl/icl/parametric.py): a guide's posterior, then the model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.icl import (
    bayesian_linear_predictor,
    linear_regression,
    parametric_moments,
    sample_tasks,
)
from tests.helpers import exact_linear_guide

NOISE = 0.5  # model_known_noise's sigma


def _tasks():
    family = linear_regression(3, noise_scale=NOISE)
    return sample_tasks(jax.random.key(0), family, 4, max_context=60, min_context=20,
                        shift="wide")


@pytest.mark.slow  # compiles the Newton-refined sampler for 4,000 draws: about 50 s on 2 cores
def test_exact_guide_through_the_likelihood_gives_the_exact_predictive():
    # newton_steps > 0 with a zeroed head is the exact posterior of this linear-Gaussian model.
    guide, params = exact_linear_guide()
    batch = _tasks()
    num_draws = 4000
    mean, log_scale = parametric_moments(
        jax.random.key(1), guide, params, batch.context_x, batch.context_y, batch.context_mask,
        batch.query_x, num_draws=num_draws)
    exact = jax.vmap(bayesian_linear_predictor(NOISE, return_moments=True))
    want_mean, want_log_scale = exact(batch.context_x, batch.context_y, batch.context_mask,
                                      batch.query_x)
    # Monte Carlo error of a mean of 4000 draws: 5 SEs of the predictive SD (about 0.52).
    tolerance = 5 * float(jnp.max(jnp.exp(want_log_scale))) / np.sqrt(num_draws)
    np.testing.assert_allclose(mean, want_mean, atol=tolerance)
    # log SD from 4000 draws: SE about 1 / sqrt(2 * 4000) = 0.011.
    np.testing.assert_allclose(log_scale, want_log_scale, atol=0.06)


@pytest.mark.slow  # compiles the guide's sampler and the model's predictive: about 11 s
def test_an_untrained_network_is_far_from_the_exact_predictive():
    guide, params = exact_linear_guide(newton_steps=0)
    batch = _tasks()
    mean, _ = parametric_moments(jax.random.key(1), guide, params, batch.context_x,
                                 batch.context_y, batch.context_mask, batch.query_x)
    want, _ = jax.vmap(bayesian_linear_predictor(NOISE, return_moments=True))(
        batch.context_x, batch.context_y, batch.context_mask, batch.query_x)
    assert float(jnp.mean((mean - want) ** 2)) > 0.5


def test_bad_shapes_and_draws_are_refused():
    guide, params = exact_linear_guide()  # cached and shared with other modules
    batch = _tasks()
    args = (batch.context_x, batch.context_y, batch.context_mask)
    with pytest.raises(ValueError, match="query_x"):
        parametric_moments(jax.random.key(1), guide, params, *args, batch.query_x[0])
    with pytest.raises(ValueError, match="query_x"):  # another input dimension
        parametric_moments(jax.random.key(1), guide, params, *args, batch.query_x[..., :2])
    with pytest.raises(ValueError, match="context_x"):
        parametric_moments(jax.random.key(1), guide, params, batch.context_x[0],
                           *args[1:], batch.query_x)
    with pytest.raises(ValueError, match="num_draws"):
        parametric_moments(jax.random.key(1), guide, params, *args, batch.query_x, num_draws=1)
