"""The problem as a value: inspected once, immutable, JSON-describable, restorable."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from amortized_ppl.models import linear_regression as lr
from amortized_ppl.problem import inspect_problem, problem_from_data, restore_problem
from tests.registry import linear_design, no_covariates, poisson_model


@pytest.fixture(scope="module")
def problem():
    return inspect_problem(jax.random.key(0), lr.model_known_noise, linear_design, (8, 24))


def test_inspects_sites_data_and_sizes(problem):
    assert problem.sites.names == ("w", "b")
    assert problem.latent_dim == 3 and problem.token_dim == 3
    assert problem.data_arguments == ("x", "y")
    assert problem.num_obs == (8, 24) and problem.max_obs == 24
    assert problem.design_fn is linear_design and problem.model is lr.model_known_noise


def test_statistics_match_the_prior(problem):
    # w ~ N(0, 1) per coordinate and b ~ N(0, 1): 1024 pilot draws give the prior's mean and
    # covariance to about 3 / sqrt(1024) ~ 0.1.
    np.testing.assert_allclose(problem.prior_loc, 0.0, atol=0.12)
    cov = problem.prior_scale_tril @ problem.prior_scale_tril.T
    np.testing.assert_allclose(cov, np.eye(3), atol=0.15)
    np.testing.assert_allclose(problem.latent_anchor, 0.0, atol=0.15)
    # Covariates are standard normal; y has variance |w|^2 + b^2 + noise^2 ~ 3.25 on average.
    np.testing.assert_allclose(problem.token_loc[:2], 0.0, atol=0.05)
    np.testing.assert_allclose(problem.token_scale[:2], 1.0, atol=0.05)
    assert 1.2 < float(problem.token_scale[2]) < 2.4


def test_is_an_immutable_value_whose_structure_is_compared_by_identity(problem):
    with pytest.raises(dataclasses_error()):
        problem.structure.model = None
    other = inspect_problem(jax.random.key(0), lr.model_known_noise, linear_design, (8, 24))
    np.testing.assert_array_equal(other.token_loc, problem.token_loc)  # fixed by the key
    assert other.structure != problem.structure  # but a program compiled for one is not reused

    calls = []

    @eqx.filter_jit
    def latent_dim(p):
        calls.append(1)
        return p.prior_loc.sum()

    latent_dim(problem), latent_dim(problem), latent_dim(other)
    assert len(calls) == 2


def dataclasses_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_log_density_is_the_unconstrained_log_joint(problem):
    (x,), _ = linear_design(jax.random.key(3), 10)
    y = x @ jnp.array([1.0, -1.0]) + 0.3
    u = jnp.array([0.5, -0.2, 0.1])
    expected = (dist.Normal(0, 1).log_prob(u).sum()
                + dist.Normal(x @ u[:2] + u[2], lr.NOISE_SCALE).log_prob(y).sum())
    np.testing.assert_allclose(problem.log_density(u, {"x": x, "y": y}), expected, rtol=1e-5)
    mask = jnp.arange(10) < 6
    masked = problem.log_density(u, {"x": x, "y": y}, mask)
    truncated = problem.log_density(u, {"x": x[:6], "y": y[:6]})
    np.testing.assert_allclose(masked, truncated, rtol=1e-5)
    prior = dist.Normal(0, 1).log_prob(u).sum()
    scaled = problem.log_density(u, {"x": x, "y": y}, None, 3.0)
    np.testing.assert_allclose(scaled - prior, 3.0 * (expected - prior), rtol=1e-5)


def test_prepare_gives_a_batch_axis_and_checks_masks(problem):
    (x,), _ = linear_design(jax.random.key(3), 10)
    y = jnp.ones(10)
    arguments, mask, is_batch = problem.prepare(problem.bind((x,), {"y": y}))
    assert not is_batch and arguments["x"].shape == (1, 10, 2) and mask.shape == (1, 10)
    _, mask, is_batch = problem.prepare(problem.bind((jnp.stack([x, x]),), {"y": jnp.ones((2, 10))}),
                                        np.ones((2, 10), bool))
    assert is_batch and mask.shape == (2, 10)
    with pytest.raises(ValueError, match="data_mask: expected a bool array of shape"):
        problem.prepare(problem.bind((x,), {"y": y}), np.ones(9, bool))
    with pytest.raises(ValueError, match="has no observation"):
        problem.prepare(problem.bind((x,), {"y": y}), np.zeros(10, bool))
    with pytest.raises(ValueError, match="more than the 24"):
        (big,), _ = linear_design(jax.random.key(3), 30)
        problem.prepare(problem.bind((big,), {"y": jnp.ones(30)}), max_obs=24)


def test_simulator_defaults_to_the_problem_and_refuses_without_a_design(problem):
    # Compiled: one program instead of dispatching each operation (eager takes seconds).
    batch = jax.jit(problem.simulator(), static_argnums=1)(jax.random.key(1), 4)
    assert batch.latents.shape == (4, 3) and batch.mask.shape == (4, 24)
    assert bool(jnp.all(batch.mask.sum(1) >= 8))
    fixed = jax.jit(problem.simulator(num_obs=5), static_argnums=1)(jax.random.key(1), 2)
    assert fixed.mask.shape == (2, 5) and bool(jnp.all(fixed.mask))
    from_data = problem_from_data(jax.random.key(0), poisson_model,
                                  {"y": jnp.array([1, 2, 0, 4]), "num_obs": None})
    with pytest.raises(ValueError, match="no design function"):
        from_data.simulator()


def test_describe_is_json_and_restores(problem):
    description = json.loads(json.dumps(problem.describe()))
    assert description["sites"][0] == {"name": "w", "shape": [2],
                                       "support": "IndependentConstraint(Real(), 1)"}
    assert description["example"]["x"] == {"shape": [24, 2], "dtype": "float32"}
    restored = restore_problem(lr.model_known_noise, description, problem.arrays(),
                               design_fn=linear_design)
    assert restored.describe() == problem.describe()
    for name in ("token_loc", "token_scale", "latent_anchor", "prior_loc", "prior_scale_tril"):
        np.testing.assert_array_equal(getattr(restored, name), getattr(problem, name))
    with pytest.raises(ValueError, match="sites differ|not arguments of the model"):
        restore_problem(lr.model, description, problem.arrays())


def test_from_data_reads_the_size_and_the_prior(key=jax.random.key(0)):
    problem = problem_from_data(key, poisson_model, {"y": jnp.array([1, 2, 0, 4, 3]),
                                                     "num_obs": None})
    assert problem.num_obs == (5, 5) and problem.max_obs == 5 and problem.design_fn is None
    # rate ~ Gamma(2, 1): log rate has mean digamma(2) = 0.4228 and SD sqrt(trigamma(2)) = 0.80.
    np.testing.assert_allclose(problem.prior_loc, [0.4228], atol=0.08)
    np.testing.assert_allclose(problem.prior_scale_tril[0, 0], 0.80, atol=0.06)
    restored = restore_problem(poisson_model, json.loads(json.dumps(problem.describe())),
                               problem.arrays())
    assert restored.sites.names == ("rate",)


def test_bad_models_and_names_are_refused():
    with pytest.raises(TypeError, match="model: expected a callable"):
        inspect_problem(jax.random.key(0), "model", linear_design, 10)
    with pytest.raises(ValueError, match="observed: the model has no sample site 'nope'"):
        inspect_problem(jax.random.key(0), lr.model_known_noise, linear_design, 10,
                        observed={"nope": "y"})
    with pytest.raises(ValueError, match="covariates: \\['z'\\] are not arguments"):
        inspect_problem(jax.random.key(0), lr.model_known_noise, linear_design, 10,
                        covariates=("z",))
    with pytest.raises(ValueError, match="num_obs: expected 1 <= low <= high"):
        inspect_problem(jax.random.key(0), lr.model_known_noise, linear_design, (10, 5))

    def local_model(y=None, num_obs=None):
        n = num_obs if y is None else y.shape[0]
        with numpyro.plate("data", n):
            z = numpyro.sample("z", dist.Normal(0, 1))
            numpyro.sample("y", dist.Normal(z, 1), obs=y)

    with pytest.raises(ValueError, match="'z' lies inside the data plate"):
        inspect_problem(jax.random.key(0), local_model, no_covariates, 10)
