"""The explicit in-context learner: context -> bottleneck latent ``z`` -> predictions from ``z``.

:class:`ContextEncoder` runs a Transformer over ``[CLS, Linear([x_i, y_i])...]`` under
:func:`~amortized_ppl.icl.transformer.bottleneck_attention_mask`: the CLS token reads the real
context and no token reads it, so ``z = Linear(CLS output)`` (``z_dim``) is all that the
predictor learns about the task. Three predictors ``f(z, x_q) -> (mean, log_scale)``:

- :class:`TransformerPredictor`: tokens ``[Linear(z), Linear(x_q)...]``, each query reads only
  itself and ``z`` (:func:`~amortized_ppl.icl.transformer.latent_query_attention_mask`);
- :class:`MLPPredictor`: an MLP on ``[z, x_q]``;
- :class:`KnownLinearPredictor`: the known functional form of linear tasks,
  ``mean = [x_q, 1] @ W(z)`` with ``W`` and the log-SD linear in ``z``.

:class:`ExplicitLearner` joins an encoder and a predictor, and carries a linear *probe* from
``stop_gradient(z)`` to the true task latent, trained jointly (its loss cannot shape ``z``): its
error says whether the bottleneck recovered the task's latent.

References:
    Mittal, S., et al. (2024). Does learning the right latent variables necessarily improve
    in-context learning? arXiv:2405.19162.
    Garnelo, M., et al. (2018). Conditional neural processes. ICML.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from amortized_ppl._checks import check_int
from amortized_ppl.icl.predictor import check_task_inputs, gaussian_head
from amortized_ppl.icl.transformer import (
    MaskedTransformer,
    bottleneck_attention_mask,
    latent_query_attention_mask,
)

__all__ = [
    "PREDICTORS",
    "ContextEncoder",
    "ExplicitLearner",
    "KnownLinearPredictor",
    "MLPPredictor",
    "TransformerPredictor",
    "build_explicit_learner",
]


class ContextEncoder(eqx.Module):
    """Summarise one context into ``z`` through a CLS token that no other token reads.

    Attributes:
        embed: ``Linear(d + 1, size)`` on ``[x, y]``.
        cls_token: the learned CLS input, ``(size,)``.
        trunk: the :class:`~amortized_ppl.icl.transformer.MaskedTransformer`.
        project: ``Linear(size, z_dim)``.
    """

    embed: eqx.nn.Linear
    cls_token: jax.Array
    trunk: MaskedTransformer
    project: eqx.nn.Linear

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        *,
        size: int = 64,
        num_heads: int = 4,
        num_blocks: int = 3,
        key: jax.Array,
    ):
        e_key, c_key, t_key, p_key = jax.random.split(key, 4)
        self.embed = eqx.nn.Linear(x_dim + 1, size, key=e_key)
        self.cls_token = 0.02 * jax.random.normal(c_key, (size,))
        self.trunk = MaskedTransformer(size, num_heads=num_heads, num_blocks=num_blocks, key=t_key)
        self.project = eqx.nn.Linear(size, z_dim, key=p_key)

    def tokens(self, context_x, context_y, context_mask):
        """All output tokens ``(1 + n, size)``, CLS first (what the mask tests read)."""
        context = jnp.concatenate([context_x, context_y[:, None]], axis=1)
        context = jnp.where(context_mask[:, None], context, 0.0)
        tokens = jnp.concatenate([self.cls_token[None], jax.vmap(self.embed)(context)])
        return self.trunk(tokens, bottleneck_attention_mask(context_mask))

    def __call__(self, context_x, context_y, context_mask):
        """The bottleneck ``z``, ``(z_dim,)``."""
        return self.project(self.tokens(context_x, context_y, context_mask)[0])


class TransformerPredictor(eqx.Module):
    """Predict each query from ``z`` and itself with a Transformer (queries never meet)."""

    latent_embed: eqx.nn.Linear
    query_embed: eqx.nn.Linear
    trunk: MaskedTransformer
    head: eqx.nn.Linear

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        *,
        size: int = 64,
        num_heads: int = 4,
        num_blocks: int = 2,
        key: jax.Array,
    ):
        l_key, q_key, t_key, h_key = jax.random.split(key, 4)
        self.latent_embed = eqx.nn.Linear(z_dim, size, key=l_key)
        self.query_embed = eqx.nn.Linear(x_dim, size, key=q_key)
        self.trunk = MaskedTransformer(size, num_heads=num_heads, num_blocks=num_blocks, key=t_key)
        self.head = eqx.nn.Linear(size, 2, key=h_key)

    def __call__(self, z, query_x):
        tokens = jnp.concatenate([self.latent_embed(z)[None], jax.vmap(self.query_embed)(query_x)])
        h = self.trunk(tokens, latent_query_attention_mask(query_x.shape[0]))
        return gaussian_head(jax.vmap(self.head)(h[1:]))


class MLPPredictor(eqx.Module):
    """Predict each query with an MLP on ``[z, x_q]``."""

    mlp: eqx.nn.MLP

    def __init__(self, x_dim: int, z_dim: int, *, size: int = 64, depth: int = 3, key: jax.Array):
        self.mlp = eqx.nn.MLP(z_dim + x_dim, 2, size, depth, activation=jax.nn.gelu, key=key)

    def __call__(self, z, query_x):
        inputs = jnp.concatenate(
            [jnp.broadcast_to(z, (query_x.shape[0], z.shape[0])), query_x], axis=1
        )
        return gaussian_head(jax.vmap(self.mlp)(inputs))


class KnownLinearPredictor(eqx.Module):
    """The known form of linear tasks: ``mean = [x_q, 1] @ W(z)``, log-SD linear in ``z``."""

    weights: eqx.nn.Linear

    def __init__(self, x_dim: int, z_dim: int, *, key: jax.Array):
        self.weights = eqx.nn.Linear(z_dim, x_dim + 2, key=key)

    def __call__(self, z, query_x):
        out = self.weights(z)
        design = jnp.concatenate([query_x, jnp.ones((query_x.shape[0], 1))], axis=1)
        mean = design @ out[:-1]
        raw = jnp.stack([mean, jnp.broadcast_to(out[-1], mean.shape)], axis=-1)
        return gaussian_head(raw)


PREDICTORS = {
    "transformer": TransformerPredictor,
    "mlp": MLPPredictor,
    "known": KnownLinearPredictor,
}
"""The predictors by name, for :func:`build_explicit_learner`."""


class ExplicitLearner(eqx.Module):
    """Encoder to a bottleneck ``z``, a predictor from ``z``, and a linear probe on ``z``.

    Attributes:
        encoder: the :class:`ContextEncoder`.
        predictor: one of :data:`PREDICTORS`.
        probe: ``Linear(z_dim, latent_dim)``, read through ``stop_gradient(z)``.
        x_dim: input dimension ``d``.
    """

    encoder: ContextEncoder
    predictor: eqx.Module
    probe: eqx.nn.Linear
    x_dim: int = eqx.field(static=True)

    def __call__(self, context_x, context_y, context_mask, query_x):
        """Predict ``(mean, log_scale)``, each ``(m,)``, for the queries ``(m, d)`` of one task."""
        check_task_inputs(self.x_dim, context_x, context_y, context_mask, query_x)
        return self.predictor(self.encoder(context_x, context_y, context_mask), query_x)

    def probe_latent(self, context_x, context_y, context_mask):
        """The probe's estimate of the task latent, ``(latent_dim,)``; no gradient reaches ``z``."""
        check_task_inputs(self.x_dim, context_x, context_y, context_mask, context_x)
        z = self.encoder(context_x, context_y, context_mask)
        return self.probe(jax.lax.stop_gradient(z))


