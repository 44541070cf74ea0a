"""The flat encoder: an MLP on the concatenated rows of fixed-size data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.encoders import FlatEncoder, resolve_encoder


def test_reads_rows_in_order_and_ignores_what_padding_holds():
    encoder = FlatEncoder(num_rows=3, summary_size=5, width=16).build(jax.random.key(0), 2)
    tokens = jnp.arange(6.0).reshape(3, 2)
    assert encoder(tokens).shape == (5,)
    # Not permutation invariant: the rows have roles.
    assert not np.allclose(encoder(tokens), encoder(tokens[::-1]))
    mask = jnp.array([True, True, False])
    garbage = tokens.at[2].set(jnp.nan)
    np.testing.assert_array_equal(encoder(garbage, mask), encoder(tokens.at[2].set(7.0), mask))
    assert not np.allclose(encoder(tokens, mask), encoder(tokens))
    batched = jax.vmap(encoder)(jnp.stack([tokens, tokens + 1.0]))
    np.testing.assert_allclose(batched[1], encoder(tokens + 1.0), rtol=1e-6)


def test_refuses_another_number_of_rows_and_bad_settings():
    encoder = FlatEncoder(num_rows=2).build(jax.random.key(0), 3)
    with pytest.raises(ValueError, match="reads exactly 2 rows, got 4"):
        encoder(jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="in_size=3"):
        encoder(jnp.zeros((2, 4)))
    with pytest.raises((TypeError, ValueError), match="num_rows"):
        FlatEncoder(num_rows=0)
    assert resolve_encoder(FlatEncoder(num_rows=2)) == FlatEncoder(num_rows=2)


@pytest.mark.slow  # a guide's compilation
def test_a_guide_with_the_flat_encoder_trains_samples_and_reloads(tmp_path):
    from amortized_ppl import AutoAmortizedNormal, fit, load_guide, save_params
    from amortized_ppl.models.sbibm import get_task

    task = get_task("two_moons")
    guide = AutoAmortizedNormal(task.model, encoder=FlatEncoder(num_rows=1))

    def design(key, num_obs):
        return (), {"num_obs": num_obs}

    result = fit(jax.random.key(0), guide, design_fn=design, num_obs=1, num_steps=20,
                 batch_size=32, progress=False)
    assert np.all(np.isfinite(result.losses)) and result.losses[-5:].mean() < result.losses[:5].mean()
    x = jnp.array([[0.1, -0.2]])
    draws = guide.sample_posterior(jax.random.key(1), result.params, x=x, sample_shape=(7,))
    assert draws["theta"].shape == (7, 2) and bool(jnp.all(jnp.abs(draws["theta"]) < 1))
    save_params(tmp_path / "guide", guide, result.params)
    loaded, params = load_guide(tmp_path / "guide", task.model)
    again = loaded.sample_posterior(jax.random.key(1), params, x=x, sample_shape=(7,))
    np.testing.assert_array_equal(again["theta"], draws["theta"])
