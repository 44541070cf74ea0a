"""The amortization network: a data set (tokens + mask) -> the raw parameters of a posterior family."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from amortized_ppl.encoders.sequence import SequenceEncoder
from amortized_ppl.encoders.set_transformer import SetTransformer
from amortized_ppl.families.normal import positive_scale

__all__ = ["ENCODERS", "AmortizedNetwork", "check_encoder"]

ENCODERS = ("set", "sequence")
"""Encoder names a guide accepts: ``"set"`` (permutation invariant) or ``"sequence"`` (ordered)."""


def check_encoder(encoder) -> str:
    """Return ``encoder`` if it names a known encoder; raise a ``ValueError`` naming the choices."""
    if encoder not in ENCODERS:
        raise ValueError(
            f"encoder: expected one of {ENCODERS} ('set' for exchangeable observations, "
            f"'sequence' for time-ordered ones), got {encoder!r}."
        )
    return encoder


def _small_last_layer(mlp: eqx.nn.MLP, factor: float = 0.1) -> eqx.nn.MLP:
    # Small initial outputs: zero outputs mean "no correction" / "unit scale" in the families.
    return eqx.tree_at(lambda m: m.layers[-1].weight, mlp, mlp.layers[-1].weight * factor)


class AmortizedNetwork(eqx.Module):
    """Standardize tokens, summarize the data set, and map the summary to posterior parameters.

    With ``encoder="set"`` (the default) the summary is permutation invariant; with
    ``encoder="sequence"`` the rows are time steps and their order matters (a
    :class:`~amortized_ppl.encoders.sequence.SequenceEncoder`). Either way it ignores padded
    rows. The heads also read
    ``log(num_obs)``: attention pooling is an average, so without it the network could not tell a
    data set of 10 observations from one of 200 with the same empirical distribution, and the
    posterior's width depends on exactly that.

    With Newton refinement (``num_extra > 0``) an ``init_head`` proposes where to start the Newton
    steps (a diagonal Normal around ``latent_anchor``), and ``head`` reads the Laplace fit found
    there (``extra`` features) and outputs corrections to it.

    Attributes:
        token_loc, token_scale: per-feature standardization of tokens, shape ``(token_dim,)``;
            fixed at set-up from simulated data sets (gradients are stopped).
        latent_anchor: shape ``(latent_dim,)``, the prior median in unconstrained space (fixed).
        encoder: the set or sequence encoder, tokens ``(N, token_dim)`` -> summary
            ``(summary_size,)``.
        head: MLP from ``summary_size + 1 + num_extra`` to ``num_params``.
        init_head: MLP from ``summary_size + 1`` to ``2 * latent_dim``, or None.
    """

    token_loc: jax.Array
    token_scale: jax.Array
    latent_anchor: jax.Array
    encoder: SetTransformer | SequenceEncoder
    head: eqx.nn.MLP
    init_head: eqx.nn.MLP | None
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
        encoder: str = "set",
        key: jax.Array,
    ):
        check_encoder(encoder)
        enc_key, head_key, init_key = jax.random.split(key, 3)
        token_dim = token_loc.shape[-1]
        self.token_loc = token_loc
        self.token_scale = token_scale
        self.latent_anchor = latent_anchor
        if encoder == "sequence":
            # Full self-attention over time steps: induced points would lose the order.
            self.encoder = SequenceEncoder(
                token_dim,
                summary_size,
                hidden_size=hidden_size,
                num_heads=num_heads,
                num_blocks=num_blocks,
                key=enc_key,
            )
        else:
            self.encoder = SetTransformer(
                token_dim,
                summary_size,
                hidden_size=hidden_size,
                num_heads=num_heads,
                num_blocks=num_blocks,
                num_inducing=num_inducing,
                key=enc_key,
            )
        width = summary_size + 1
        self.head = _small_last_layer(
            eqx.nn.MLP(width + num_extra, num_params, head_width, head_depth,
                       activation=jax.nn.gelu, key=head_key)
        )
        self.init_head = None
        if num_extra:
            self.init_head = _small_last_layer(
                eqx.nn.MLP(width, 2 * latent_anchor.shape[0], head_width, head_depth,
                           activation=jax.nn.gelu, key=init_key)
            )
        self.log_obs_scale = float(jnp.log(max(max_obs, 2)))

    def summarize(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
        """Summary of one data set: tokens ``(N, token_dim)``, mask ``(N,)`` -> ``(summary+1,)``."""
        loc = jax.lax.stop_gradient(self.token_loc)
        scale = jax.lax.stop_gradient(self.token_scale)
        # Padded rows may hold anything; zero them so that no Inf/NaN can leak through matmuls.
        z = jnp.where(mask[:, None], (tokens - loc) / scale, 0.0)
        summary = self.encoder(z, mask)
        num_obs = jnp.maximum(jnp.sum(mask), 1)
        log_n = jnp.log(num_obs.astype(z.dtype)) / self.log_obs_scale
        return jnp.concatenate([summary, log_n[None]])

    def initial(self, summary: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Initial diagonal Normal (loc ``(D,)``, scale ``(D,)``) for Newton refinement."""
        out = self.init_head(summary)
        d = self.latent_anchor.shape[0]
        return jax.lax.stop_gradient(self.latent_anchor) + out[:d], positive_scale(out[d:])

    def correct(self, summary: jax.Array, extra: jax.Array | None = None) -> jax.Array:
        """Raw family parameters ``(num_params,)`` from the summary (and Laplace features)."""
        features = [summary] + ([] if extra is None else [extra])
        return self.head(jnp.concatenate(features))

    def __call__(self, tokens: jax.Array, mask: jax.Array, extra: jax.Array | None = None):
        """Raw posterior parameters ``(num_params,)`` for one data set.

        Args:
            tokens: shape ``(N, token_dim)``.
            mask: shape ``(N,)`` bool, True for real observations.
            extra: optional features for the head, shape ``(num_extra,)``.
        """
        return self.correct(self.summarize(tokens, mask), extra)
