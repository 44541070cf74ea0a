"""The amortization network: a data set (tokens + mask) -> the raw parameters of a posterior family."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from amortized_ppl.encoders.set_transformer import SetTransformer

__all__ = ["AmortizedNetwork"]


class AmortizedNetwork(eqx.Module):
    """Standardize tokens, summarize the set, and map the summary to posterior parameters.

    The summary is permutation invariant and ignores padded rows. The head also reads
    ``log(num_obs)``: attention pooling is an average, so without it the network could not tell a
    data set of 10 observations from one of 200 with the same empirical distribution, and the
    posterior's width depends on exactly that.

    Attributes:
        token_loc, token_scale: per-feature standardization of tokens, shape ``(token_dim,)``;
            fixed at set-up from simulated data sets (gradients are stopped).
        encoder: the set encoder, tokens ``(N, token_dim)`` -> summary ``(summary_size,)``.
        head: MLP from ``summary_size + 1 + num_extra`` to ``num_params``.
        latent_anchor: shape ``(latent_dim,)``, the fixed unconstrained point that Newton
            refinement starts from (gradients are stopped); kept here so checkpoints carry it.
    """

    token_loc: jax.Array
    token_scale: jax.Array
    latent_anchor: jax.Array
    encoder: SetTransformer
    head: eqx.nn.MLP
    log_obs_scale: float = eqx.field(static=True)

    def __init__(
        self,
        token_loc: jax.Array,
        token_scale: jax.Array,
        num_params: int,
        *,
        latent_anchor: jax.Array,
        num_extra: int = 0,
        max_obs: int,
        summary_size: int = 64,
        hidden_size: int = 64,
        num_heads: int = 4,
        num_blocks: int = 2,
        num_inducing: int | None = None,
        head_width: int = 128,
        head_depth: int = 2,
        key: jax.Array,
    ):
        enc_key, head_key = jax.random.split(key)
        token_dim = token_loc.shape[-1]
        self.token_loc = token_loc
        self.token_scale = token_scale
        self.latent_anchor = latent_anchor
        self.encoder = SetTransformer(
            token_dim,
            summary_size,
            hidden_size=hidden_size,
            num_heads=num_heads,
            num_blocks=num_blocks,
            num_inducing=num_inducing,
            key=enc_key,
        )
        head = eqx.nn.MLP(
            summary_size + 1 + num_extra, num_params, head_width, head_depth, activation=jax.nn.gelu, key=head_key
        )
        # Start near the prior-like posterior N(0, I): a small last layer keeps the initial
        # outputs close to zero, which the families map to unit scales.
        last = head.layers[-1]
        head = eqx.tree_at(lambda m: m.layers[-1].weight, head, last.weight * 0.1)
        self.head = head
        self.log_obs_scale = float(jnp.log(max(max_obs, 2)))

    def __call__(self, tokens: jax.Array, mask: jax.Array, extra: jax.Array | None = None):
        """Raw posterior parameters for one data set.

        Args:
            tokens: shape ``(N, token_dim)``.
            mask: shape ``(N,)`` bool, True for real observations.
            extra: optional features for the head, shape ``(num_extra,)``.

        Returns:
            shape ``(num_params,)``.
        """
        loc = jax.lax.stop_gradient(self.token_loc)
        scale = jax.lax.stop_gradient(self.token_scale)
        # Padded rows may hold anything; zero them so that no Inf/NaN can leak through matmuls.
        z = jnp.where(mask[:, None], (tokens - loc) / scale, 0.0)
        summary = self.encoder(z, mask)
        num_obs = jnp.maximum(jnp.sum(mask), 1)
        log_n = jnp.log(num_obs.astype(z.dtype)) / self.log_obs_scale
        features = [summary, log_n[None]] + ([] if extra is None else [extra])
        return self.head(jnp.concatenate(features))
