import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.per_example import per_example_value_and_grad


def loss(params, key):
    # One example per key: x ~ N(0, 1); a key with x > 1.5 gives a non-finite loss.
    x = jax.random.normal(key)
    value = 0.5 * jnp.sum((params["w"] - x) ** 2)
    return jnp.where(x > 1.5, jnp.nan, value)


def test_non_finite_examples_are_dropped_and_counted(key):
    keys = jax.random.split(key, 200)
    xs = np.asarray(jax.vmap(jax.random.normal)(keys))
    params = {"w": jnp.zeros(3)}
    out = per_example_value_and_grad(loss, max_norm=None)(params, keys)
    kept = xs <= 1.5
    assert int(out.num_dropped) == int(np.sum(~kept)) > 0
    np.testing.assert_allclose(float(out.loss), np.mean(1.5 * xs[kept] ** 2), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out.grads["w"]), -np.mean(xs[kept]) * np.ones(3),
                               rtol=1e-4, atol=1e-6)


def test_outliers_are_clipped_to_the_norm(key):
    keys = jax.random.split(key, 50)
    xs = np.asarray(jax.vmap(jax.random.normal)(keys))
    params = {"w": jnp.full(3, 10.0)}  # every gradient has norm sqrt(3) |10 - x| > 1
    out = per_example_value_and_grad(loss, max_norm=1.0)(params, keys)
    kept = xs <= 1.5
    assert int(out.num_clipped) == int(np.sum(kept))
    # every kept gradient is a unit vector along (1, 1, 1): their mean is too
    np.testing.assert_allclose(np.asarray(out.grads["w"]), np.ones(3) / np.sqrt(3), rtol=1e-5)


def test_a_batch_with_nothing_kept_has_a_nan_gradient(key):
    keys = jnp.stack([k for k in jax.random.split(key, 400)
                      if float(jax.random.normal(k)) > 1.5][:4])
    out = per_example_value_and_grad(loss)({"w": jnp.zeros(2)}, keys)
    assert int(out.num_dropped) == 4
    assert np.isnan(float(out.loss)) and np.all(np.isnan(np.asarray(out.grads["w"])))


@pytest.mark.parametrize("max_norm", [None, 1.0])
def test_finite_batches_match_the_plain_mean_when_nothing_is_clipped(key, max_norm):
    def smooth(params, key):
        return 0.5 * jnp.sum((params["w"] - 0.1 * jax.random.normal(key)) ** 2)

    keys = jax.random.split(key, 8)
    params = {"w": jnp.array([0.05, -0.02])}
    out = per_example_value_and_grad(smooth, max_norm)(params, keys)
    want_loss, want_grads = jax.value_and_grad(
        lambda p: jnp.mean(jax.vmap(smooth, in_axes=(None, 0))(p, keys)))(params)
    np.testing.assert_allclose(float(out.loss), float(want_loss), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out.grads["w"]), np.asarray(want_grads["w"]), rtol=1e-5)
    assert int(out.num_dropped) == 0 and int(out.num_clipped) == 0
