"""The sbibm references against independent computations (slow tier).

Exact samplers (two_moons by inversion, gaussian_mixture by rejection) against importance
sampling from the prior with the model's own density; slcp's symmetry-completed NUTS against
unfolded NUTS chains started in each of the four modes; bernoulli_glm's NUTS against importance
sampling from its Laplace Gaussian.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer.util import log_density

from amortized_ppl.models.sbibm import get_task, observation, reference_draws, slcp
from amortized_ppl.reference import reference_posterior

pytestmark = pytest.mark.slow


def _weighted_moments(model, x, theta):
    log_p = jax.vmap(lambda t: log_density(model, (), {"x": x}, {"theta": t})[0])(theta)
    w = jnp.exp(log_p - jax.scipy.special.logsumexp(log_p))
    mean = jnp.sum(w[:, None] * theta, 0)
    sd = jnp.sqrt(jnp.sum(w[:, None] * (theta - mean) ** 2, 0))
    return mean, sd, 1.0 / jnp.sum(w ** 2)


@pytest.mark.parametrize("name, bound", [("two_moons", 1.0), ("gaussian_mixture", 10.0)])
def test_exact_references_match_importance_sampling_from_the_prior(name, bound):
    """2x10^6 prior draws weighted by the model's density (ESS above 2,000 on these
    observations) against 10^4 reference draws: means and SDs within 5 Monte Carlo standard
    errors of their difference."""
    task = get_task(name)
    _, x = observation(task, 0)
    ref = reference_draws(jax.random.key(1), task, x, 10_000)
    theta = jax.random.uniform(jax.random.key(2), (2_000_000, 2), minval=-bound, maxval=bound)
    mean, sd, ess = _weighted_moments(task.model, x, theta)
    assert float(ess) > 2000
    se = sd * jnp.sqrt(1 / 10_000 + 1 / ess)
    assert np.all(np.abs(ref.mean(0) - mean) < 5 * se), (ref.mean(0), mean, se)
    assert np.all(np.abs(ref.std(0) - sd) < 5 * se), (ref.std(0), sd)


def test_slcp_reference_holds_the_four_modes_each_as_chains_started_there_see_them():
    """Unfolded NUTS chains started in each sign pattern stay in it (the modes do not mix);
    folded onto (+, +), each chain's mean agrees with the symmetry-completed reference's."""
    task = get_task("slcp")
    _, x = observation(task, 1)
    ref = reference_draws(jax.random.key(0), task, x, 10_000)
    fractions = slcp.mode_fractions(ref)
    assert np.all(np.abs(fractions - 0.25) < 0.02), fractions
    folded_ref = np.asarray(ref).copy()
    folded_ref[:, 2:4] = np.abs(folded_ref[:, 2:4])
    start = jnp.median(jnp.asarray(folded_ref), axis=0)
    signs = jnp.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], dtype=float)
    init = jnp.tile(start, (4, 1)).at[:, 2:4].multiply(signs)
    unit = init / 3.0  # the interval transform's unconstrained value: atanh(theta / 3)
    with pytest.warns(RuntimeWarning, match=r"R-hat \(rank-normalized\)"):  # the modes do not mix
        result = reference_posterior(jax.random.key(3), slcp.model, num_chains=4,
                                     num_warmup=1000, num_samples=2500, target_accept=0.99,
                                     x=x, init_params={"theta": jnp.arctanh(unit)})
    chains = np.asarray(result.samples["theta"])  # (4, 2500, 5)
    for chain, (a, b) in zip(chains, np.asarray(signs)):
        assert np.all(np.sign(chain[:, 2]) == a) and np.all(np.sign(chain[:, 3]) == b)
    folded = np.abs(chains[:, :, 2:4])
    sd = folded_ref[:, 2:4].std(0)
    for chain in folded:
        assert np.all(np.abs(chain.mean(0) - folded_ref[:, 2:4].mean(0)) < 0.15 * sd)


def test_bernoulli_glm_reference_matches_importance_sampling_from_laplace():
    """NUTS (4 x 2,500) against 2x10^5 draws from the Laplace Gaussian (widened 1.2x) weighted
    by the model's density: means within 0.1 posterior SD."""
    task = get_task("bernoulli_glm")
    _, x = observation(task, 0)
    ref = reference_draws(jax.random.key(0), task, x, 10_000)

    def log_p(t):
        return log_density(task.model, (), {"x": x}, {"theta": t})[0]

    mode = jnp.asarray(ref.mean(0))
    for _ in range(20):
        mode = mode - jnp.linalg.solve(jax.hessian(log_p)(mode), jax.grad(log_p)(mode))
    cov = 1.44 * jnp.linalg.inv(-jax.hessian(log_p)(mode))
    proposal = jax.random.multivariate_normal(jax.random.key(1), mode, cov, (200_000,))
    log_q = jax.scipy.stats.multivariate_normal.logpdf(proposal, mode, cov)
    log_w = jax.vmap(log_p)(proposal) - log_q
    w = jnp.exp(log_w - jax.scipy.special.logsumexp(log_w))
    mean = jnp.sum(w[:, None] * proposal, 0)
    sd = ref.std(0)
    assert float(1 / jnp.sum(w ** 2)) > 10_000
    assert np.all(np.abs(ref.mean(0) - mean) < 0.1 * sd), (ref.mean(0), mean)
