"""The causal Transformer trunk (amortized_ppl/sequence/transformer.py): causality, checks."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.sequence.transformer import CausalTransformer, NextTokenTransformer


def test_causal_transformer_reads_only_the_past():
    trunk = CausalTransformer(6, 16, size=16, num_heads=2, num_blocks=2, key=jax.random.key(0))
    x = jax.random.randint(jax.random.key(1), (12,), 0, 6)
    call = eqx.filter_jit(lambda trunk, x: trunk(x))
    h = call(trunk, x)
    h2 = call(trunk, x.at[5].set((x[5] + 1) % 6))
    # Row t has read x_<t: rows 0..5 cannot see x_5; row 6 does.
    np.testing.assert_allclose(h[:6], h2[:6], atol=1e-6)
    assert float(jnp.abs(h[6] - h2[6]).max()) > 1e-4
    with pytest.raises(ValueError, match="max_len"):
        call(trunk, jnp.zeros(17, dtype=jnp.int32))
    with pytest.raises(ValueError, match="num_heads"):
        CausalTransformer(6, 16, size=10, num_heads=4, key=jax.random.key(0))
    with pytest.raises(ValueError, match="context_tokens"):
        CausalTransformer(6, 16, size=16, num_heads=2, context_tokens=0, key=jax.random.key(0))


def test_symbols_outside_the_vocabulary_raise():
    model = NextTokenTransformer(4, 8, size=8, num_heads=2, num_blocks=1, key=jax.random.key(0))
    call = eqx.filter_jit(lambda model, x: model(x))
    log_probs = call(model, jnp.array([0, 1, 2]))
    assert log_probs.shape == (3, 4)
    np.testing.assert_allclose(jnp.exp(log_probs).sum(-1), 1.0, atol=1e-5)
    for bad in (4, -1):
        with pytest.raises(Exception, match="vocabulary"):
            call(model, jnp.array([0, 1, bad]))
