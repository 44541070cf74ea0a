"""An autoregressive posterior over discrete factors: a head that can hold correlated factors.

A factorized ``q(z | x_<t) = prod_f q_f(z_f | x_<t)`` cannot represent a posterior whose factors
are dependent, and after a few symbols the MetaHMM posterior is: several environments explain
the prefix, and they differ in several factors jointly. On the ``tiny`` set the best factorized
``q`` (the product of the exact marginals) is 0.87 nats from the exact posterior after 4
symbols and 0.57 after 16 (``posterior_kl_floor_factorized_by_position`` in
``benchmarks/results/metahmm.json``). The autoregressive head factorizes by the chain rule
instead, which is exact for any joint:

    q(z | x_<t) = prod_f q(z_f | z_<f, x_<t),
    q(z_f | z_<f, x_<t) = softmax(W_f gelu(A h_t + s_f + sum_{j<f} e_j[z_j]) + b_f)[:K_f],

with ``h_t`` the trunk's features, ``A`` a linear map to a hidden width, ``s_f`` a learned vector
saying which factor is predicted, ``e_j[v]`` a learned embedding of value ``v`` of factor ``j``
(so the prefix's sum identifies the prefix), and ``W_f``, ``b_f`` a per-factor output layer (the
logits beyond ``K_f`` are masked). One hidden layer: the context term ``A h_t`` is computed once
per row and the prefix term once per prefix, so teacher forcing over all factors at once, sampling
factor by factor, and the log probability of every combination (a recursion over the prefix tree:
level ``f`` holds ``prod_{j<f} K_j`` prefixes) all cost one hidden activation per (row, prefix).

Training is forward KL on simulated pairs, ``-log q(z_true | x_<t)`` with the true factors fed as
the prefix (teacher forcing): the same loss as the factorized head's, now over the joint.

References:
    The Monte Carlo predictor and the MetaHMM study: leogagnon/latent_control (``papers.md``
    section 5). Chain-rule (autoregressive) factorization of a discrete joint: Larochelle and
    Murray, "The Neural Autoregressive Distribution Estimator", AISTATS 2011.

Examples:
    >>> head = AutoregressivePosterior(width=32).build(jax.random.key(0), 16, (2, 3))
    >>> features = jax.random.normal(jax.random.key(1), (5, 16))
    >>> head.log_prob_table(features, jnp.array([[0, 0], [1, 2]])).shape
    (5, 2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl._checks import check_int, check_key
from amortized_ppl.sequence.posterior_heads import (
    check_factor_sizes,
    check_factors,
    check_features,
    check_finite_features,
    mixed_radix_index,
)

__all__ = ["AutoregressiveHead", "AutoregressivePosterior"]

_MAX_TABLE_COMBINATIONS = 1 << 16
"""The most combinations :meth:`AutoregressiveHead.joint_log_probs` enumerates (its memory is
about ``2 * prod K_f * width`` floats per row)."""


@dataclass(frozen=True)
class AutoregressivePosterior:
    """Spec of :class:`AutoregressiveHead`.

    Attributes:
        width: the hidden width of the per-factor conditional (one hidden layer).
    """

    width: int = 128
    name = "autoregressive"

    def __post_init__(self):
        check_int(self.width, "width")

    def build(self, key: jax.Array, feature_size: int, factor_sizes: Sequence[int]
              ) -> AutoregressiveHead:
        return AutoregressiveHead(feature_size, factor_sizes, width=self.width, key=key)


class AutoregressiveHead(eqx.Module):
    """``q(z | x_<t) = prod_f q(z_f | z_<f, x_<t)``, one hidden layer per conditional.

    Attributes:
        context: features ``(d,)`` -> the context term ``(width,)``.
        slots: ``(F, width)``, which factor is being predicted.
        values: ``(sum K_f, width)``, the embedding of every (factor, value) pair; factor ``j``'s
            rows start at ``offsets[j]``.
        out_weight: ``(F, width, K_max)``, each factor's output layer.
        out_bias: ``(F, K_max)``.
        factor_sizes: ``(K_1, ..., K_F)``.
    """

    context: eqx.nn.Linear
    slots: jax.Array
    values: jax.Array
    out_weight: jax.Array
    out_bias: jax.Array
    factor_sizes: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, feature_size: int, factor_sizes: Sequence[int], *, width: int = 128,
                 key: jax.Array):
        check_key(key, "key")
        width = check_int(width, "width")
        self.factor_sizes = check_factor_sizes(factor_sizes)
        num, k_max = len(self.factor_sizes), max(self.factor_sizes)
        c_key, s_key, v_key, o_key = jax.random.split(key, 4)
        self.context = eqx.nn.Linear(feature_size, width, key=c_key)
        # A prefix sums up to F - 1 value embeddings and one slot: scaled so that the sum has the
        # context term's scale whatever F.
        scale = 1.0 / math.sqrt(num)
        self.slots = scale * jax.random.normal(s_key, (num, width))
        self.values = scale * jax.random.normal(v_key, (sum(self.factor_sizes), width))
        bound = 1.0 / math.sqrt(width)
        self.out_weight = jax.random.uniform(o_key, (num, width, k_max), minval=-bound,
                                             maxval=bound)
        self.out_bias = jnp.zeros((num, k_max))

    @property
    def offsets(self) -> np.ndarray:
        """First row of each factor's value embeddings in ``values``, ``(F,)``."""
        return np.concatenate([[0], np.cumsum(self.factor_sizes)[:-1]]).astype(np.int32)

    @property
    def mask(self) -> np.ndarray:
        """``(F, K_max)``: True where value ``k`` exists for factor ``f``."""
        return np.arange(max(self.factor_sizes))[None, :] < np.asarray(self.factor_sizes)[:, None]

    def _context(self, features: jax.Array) -> jax.Array:
        return jax.vmap(self.context)(check_features(features, self.context.in_features))

    def _conditional(self, hidden_in: jax.Array, factor: int | jax.Array) -> jax.Array:
        """Log probabilities ``(..., K_max)`` of factor ``factor`` from its hidden input
        ``(..., width)`` (context + slot + prefix); impossible values get ``-inf``."""
        logits = jax.nn.gelu(hidden_in) @ self.out_weight[factor] + self.out_bias[factor]
        logits = jnp.where(jnp.asarray(self.mask)[factor], logits, -jnp.inf)
        return jax.nn.log_softmax(logits, axis=-1)

    def log_prob(self, features: jax.Array, factors: jax.Array) -> jax.Array:
        """``log q(z | x_<t)`` with the given factors as the prefix (teacher forcing).

        Args:
            features: ``(T, d)``, one sequence's trunk features.
            factors: ``(..., F)`` integer values whose leading axes broadcast against ``(T,)``:
                ``(M, T, F)`` scores M draws per row; ``(F,)`` one combination at every row
                (cheaper: its prefix embeddings are computed once, not per row).

        Returns:
            ``(..., T)``, the broadcast leading shape.
        """
        context = self._context(features)  # (T, W)
        factors = check_factors(factors, self.factor_sizes)
        # One-hot products rather than gathers: a gather's gradient is a scatter-add, slow on
        # CPU (the head's gradient took 2.5x as long at width 128 in one measurement).
        value_ids = jax.nn.one_hot(factors + jnp.asarray(self.offsets), self.values.shape[0],
                                   dtype=self.values.dtype)
        emb = value_ids @ self.values  # (..., F, W)
        # Factor f's prefix holds factors < f: an exclusive cumulative sum over the factor axis.
        prefix = jnp.cumsum(emb, axis=-2) - emb + self.slots
        hidden_in = context[:, None, :] + prefix  # (..., T, F, W), by broadcasting
        logits = jnp.einsum("...fw,fwk->...fk", jax.nn.gelu(hidden_in), self.out_weight)
        logits = jnp.where(jnp.asarray(self.mask), logits + self.out_bias, -jnp.inf)
        log_p = jax.nn.log_softmax(logits, axis=-1)  # (..., T, F, K_max)
        chosen = jax.nn.one_hot(factors, log_p.shape[-1], dtype=bool)  # (..., F, K_max)
        return jnp.sum(jnp.where(chosen, log_p, 0.0), axis=(-2, -1))

    def sample(self, key: jax.Array, features: jax.Array, sample_shape: tuple[int, ...] = ()
               ) -> jax.Array:
        """Ancestral draws ``sample_shape + (T, F)``: factor by factor, each given those before."""
        check_key(key, "key")
        context = self._context(check_finite_features(features))  # (T, W)
        shape = tuple(sample_shape) + context.shape
        prefix = jnp.zeros(shape, context.dtype)
        draws = []
        for f, k in enumerate(jax.random.split(key, len(self.factor_sizes))):
            log_p = self._conditional(context + self.slots[f] + prefix, f)
            z = jax.random.categorical(k, log_p, axis=-1)
            draws.append(z)
            prefix = prefix + self.values[self.offsets[f] + z]
        return jnp.stack(draws, axis=-1).astype(jnp.int32)

    def joint_log_probs(self, features: jax.Array) -> jax.Array:
        """``log q`` of every combination, ``(T, prod K_f)`` in mixed-radix order (last fastest).

        A recursion over the prefix tree: level ``f`` holds the ``prod_{j<f} K_j`` prefixes,
        their log probabilities so far and their summed embeddings.
        """
        total = math.prod(self.factor_sizes)
        if total > _MAX_TABLE_COMBINATIONS:
            raise ValueError(
                f"factor_sizes {self.factor_sizes}: {total} combinations, more than the "
                f"{_MAX_TABLE_COMBINATIONS} this enumeration handles; score a table's rows with "
                "log_prob instead."
            )
        context = self._context(features)  # (T, W)
        log_q = jnp.zeros((context.shape[0], 1), context.dtype)
        prefix = jnp.zeros((1, context.shape[1]), context.dtype)  # (N_f, W)
        for f, size in enumerate(self.factor_sizes):
            hidden_in = context[:, None, :] + (prefix + self.slots[f])[None]  # (T, N_f, W)
            log_p = self._conditional(hidden_in, f)[..., :size]  # (T, N_f, K_f)
            log_q = (log_q[:, :, None] + log_p).reshape(context.shape[0], -1)
            rows = self.values[self.offsets[f]:self.offsets[f] + size]  # (K_f, W)
            prefix = (prefix[:, None, :] + rows[None]).reshape(-1, context.shape[1])
        return log_q

    def log_prob_table(self, features: jax.Array, table: jax.Array) -> jax.Array:
        """``log q`` of every row of ``table`` ``(E, F)`` at every row: ``(T, E)``."""
        table = check_factors(table, self.factor_sizes, "table")
        if table.ndim != 2:
            raise ValueError(f"table: expected (E, F), got shape {table.shape}.")
        return self.joint_log_probs(features)[:, mixed_radix_index(self.factor_sizes, table)]
