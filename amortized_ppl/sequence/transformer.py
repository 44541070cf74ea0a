"""A causal Transformer over symbol sequences, and the plain next-token predictor built on it.

Position ``t`` of the output has read ``x_<t`` only: the input is ``[BOS, x_0, ..., x_T-2]`` with a
causal attention mask, so ``features(x)[t]`` summarizes the context before ``x_t`` and a head on it
predicts ``x_t``. Every module works on one unbatched sequence; batch with ``jax.vmap``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = ["CausalTransformer", "NextTokenTransformer", "TransformerBlock"]


class TransformerBlock(eqx.Module):
    """Pre-norm masked self-attention and a GELU feed-forward (``ff_multiplier`` x wide), both
    residual; the mask (causal here, the in-context learners' own in ``icl``) is the caller's."""

    attn_norm: eqx.nn.LayerNorm
    attention: eqx.nn.MultiheadAttention
    ff_norm: eqx.nn.LayerNorm
    ff_in: eqx.nn.Linear
    ff_out: eqx.nn.Linear

    def __init__(self, size: int, num_heads: int, *, key: jax.Array, ff_multiplier: int = 4):
        a_key, i_key, o_key = jax.random.split(key, 3)
        self.attn_norm = eqx.nn.LayerNorm(size)
        self.attention = eqx.nn.MultiheadAttention(num_heads, size, key=a_key)
        self.ff_norm = eqx.nn.LayerNorm(size)
        self.ff_in = eqx.nn.Linear(size, ff_multiplier * size, key=i_key)
        self.ff_out = eqx.nn.Linear(ff_multiplier * size, size, key=o_key)

    def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
        z = jax.vmap(self.attn_norm)(h)
        h = h + self.attention(z, z, z, mask=mask)
        z = jax.vmap(self.ff_norm)(h)
        return h + jax.vmap(self.ff_out)(jax.nn.gelu(jax.vmap(self.ff_in)(z)))


class CausalTransformer(eqx.Module):
    """Symbols ``(T,)`` -> context features ``(T, size)``, row t depending on ``x_<t`` only.

    Row t embeds the ``context_tokens`` symbols just before it (``x_t-1``, ``x_t-2``, ... with their
    own tables, summed), not only ``x_t-1``: with two, every row holds a transition
    ``(x_t-2, x_t-1)``, so one attention layer can already average transition statistics over the
    prefix, which is what identifies an HMM. Without this the first layer must learn a
    previous-token head before anything else, and on a 2-core CPU budget that is most of training.

    Attributes:
        embeddings: ``context_tokens`` tables of ``num_symbols + 1`` rows; the last row is the
            begin-of-sequence token (also used before the start).
        positions: learned position embeddings, ``(max_len, size)``.
        blocks: the causal Transformer blocks.
        final_norm: layer norm on the output features.
    """

    embeddings: tuple[eqx.nn.Embedding, ...]
    positions: jax.Array
    blocks: tuple[TransformerBlock, ...]
    final_norm: eqx.nn.LayerNorm
    num_symbols: int = eqx.field(static=True)

    def __init__(
        self,
        num_symbols: int,
        max_len: int,
        *,
        size: int = 64,
        num_heads: int = 4,
        num_blocks: int = 2,
        context_tokens: int = 2,
        key: jax.Array,
    ):
        if size % num_heads:
            raise ValueError(f"num_heads must divide size; got size={size}, num_heads={num_heads}.")
        if context_tokens < 1:
            raise ValueError(f"context_tokens: expected an int >= 1, got {context_tokens}.")
        e_key, p_key, *b_keys = jax.random.split(key, 2 + num_blocks)
        self.embeddings = tuple(
            eqx.nn.Embedding(num_symbols + 1, size, key=k)
            for k in jax.random.split(e_key, context_tokens)
        )
        self.positions = 0.02 * jax.random.normal(p_key, (max_len, size))
        self.blocks = tuple(TransformerBlock(size, num_heads, key=k) for k in b_keys)
        self.final_norm = eqx.nn.LayerNorm(size)
        self.num_symbols = num_symbols

    @property
    def size(self) -> int:
        return self.positions.shape[-1]

    @property
    def max_len(self) -> int:
        return self.positions.shape[0]

    def __call__(self, symbols: jax.Array) -> jax.Array:
        """Features ``(T, size)`` of symbols ``(T,)``; row t has seen ``symbols[:t]``."""
        num_steps = symbols.shape[0]
        if num_steps > self.max_len:
            raise ValueError(
                f"symbols: the sequence has {num_steps} steps, more than max_len={self.max_len}."
            )
        # Out-of-range symbols would silently read the begin-of-sequence row (or be clamped).
        symbols = eqx.error_if(
            symbols, (symbols < 0) | (symbols >= self.num_symbols),
            f"symbols: every symbol must be in the vocabulary [0, {self.num_symbols}).",
        )
        h = self.positions[:num_steps]
        for lag, table in enumerate(self.embeddings, start=1):
            # x_t-lag at row t; rows before the start read the begin-of-sequence token.
            pad = jnp.full((lag,), self.num_symbols, dtype=symbols.dtype)
            shifted = jnp.concatenate([pad, symbols])[:num_steps]
            h = h + jax.vmap(table)(shifted)
        mask = jnp.tril(jnp.ones((num_steps, num_steps), dtype=bool))
        for block in self.blocks:
            h = block(h, mask)
        return jax.vmap(self.final_norm)(h)


class NextTokenTransformer(eqx.Module):
    """The plain predictor: ``log p(x_t = v | x_<t)`` from a causal Transformer and a linear head."""

    trunk: CausalTransformer
    head: eqx.nn.Linear

    def __init__(self, num_symbols: int, max_len: int, *, key: jax.Array, **trunk_kwargs):
        t_key, h_key = jax.random.split(key)
        self.trunk = CausalTransformer(num_symbols, max_len, key=t_key, **trunk_kwargs)
        self.head = eqx.nn.Linear(self.trunk.size, num_symbols, key=h_key)

    def __call__(self, symbols: jax.Array) -> jax.Array:
        """Log next-symbol probabilities ``(T, V)`` for symbols ``(T,)``."""
        return jax.nn.log_softmax(jax.vmap(self.head)(self.trunk(symbols)), axis=-1)

    def loss(self, symbols: jax.Array, factors: jax.Array | None = None) -> jax.Array:
        """Mean next-token negative log-likelihood over a batch ``(B, T)`` (``factors`` unused)."""
        log_probs = jax.vmap(self)(symbols)
        token_lp = jnp.take_along_axis(log_probs, symbols[..., None], axis=-1)[..., 0]
        return -jnp.mean(token_lp)
