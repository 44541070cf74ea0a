"""Posterior predictive checks: quiet on data from the model, loud on overdispersed counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.diagnostics.ppc import STATISTICS, posterior_predictive_check
from amortized_ppl.problem import inspect_problem
from tests.registry import no_covariates, poisson_model

NUM_DATASETS, N, S = 12, 60, 1000


@pytest.fixture(scope="module")
def problem():
    return inspect_problem(jax.random.key(0), poisson_model, no_covariates, (20, N))


def _exact_draws(key, y):
    """Exact Gamma posterior draws of log(rate) (the unconstrained latent), (B, S, 1)."""
    shape, rate = 2.0 + y.sum(1), 1.0 + y.shape[1]
    gamma = jax.random.gamma(key, shape[:, None], (y.shape[0], S)) / rate
    return jnp.log(gamma)[..., None]


@pytest.mark.slow  # moved to the slow tier for the default tier's 3-minute budget (issue 17's training test)
def test_counts_from_the_model_pass_and_overdispersed_counts_fail(problem):
    # Issue 15: negative-binomial counts fed to a Poisson model's guide passed the OOD detector
    # and PSIS and took the amortized path without a warning.
    rate_key, poisson_key, nb_key, draw_key = jax.random.split(jax.random.key(1), 4)
    rates = jax.random.gamma(rate_key, 2.0, (NUM_DATASETS, 1)) + 1.0
    poisson = jax.random.poisson(poisson_key, rates, (NUM_DATASETS, N)).astype(jnp.float32)
    # Negative binomial, mean 3 and variance 3 + 3^2: a Gamma(1, 1/3) mixture of Poissons.
    mixing = jax.random.gamma(nb_key, 1.0, (NUM_DATASETS, N)) * 3.0
    overdispersed = jax.random.poisson(jax.random.fold_in(nb_key, 1), mixing).astype(jnp.float32)
    mask = jnp.ones((NUM_DATASETS, N), bool)
    fine = posterior_predictive_check(jax.random.key(2), problem, {"y": poisson, "num_obs": None},
                                      mask, _exact_draws(draw_key, poisson))
    bad = posterior_predictive_check(jax.random.key(2), problem,
                                     {"y": overdispersed, "num_obs": None}, mask,
                                     _exact_draws(draw_key, overdispersed))
    assert fine.statistics == STATISTICS and fine.p_values.shape == (NUM_DATASETS, 6)
    # Family-wise level 0.05 per data set (conservative): at most 2 of 12 by chance.
    assert fine.flagged.sum() <= 2
    assert bad.flagged.all()
    assert all("dispersion" in bad.failing(i) for i in range(NUM_DATASETS))
    np.testing.assert_allclose(fine.observed[:, 0], poisson.mean(1), rtol=1e-5)


def test_an_unreachable_level_and_bad_draws_are_refused(problem):
    y = jnp.ones((1, N))
    with pytest.raises(ValueError, match="cannot be reached with 100 draws"):
        posterior_predictive_check(jax.random.key(0), problem, {"y": y, "num_obs": None},
                                   jnp.ones((1, N), bool), jnp.zeros((1, 100, 1)))
    with pytest.raises(ValueError, match="draws: expected"):
        posterior_predictive_check(jax.random.key(0), problem, {"y": y, "num_obs": None},
                                   jnp.ones((1, N), bool), jnp.zeros((100, 1)))
