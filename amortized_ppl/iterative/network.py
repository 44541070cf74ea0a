"""The update network of the iterative guide: mini-batch + step features + memory -> update."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from amortized_ppl.encoders.set_transformer import SetTransformer

__all__ = ["UpdateNetwork"]


class UpdateNetwork(eqx.Module):
    """Reads one mini-batch and the step's features; outputs the update and a new memory.

    The mini-batch goes through a Set Transformer (at most ``max_tokens`` of its rows: a
    mini-batch is already a random subset, so its first rows are a random subsample, and the
    cost per step stays fixed however large the batches are). A GRU cell carries a memory across
    steps. An MLP maps ``[memory, features, summary]`` to ``2 + 2 D`` outputs: logit corrections
    of the two step sizes, then the readout's whitened location shift and log-scales. Its last
    layer starts at zero, so the untrained network is the base natural-gradient rule with the
    running Gaussian as readout.

    Attributes:
        token_loc, token_scale: per-feature standardization of tokens ``(token_dim,)`` (fixed).
        encoder: Set Transformer, tokens ``(m, token_dim)`` -> ``(summary_size,)``.
        cell: GRU cell, ``features + summary`` -> memory ``(memory_size,)``.
        head: MLP, ``memory + features + summary`` -> ``2 + 2 D``.
    """

    token_loc: jax.Array
    token_scale: jax.Array
    encoder: SetTransformer
    cell: eqx.nn.GRUCell
    head: eqx.nn.MLP
    latent_dim: int = eqx.field(static=True)
    max_tokens: int = eqx.field(static=True)

    def __init__(
        self,
        token_loc: jax.Array,
        token_scale: jax.Array,
        latent_dim: int,
        num_features: int,
        *,
        summary_size: int = 16,
        hidden_size: int = 32,
        num_heads: int = 4,
        num_blocks: int = 1,
        num_inducing: int | None = 16,
        memory_size: int = 32,
        head_width: int = 64,
        head_depth: int = 2,
        max_tokens: int = 128,
        key: jax.Array,
    ):
        enc_key, cell_key, head_key = jax.random.split(key, 3)
        self.token_loc = jnp.asarray(token_loc)
        self.token_scale = jnp.asarray(token_scale)
        self.encoder = SetTransformer(
            self.token_loc.shape[-1],
            summary_size,
            hidden_size=hidden_size,
            num_heads=num_heads,
            num_blocks=num_blocks,
            num_inducing=num_inducing,
            key=enc_key,
        )
        width = num_features + summary_size
        self.cell = eqx.nn.GRUCell(width, memory_size, key=cell_key)
        head = eqx.nn.MLP(
            memory_size + width,
            2 + 2 * latent_dim,
            head_width,
            head_depth,
            activation=jax.nn.gelu,
            key=head_key,
        )
        last = head.layers[-1]
        last = eqx.tree_at(
            lambda layer: (layer.weight, layer.bias),
            last,
            (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)),
        )
        self.head = eqx.tree_at(lambda h: h.layers[-1], head, last)
        self.latent_dim = int(latent_dim)
        self.max_tokens = int(max_tokens)

    @property
    def memory_size(self) -> int:
        return self.cell.hidden_size

    def summarize(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
        """Summary ``(summary_size,)`` of one mini-batch ``(m, token_dim)`` with mask ``(m,)``."""
        tokens, mask = tokens[: self.max_tokens], mask[: self.max_tokens]
        loc = jax.lax.stop_gradient(self.token_loc)
        scale = jax.lax.stop_gradient(self.token_scale)
        z = jnp.where(mask[:, None], (tokens - loc) / scale, 0.0)
        # A batch whose first rows are all padding still has its real rows elsewhere; an empty
        # subsample would make the pooling meaningless, so fall back to a zero summary.
        summary = self.encoder(z, mask)
        return jnp.where(jnp.any(mask), summary, 0.0)

    def __call__(self, tokens, mask, features, memory):
        """Outputs ``(2 + 2 D,)`` and the new memory ``(memory_size,)``."""
        inputs = jnp.concatenate([features, self.summarize(tokens, mask)])
        memory = self.cell(inputs, memory)
        return self.head(jnp.concatenate([memory, inputs])), memory
