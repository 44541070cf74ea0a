"""Metrics against the oracle (amortized_ppl/sequence/evaluate.py): KLs, NLL, ambiguity bins."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp

from amortized_ppl.sequence.evaluate import (
    ambiguity_bins,
    backward_kl,
    by_ambiguity,
    environment_posterior_kl,
    forward_kl,
    token_nll,
)


def test_forward_kl_and_token_nll():
    p = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (3, 5)))
    q = jax.nn.log_softmax(jax.random.normal(jax.random.key(1), (3, 5)))
    np.testing.assert_allclose(forward_kl(p, p), 0.0, atol=1e-6)
    assert bool(jnp.all(forward_kl(p, q) > 0))
    # The oracle may rule symbols out (log 0); they contribute nothing.
    p0 = p.at[:, 0].set(-jnp.inf)
    p0 = p0 - logsumexp(p0, axis=-1, keepdims=True)
    assert bool(jnp.all(jnp.isfinite(forward_kl(p0, q))))
    x = jnp.array([0, 2, 4])
    np.testing.assert_allclose(token_nll(q, x), -q[jnp.arange(3), x])


def test_backward_kl_is_the_forward_kl_with_the_arguments_swapped_and_infinite_off_support():
    p = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (3, 5)))
    q = jax.nn.log_softmax(jax.random.normal(jax.random.key(1), (3, 5)))
    np.testing.assert_allclose(backward_kl(p, q), forward_kl(q, p), rtol=1e-6)
    np.testing.assert_allclose(backward_kl(p, p), 0.0, atol=1e-6)
    # A model that puts mass where the oracle has none is infinitely far in this direction;
    # mass the model rules out costs nothing.
    p0 = jnp.log(jnp.array([0.5, 0.5, 0.0]))
    assert float(backward_kl(p0, jnp.log(jnp.array([0.4, 0.4, 0.2])))) == np.inf
    np.testing.assert_allclose(backward_kl(p0, jnp.log(jnp.array([1.0, 0.0, 0.0]))), np.log(2.0),
                               rtol=1e-6)


def test_environment_posterior_kl():
    p = jnp.log(jnp.array([0.5, 0.5, 0.0]))
    np.testing.assert_allclose(environment_posterior_kl(p, p), 0.0, atol=1e-7)
    q = jnp.log(jnp.array([0.25, 0.25, 0.5]))
    np.testing.assert_allclose(environment_posterior_kl(p, q), np.log(2.0), atol=1e-6)


def test_by_ambiguity():
    rng = np.random.default_rng(0)
    amb = rng.uniform(size=300)
    values = 2.0 * amb
    out = by_ambiguity(values, amb)
    assert sum(out["count"]) == 300 and len(out["mean"]) == 3
    assert out["count"] == [100, 100, 100]
    assert out["mean"][0] < out["mean"][1] < out["mean"][2]
    # Ties (many positions with ambiguity exactly 0) still give equal-count bins.
    tied = np.concatenate([np.zeros(200), amb[:100]])
    assert by_ambiguity(tied, tied)["count"] == [100, 100, 100]
    np.testing.assert_array_equal(ambiguity_bins(np.array([0.3, 0.1, 0.2])), [2, 0, 1])
    with pytest.raises(ValueError, match="same size"):
        by_ambiguity(values[:5], amb)
