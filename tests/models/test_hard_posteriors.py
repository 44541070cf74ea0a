"""The hard-posterior zoo: each model simulates, is accepted by inspect_problem, and where it has
a closed form that form is the model's normalized posterior."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer.util import log_density

from amortized_ppl import inspect_problem
from amortized_ppl.models import bernoulli_rate, folded_mean, funnel, student_t_regression


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget (4 x 4 s)
@pytest.mark.parametrize("module", [bernoulli_rate, folded_mean, funnel, student_t_regression])
def test_each_model_is_a_problem(module):
    problem = inspect_problem(jax.random.key(0), module.model, module.design_fn, (3, 12),
                              num_pilot=16)
    sim = problem.simulator()(jax.random.key(1), 4)
    assert np.all(np.isfinite(np.asarray(sim.latents)))
    assert problem.latent_dim == {bernoulli_rate: 1, folded_mean: 1, funnel: 5,
                                  student_t_regression: 5}[module]


def _grid_posterior(model, site, grid, **data):
    log_joint = jax.vmap(lambda v: log_density(model, (), data, {site: v})[0])(grid)
    weights = jnp.exp(log_joint - jnp.max(log_joint))
    return weights / jnp.trapezoid(weights, grid)


@pytest.mark.slow  # the default tier's budget (3 minutes on 2 cores)
def test_the_bernoulli_closed_form_is_the_posterior():
    y = jnp.array([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    grid = jnp.linspace(1e-4, 1 - 1e-4, 4001)
    numeric = _grid_posterior(bernoulli_rate.model, "rate", grid, y=y)
    exact = jnp.exp(bernoulli_rate.exact_posterior(y).log_prob(grid))
    np.testing.assert_allclose(exact, numeric, atol=2e-3 * float(jnp.max(exact)))


def test_the_folded_closed_form_is_the_posterior_and_its_sampler_matches():
    y = jnp.array([1.5, 0.7, 2.2, 1.1])
    grid = jnp.linspace(-5.0, 5.0, 4001)
    numeric = _grid_posterior(folded_mean.model, "theta", grid, y=y)
    exact = folded_mean.exact_posterior(y)
    np.testing.assert_allclose(jnp.exp(exact.log_prob(grid)), numeric, atol=1e-3)
    draws = exact.sample(jax.random.key(0), (100_000,))
    # both modes at weight 1/2 (5 standard errors: 0.008) and the mean of |theta|
    assert abs(float(jnp.mean(draws > 0)) - 0.5) < 0.008
    mean_abs = jnp.trapezoid(jnp.abs(grid) * numeric, grid)
    assert abs(float(jnp.mean(jnp.abs(draws))) - float(mean_abs)) < 0.01


def test_models_without_data_or_size_say_so():
    for module in (bernoulli_rate, folded_mean, funnel):
        with pytest.raises(ValueError, match="pass the"):
            module.model()
    with pytest.raises(ValueError, match=r"y must have shape \(N, 4\)"):
        funnel.model(y=jnp.zeros((3, 2)))


def test_the_noncentered_funnel_is_the_funnel_in_other_coordinates():
    y = jnp.array([[0.5, -1.0, 2.0, 0.1], [1.5, 0.3, -0.7, 0.9]])
    log_scale, z_decentered = -1.3, jnp.array([0.4, -1.1, 0.2, 2.0])
    z = jnp.exp(log_scale) * z_decentered
    centered = log_density(funnel.model, (), {"y": y}, {"log_scale": log_scale, "z": z})[0]
    noncentered = log_density(funnel.model_noncentered, (), {"y": y},
                              {"log_scale": log_scale, "z_decentered": z_decentered})[0]
    # the change of variables z = exp(log_scale) * z_decentered has Jacobian exp(4 log_scale)
    np.testing.assert_allclose(noncentered, centered + funnel.DIM * log_scale, rtol=1e-5)
