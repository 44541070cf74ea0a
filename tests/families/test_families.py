"""Posterior families and the Laplace stage (families/): zero outputs give the base, stages
compose, recipes describe themselves."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

from amortized_ppl._recipes import describe_recipe, recipe_from_description
from amortized_ppl.families import (
    DiagonalNormal,
    LaplaceRefined,
    MultivariateNormal,
    gaussian_moments,
)

D, C = 3, 5
COV = jnp.array([[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 2.0]])
MEAN = jnp.array([1.0, -2.0, 0.5])


def log_density(u):
    return dist.MultivariateNormal(MEAN, COV).log_prob(u)


def _zero_last(head):
    last = head.mlp.layers[-1]
    return eqx.tree_at(lambda h: (h.mlp.layers[-1].weight, h.mlp.layers[-1].bias), head,
                       (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)))


@pytest.mark.parametrize("recipe", [DiagonalNormal(head_width=8, head_depth=1),
                                    MultivariateNormal(head_width=8, head_depth=1)])
def test_gaussian_families_give_the_base_for_zero_outputs(recipe):
    head = _zero_last(recipe.build(jax.random.key(0), D, C))
    base = (MEAN, jnp.linalg.cholesky(COV))
    out = head(jnp.ones(C), log_density=None, anchor=jnp.zeros(D), base=base)
    loc, tril = gaussian_moments(out.posterior)
    np.testing.assert_allclose(loc, MEAN, rtol=1e-6)
    expected = COV if isinstance(recipe, MultivariateNormal) else jnp.diag(jnp.diag(COV))
    np.testing.assert_allclose(tril @ tril.T, expected, rtol=1e-5, atol=1e-6)
    assert out.start is None
    # Without a base: unit scales around zero.
    loc, tril = gaussian_moments(head(jnp.ones(C), log_density=None, anchor=None).posterior)
    np.testing.assert_allclose(loc, 0.0, atol=1e-6)
    np.testing.assert_allclose(tril, jnp.eye(D), atol=1e-5)


@pytest.mark.parametrize("inner", [DiagonalNormal(head_width=8, head_depth=1),
                                   MultivariateNormal(head_width=8, head_depth=1)])
def test_the_laplace_stage_wraps_any_family_and_is_exact_on_a_gaussian(inner):
    recipe = LaplaceRefined(inner, num_steps=2, head_width=8, head_depth=1)
    head = recipe.build(jax.random.key(0), D, C)
    head = eqx.tree_at(lambda h: h.inner, head, _zero_last(head.inner))
    out = eqx.filter_jit(lambda h: h(jnp.ones(C), log_density=log_density, anchor=jnp.zeros(D)))(
        head)
    loc, tril = gaussian_moments(out.posterior)
    np.testing.assert_allclose(loc, MEAN, atol=1e-4)
    expected = COV if isinstance(inner, MultivariateNormal) else jnp.diag(jnp.diag(COV))
    if isinstance(inner, MultivariateNormal):
        np.testing.assert_allclose(tril @ tril.T, expected, atol=1e-4)
    else:  # a diagonal family keeps the Laplace fit's marginal SDs
        np.testing.assert_allclose(jnp.diag(tril) ** 2, jnp.diag(COV), atol=1e-4)
    # The proposal of where the steps start is an auxiliary output the losses train.
    assert isinstance(out.start, dist.Independent) and out.start.event_shape == (D,)
    # The inner family reads the context and where the steps went: C + 2 D features.
    assert head.inner.mlp.in_size == C + 2 * D


def test_recipes_round_trip_through_json_and_check_their_arguments():
    recipe = LaplaceRefined(MultivariateNormal(head_width=64), num_steps=4)
    description = json.loads(json.dumps(describe_recipe(recipe)))
    assert description["type"] == "LaplaceRefined"
    assert description["family"] == {"type": "MultivariateNormal", "head_width": 64,
                                     "head_depth": 2}
    assert recipe_from_description(description) == recipe
    assert hash(recipe) == hash(recipe_from_description(description))  # a static jit key
    with pytest.raises(ValueError, match="num_steps: expected an int >= 1"):
        LaplaceRefined(MultivariateNormal(), num_steps=0)
    with pytest.raises(TypeError, match="family: expected a family recipe"):
        LaplaceRefined("mvn")
    with pytest.raises(ValueError, match="unknown fields \\['width'\\]"):
        recipe_from_description({"type": "MultivariateNormal", "width": 3})
    with pytest.raises(TypeError, match="A Gaussian posterior was expected"):
        gaussian_moments(dist.Gamma(1.0, 1.0))
