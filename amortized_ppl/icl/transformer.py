"""A Transformer under an explicit attention mask, and the three masks the learners need.

:class:`MaskedTransformer` runs pre-norm self-attention blocks over one unbatched sequence of
tokens ``(t, size)`` with a boolean mask ``attend (t, t)``: row ``i`` reads token ``j`` only where
``attend[i, j]``. Every mask built here lets each token read itself, so no softmax row is empty
(an empty row would spread uniform weight over padding). The masks:

- :func:`implicit_attention_mask`: context tokens read the real context tokens; each query reads
  the real context and itself; **no token reads a query token**, so queries are predicted
  independently and cannot leak into the context.
- :func:`bottleneck_attention_mask`: a CLS token (row 0) reads itself and the real context;
  context tokens read the real context only; **no token reads the CLS token**, so its output
  ``z`` is a bottleneck that summarises the context.
- :func:`latent_query_attention_mask`: a latent token (row 0) reads itself; each query reads the
  latent and itself only.

Padded tokens (``context_mask`` False) are read by no real token; their own rows are computed
and ignored.

References:
    Vaswani, A., et al. (2017). Attention is all you need. NeurIPS.
    Mittal, S., et al. (2024). Does learning the right latent variables necessarily improve
    in-context learning? arXiv:2405.19162.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from amortized_ppl._checks import check_int
from amortized_ppl.sequence.transformer import TransformerBlock

__all__ = [
    "MaskedTransformer",
    "bottleneck_attention_mask",
    "implicit_attention_mask",
    "latent_query_attention_mask",
]


def implicit_attention_mask(context_mask, num_queries: int):
    """The ``(n + m, n + m)`` mask over ``[context tokens, query tokens]``."""
    num_context = context_mask.shape[0]
    eye = jnp.eye(num_context + num_queries, dtype=bool)
    reads_context = jnp.broadcast_to(context_mask, (num_context + num_queries, num_context))
    no_queries = jnp.zeros((num_context + num_queries, num_queries), bool)
    return jnp.concatenate([reads_context, no_queries], axis=1) | eye


def bottleneck_attention_mask(context_mask):
    """The ``(1 + n, 1 + n)`` mask over ``[CLS, context tokens]``."""
    num_context = context_mask.shape[0]
    eye = jnp.eye(num_context + 1, dtype=bool)
    reads_context = jnp.broadcast_to(context_mask, (num_context + 1, num_context))
    no_cls = jnp.zeros((num_context + 1, 1), bool)
    return jnp.concatenate([no_cls, reads_context], axis=1) | eye


def latent_query_attention_mask(num_queries: int):
    """The ``(1 + m, 1 + m)`` mask over ``[latent, query tokens]``."""
    eye = jnp.eye(num_queries + 1, dtype=bool)
    return eye.at[:, 0].set(True)


class MaskedTransformer(eqx.Module):
    """``num_blocks`` pre-norm self-attention blocks on one token sequence under a given mask.

    Attributes:
        blocks: the blocks.
        final_norm: layer norm of the output.
        size: token width.
    """

    blocks: tuple
    final_norm: eqx.nn.LayerNorm
    size: int = eqx.field(static=True)

    def __init__(self, size: int, *, num_heads: int = 4, num_blocks: int = 2, key: jax.Array):
        """Initialise the trunk.

        Args:
            size: token width; ``num_heads`` must divide it.
            num_heads: attention heads.
            num_blocks: blocks.
            key: PRNG key for the parameters (keyword-only).
        """
        size = check_int(size, "size")
        num_heads = check_int(num_heads, "num_heads")
        num_blocks = check_int(num_blocks, "num_blocks")
        if size % num_heads:
            raise ValueError(f"num_heads: expected a divisor of size={size}, got {num_heads}.")
        keys = jax.random.split(key, num_blocks)
        self.blocks = tuple(TransformerBlock(size, num_heads, key=k, ff_multiplier=2) for k in keys)
        self.final_norm = eqx.nn.LayerNorm(size)
        self.size = size

    def __call__(self, tokens, attend):
        """Transform ``tokens (t, size)`` where row ``i`` reads row ``j`` iff ``attend[i, j]``."""
        if tokens.ndim != 2 or tokens.shape[1] != self.size:
            raise ValueError(
                f"tokens: expected shape (t, {self.size}), got {tokens.shape}; vmap over a batch."
            )
        if attend.shape != (tokens.shape[0],) * 2 or attend.dtype != jnp.bool_:
            raise ValueError(
                f"attend: expected a boolean ({tokens.shape[0]}, {tokens.shape[0]}) mask, got "
                f"{attend.dtype} of shape {attend.shape}."
            )
        h = tokens
        for block in self.blocks:
            h = block(h, attend)
        return jax.vmap(self.final_norm)(h)
