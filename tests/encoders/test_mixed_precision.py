"""MixedPrecision (amortized_ppl/encoders/mixed_precision.py): bfloat16 forward pass, float32
parameters and summary, gradients through the casts, checkpoint round trip, clear refusals."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl import AutoAmortizedNormal
from amortized_ppl._recipes import describe_recipe, recipe_from_description
from amortized_ppl.encoders import MixedPrecision, PseudoObservations, SetEncoder

RECIPE = SetEncoder(summary_size=8, hidden_size=16, num_inducing=None)


@pytest.mark.slow  # two Set Transformers run eagerly
def test_the_summary_is_float32_and_close_to_the_float32_encoder():
    mixed = MixedPrecision(RECIPE).build(jax.random.key(0), token_dim=3)
    plain = RECIPE.build(jax.random.key(0), token_dim=3)
    tokens = jax.random.normal(jax.random.key(1), (20, 3))
    mask = jnp.arange(20) < 15
    out, reference = mixed(tokens, mask), plain(tokens, mask)
    assert out.dtype == jnp.float32 and mixed.out_size == plain.out_size
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(eqx.filter(
        mixed, eqx.is_inexact_array)))
    # bfloat16 keeps 8 bits of mantissa: relative rounding 2^-8 = 0.4% per operation.
    scale = float(jnp.max(jnp.abs(reference)))
    assert float(jnp.max(jnp.abs(out - reference))) < 0.05 * scale
    assert not np.array_equal(np.asarray(out), np.asarray(reference))  # bfloat16 really ran


@pytest.mark.slow  # a gradient through a Set Transformer
def test_gradients_reach_the_float32_parameters():
    mixed = MixedPrecision(RECIPE).build(jax.random.key(0), token_dim=3)
    tokens = jax.random.normal(jax.random.key(1), (10, 3))
    grads = eqx.filter_grad(lambda m: jnp.sum(m(tokens) ** 2))(mixed)
    leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_inexact_array))
    assert leaves and all(g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g)))
                          for g in leaves)
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)


@pytest.mark.slow  # a guide's set-up and sampler compile
def test_a_guide_takes_it_and_its_description_round_trips():
    recipe = MixedPrecision(RECIPE)
    assert recipe_from_description(describe_recipe(recipe)) == recipe
    assert recipe.summary_size == RECIPE.summary_size

    def model(y=None, num_obs=None):
        import numpyro
        import numpyro.distributions as dist
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", num_obs if y is None else y.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    guide = AutoAmortizedNormal(model, encoder=recipe)
    guide.setup(jax.random.key(0), lambda k, n: ((), {"num_obs": n}), (5, 10))
    draws = guide.sample_posterior(jax.random.key(1), guide.init_params(), y=jnp.ones(7),
                                   sample_shape=(4,))
    assert draws["mu"].shape == (4,) and draws["mu"].dtype == jnp.float32


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match="compute_dtype"):
        MixedPrecision(RECIPE, compute_dtype="int8")
    with pytest.raises(TypeError, match="encoder recipe"):
        MixedPrecision("set")
    with pytest.raises(ValueError, match="float32"):
        MixedPrecision(PseudoObservations())
