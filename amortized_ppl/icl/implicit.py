"""The implicit in-context learner: a Transformer that reads the raw context and the queries.

Context points become tokens ``Linear([x_i, y_i])``; queries become ``Linear([x_q, 0]) + e_q``
with ``e_q`` a learned query embedding. One non-causal Transformer runs over
``[context, queries]`` under :func:`~amortized_ppl.icl.transformer.implicit_attention_mask`:
queries read the real context and themselves, nothing reads a query, padding is read by nothing.
A linear head on each query token gives the Gaussian predictive ``(mean, log_scale)``. There is no
task state apart from the context itself: the regime the papers call *implicit*.

References:
    Garg, S., Tsipras, D., Liang, P., Valiant, G. (2022). What can Transformers learn
    in-context? A case study of simple function classes. NeurIPS.
    Mittal, S., et al. (2024). Does learning the right latent variables necessarily improve
    in-context learning? arXiv:2405.19162.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from amortized_ppl._checks import check_int
from amortized_ppl.icl.predictor import check_task_inputs, gaussian_head
from amortized_ppl.icl.transformer import MaskedTransformer, implicit_attention_mask

__all__ = ["ImplicitLearner"]


class ImplicitLearner(eqx.Module):
    """Predict each query from the raw context with one masked Transformer.

    Attributes:
        context_embed: ``Linear(d + 1, size)`` on ``[x, y]``.
        query_embed: ``Linear(d + 1, size)`` on ``[x, 0]``.
        query_token: the learned query embedding, ``(size,)``.
        trunk: the :class:`~amortized_ppl.icl.transformer.MaskedTransformer`.
        head: ``Linear(size, 2)``: mean and (softly floored) log-SD.
        x_dim: input dimension ``d``.

    Examples:
        >>> learner = ImplicitLearner(1, size=16, num_blocks=1, key=jax.random.key(0))
        >>> x, y = jnp.zeros((8, 1)), jnp.zeros(8)
        >>> mean, log_scale = learner(x, y, jnp.ones(8, bool), jnp.zeros((3, 1)))
        >>> mean.shape
        (3,)
    """

    context_embed: eqx.nn.Linear
    query_embed: eqx.nn.Linear
    query_token: jax.Array
    trunk: MaskedTransformer
    head: eqx.nn.Linear
    x_dim: int = eqx.field(static=True)

    def __init__(
        self, x_dim: int, *, size: int = 64, num_heads: int = 4, num_blocks: int = 3, key: jax.Array
    ):
        """Initialise the learner.

        Args:
            x_dim: input dimension ``d``.
            size: token width.
            num_heads: attention heads (a divisor of ``size``).
            num_blocks: Transformer blocks.
            key: PRNG key for the parameters (keyword-only).
        """
        self.x_dim = check_int(x_dim, "x_dim")
        c_key, q_key, e_key, t_key, h_key = jax.random.split(key, 5)
        self.context_embed = eqx.nn.Linear(x_dim + 1, size, key=c_key)
        self.query_embed = eqx.nn.Linear(x_dim + 1, size, key=q_key)
        self.query_token = 0.02 * jax.random.normal(e_key, (size,))
        self.trunk = MaskedTransformer(size, num_heads=num_heads, num_blocks=num_blocks, key=t_key)
        self.head = eqx.nn.Linear(size, 2, key=h_key)

    def __call__(self, context_x, context_y, context_mask, query_x):
        """Predict ``(mean, log_scale)``, each ``(m,)``, for the queries ``(m, d)`` of one task."""
        check_task_inputs(self.x_dim, context_x, context_y, context_mask, query_x)
        context = jnp.concatenate([context_x, context_y[:, None]], axis=1)
        context = jnp.where(context_mask[:, None], context, 0.0)
        queries = jnp.concatenate([query_x, jnp.zeros((query_x.shape[0], 1))], axis=1)
        tokens = jnp.concatenate(
            [
                jax.vmap(self.context_embed)(context),
                jax.vmap(self.query_embed)(queries) + self.query_token,
            ]
        )
        h = self.trunk(tokens, implicit_attention_mask(context_mask, query_x.shape[0]))
        return gaussian_head(jax.vmap(self.head)(h[context_x.shape[0] :]))
