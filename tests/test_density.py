"""The masked log joint (density.py): prior and likelihood parts, padding, mini-batches."""

import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl.data import take_observations
from amortized_ppl.density import log_joint, log_joint_parts
from amortized_ppl.models.linear_regression import model, model_known_noise
from amortized_ppl.problem import inspect_problem
from tests.helpers import small_design


def test_parts_split_the_joint_and_mini_batches_take_rows(key):
    problem = inspect_problem(key, model_known_noise, small_design, (8, 16), num_pilot=8)
    (x,), _ = small_design(jax.random.key(1), 12)
    y = x @ jnp.array([0.5, -1.0, 0.3]) + 0.2
    latents = {"w": jnp.ones(3), "b": jnp.asarray(0.3)}
    bound = {"x": x, "y": y, "sigma": 0.5}
    prior, likelihood = log_joint_parts(model_known_noise, problem.sites, bound, latents)
    total = log_joint(model_known_noise, problem.sites, bound, latents)
    np.testing.assert_allclose(prior + likelihood, total, rtol=1e-6)
    assert float(likelihood) < 0 and abs(float(prior)) > 0
    sub = take_observations(problem.spec, problem.sites, bound, jnp.array([0, 5]))
    assert sub["x"].shape == (2, 3) and sub["y"].shape == (2,)
    np.testing.assert_allclose(sub["y"], y[jnp.array([0, 5])])


def test_masked_log_joint_equals_log_joint_of_the_truncated_data(key):
    problem = inspect_problem(key, model, small_design, (5, 12), num_pilot=8)
    (x,), _ = small_design(jax.random.key(1), 12)
    y = jnp.linspace(-1.0, 1.0, 12)
    latents = {"w": jnp.ones(3), "b": jnp.asarray(0.1), "sigma": jnp.asarray(0.7)}
    mask = jnp.arange(12) < 7
    padded = log_joint(model, problem.sites, {"x": x, "y": y}, latents, mask)
    truncated = log_joint(model, problem.sites, {"x": x[:7], "y": y[:7]}, latents)
    np.testing.assert_allclose(padded, truncated, rtol=1e-5)
