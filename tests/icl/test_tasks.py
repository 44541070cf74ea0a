"""Task families and the batch sampler (amortized_ppl/icl/tasks.py): shapes, masks, shifts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.icl import (
    linear_regression,
    logistic_classification,
    random_mlp,
    sample_tasks,
    shift_queries,
    sinusoid,
)

# The default tier samples one family (each costs a compilation); the others run with --runslow.
FAMILIES = [linear_regression(1)] + [
    pytest.param(family, marks=pytest.mark.slow)
    for family in (
        linear_regression(3, noise_scale=0.1),
        linear_regression(8),
        sinusoid(),
        random_mlp(2),
        logistic_classification(2),
    )
]


@pytest.mark.parametrize(
    "family", FAMILIES, ids=["linear1", "linear3", "linear8", "sinusoid", "mlp2", "logistic2"]
)
def test_batches_are_padded_and_masked(family):
    batch = sample_tasks(jax.random.key(0), family, 5, max_context=24, min_context=4)
    assert batch.context_x.shape == batch.query_x.shape == (5, 24, family.x_dim)
    assert batch.context_y.shape == batch.query_y.shape == batch.context_mask.shape == (5, 24)
    assert batch.latent.shape == (5, family.latent_dim)
    sizes = batch.context_mask.sum(1)
    assert np.all((sizes >= 4) & (sizes <= 24))
    np.testing.assert_array_equal(batch.query_mask, batch.context_mask)
    assert float(jnp.abs(jnp.where(batch.context_mask, 0.0, batch.context_y)).max()) == 0.0
    # A pure function of the key.
    again = sample_tasks(jax.random.key(0), family, 5, max_context=24, min_context=4)
    np.testing.assert_array_equal(batch.query_y, again.query_y)


@pytest.mark.slow  # a second compilation of the sampler
def test_noise_free_linear_outputs_follow_the_latent():
    batch = sample_tasks(jax.random.key(1), linear_regression(3), 2, max_context=8, min_context=8)
    design = jnp.concatenate([batch.context_x, jnp.ones((2, 8, 1))], axis=-1)
    np.testing.assert_allclose(
        jnp.einsum("bnd,bd->bn", design, batch.latent), batch.context_y, rtol=1e-5, atol=1e-5
    )


def test_query_shifts():
    x = jax.random.normal(jax.random.key(2), (50, 3))
    np.testing.assert_allclose(shift_queries(jax.random.key(3), x, "wide"), 3 * x)
    far = shift_queries(jax.random.key(3), x, "far")
    centre = (far - 0.1 * x)[0]
    np.testing.assert_allclose(far - 0.1 * x, jnp.broadcast_to(centre, x.shape), atol=1e-6)
    np.testing.assert_allclose(jnp.linalg.norm(centre), 3.0, rtol=1e-5)
    with pytest.raises(ValueError, match="shift: expected one of"):
        shift_queries(jax.random.key(3), x, "near")


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="min_context"):
        sample_tasks(jax.random.key(0), linear_regression(1), 2, max_context=8, min_context=9)
    with pytest.raises(ValueError, match="batch_size"):
        sample_tasks(jax.random.key(0), linear_regression(1), 0)
    with pytest.raises(TypeError, match="family"):
        sample_tasks(jax.random.key(0), "linear", 2)
    with pytest.raises(ValueError, match="noise_scale"):
        linear_regression(1, noise_scale=-1.0)
