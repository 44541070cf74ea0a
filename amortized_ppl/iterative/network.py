"""The update network of the iterative engine: mini-batch + step features + memory -> update."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from amortized_ppl.families.flow import zero_last_layers

__all__ = ["UpdateNetwork"]


class UpdateNetwork(eqx.Module):
    """Reads one mini-batch and the step's features into a memory; corrects the readout.

    The mini-batch's standardized tokens go through an encoder (at most ``max_tokens`` of its
    rows: a mini-batch is already a random subset, so its first rows are a random subsample, and
    the cost per step stays fixed however large the batches are). A GRU cell carries a memory
    across steps. An MLP, the readout network, maps the staleness of the running Gaussian's
    linearizations (see :mod:`amortized_ppl.iterative.kernel`) and the memory to the readout's
    whitened location shift and log-scales (``2 D``). Its last layer starts at zero, so the
    untrained network is the base natural-gradient rule with the running Gaussian as readout.

    Attributes:
        encoder: tokens ``(m, token_dim)`` -> ``(summary_size,)`` (e.g. a Set Transformer).
        cell: GRU cell, ``features + summary`` -> memory ``(memory_size,)``.
        readout: MLP, readout features and memory -> ``2 D``.
    """

    encoder: eqx.Module
    cell: eqx.nn.GRUCell
    readout: eqx.nn.MLP
    latent_dim: int = eqx.field(static=True)
    max_tokens: int = eqx.field(static=True)

    def __init__(
        self,
        encoder: eqx.Module,
        latent_dim: int,
        num_features: int,
        num_readout_features: int,
        *,
        memory_size: int = 32,
        head_width: int = 64,
        head_depth: int = 2,
        max_tokens: int = 128,
        key: jax.Array,
    ):
        cell_key, readout_key = jax.random.split(key)
        self.encoder = encoder
        width = num_features + encoder.out_size
        self.cell = eqx.nn.GRUCell(width, memory_size, key=cell_key)
        self.readout = zero_last_layers(eqx.nn.MLP(num_readout_features, 2 * latent_dim,
                                                   head_width, head_depth,
                                                   activation=jax.nn.gelu, key=readout_key))
        self.latent_dim = int(latent_dim)
        self.max_tokens = int(max_tokens)

    @property
    def memory_size(self) -> int:
        return self.cell.hidden_size

    def summarize(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
        """Summary ``(summary_size,)`` of one mini-batch's standardized tokens ``(m, token_dim)``
        (zero on padded rows) with mask ``(m,)``."""
        tokens, mask = tokens[: self.max_tokens], mask[: self.max_tokens]
        # A batch whose first rows are all padding still has its real rows elsewhere; an empty
        # subsample would make the pooling meaningless, so fall back to a zero summary.
        summary = self.encoder(tokens, mask)
        return jnp.where(jnp.any(mask), summary, 0.0)

    def __call__(self, tokens, mask, features, memory):
        """The new memory ``(memory_size,)`` after one mini-batch."""
        return self.cell(jnp.concatenate([features, self.summarize(tokens, mask)]), memory)

    def correct(self, readout_features: jax.Array) -> jax.Array:
        """The readout's whitened shift and log-scales ``(2 D,)``, before the kernel bounds them
        (``tanh``) and scales them by ``kappa``."""
        return self.readout(readout_features)