def build_explicit_learner(
    x_dim: int,
    latent_dim: int,
    *,
    predictor: str = "mlp",
    z_dim: int = 64,
    size: int = 64,
    num_heads: int = 4,
    num_blocks: int = 3,
    key: jax.Array,
) -> ExplicitLearner:
    """Build an :class:`ExplicitLearner`.

    Args:
        x_dim: input dimension ``d``.
        latent_dim: size of the true task latent the probe predicts (``TaskFamily.latent_dim``).
        predictor: ``"transformer"``, ``"mlp"`` or ``"known"`` (linear tasks only).
        z_dim: bottleneck width (the paper's 256; smaller here).
        size: token width of the encoder and the Transformer predictor.
        num_heads: attention heads.
        num_blocks: encoder blocks (the Transformer predictor gets ``max(1, num_blocks - 1)``).
        key: PRNG key for the parameters (keyword-only).

    Examples:
        >>> learner = build_explicit_learner(1, 2, predictor="known", z_dim=8, size=16,
        ...                                  num_blocks=1, key=jax.random.key(0))
        >>> x, y = jnp.zeros((8, 1)), jnp.zeros(8)
        >>> learner.probe_latent(x, y, jnp.ones(8, bool)).shape
        (2,)
    """
    x_dim = check_int(x_dim, "x_dim")
    latent_dim = check_int(latent_dim, "latent_dim")
    z_dim = check_int(z_dim, "z_dim")
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor: expected one of {tuple(PREDICTORS)}, got {predictor!r}.")
    e_key, p_key, r_key = jax.random.split(key, 3)
    encoder = ContextEncoder(
        x_dim, z_dim, size=size, num_heads=num_heads, num_blocks=num_blocks, key=e_key
    )
    if predictor == "transformer":
        head = TransformerPredictor(
            x_dim,
            z_dim,
            size=size,
            num_heads=num_heads,
            num_blocks=max(1, num_blocks - 1),
            key=p_key,
        )
    elif predictor == "mlp":
        head = MLPPredictor(x_dim, z_dim, size=size, key=p_key)
    else:
        head = KnownLinearPredictor(x_dim, z_dim, key=p_key)
    probe = eqx.nn.Linear(z_dim, latent_dim, key=r_key)
    return ExplicitLearner(encoder, head, probe, x_dim)
