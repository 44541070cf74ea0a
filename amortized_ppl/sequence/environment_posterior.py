"""A posterior over an enumerated list of environments: one categorical, any joint over the list.

When the training environments can be listed (the MetaHMM ``tiny`` set has 448), the posterior
over factors can be a single categorical over them, ``q(e | x_<t) = softmax(W h_t + b)_e``: it
holds any correlation between factors, but gives exactly zero mass to a combination outside the
list, so on a held-out combination its KL to an oracle that knows the whole family is infinite and
a Monte Carlo predictor with it can only propose training environments. It is the comparison that
says how much an autoregressive head (which can give held-out combinations mass) loses to a head
that needs no factor structure in distribution.

Examples:
    >>> table = jnp.array([[0, 0], [0, 1], [1, 1]])  # three of the four combinations of 2 x 2
    >>> head = EnvironmentPosterior(table).build(jax.random.key(0), 8, (2, 2))
    >>> head.log_prob_table(jnp.zeros((3, 8)), jnp.array([[1, 0]])).tolist()  # not listed
    [[-inf], [-inf], [-inf]]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl._checks import check_key
from amortized_ppl.sequence.posterior_heads import (
    check_factor_sizes,
    check_factors,
    check_features,
    check_finite_features,
    mixed_radix_index,
)

__all__ = ["EnvironmentHead", "EnvironmentPosterior"]


@dataclass(frozen=True, eq=False)  # (an array field: no value equality)
class EnvironmentPosterior:
    """Spec of :class:`EnvironmentHead`.

    Attributes:
        table: ``(E, F)`` integer factor values of the listed environments (distinct rows), e.g.
            ``hmm.factors[hmm.train_envs]``.
    """

    table: np.ndarray = field(repr=False)
    name = "environment"

    def build(self, key: jax.Array, feature_size: int, factor_sizes: Sequence[int]
              ) -> EnvironmentHead:
        return EnvironmentHead(feature_size, factor_sizes, self.table, key=key)


class EnvironmentHead(eqx.Module):
    """``q(e | x_<t)``: a softmax over the ``E`` listed environments.

    Attributes:
        linear: features ``(d,)`` -> logits ``(E,)``.
        table: ``(E, F)`` int32, each listed environment's factors (not trained).
        slot_of_combination: ``(prod K_f,)`` int32, the slot of every factor combination in
            ``table``, ``-1`` if not listed.
        factor_sizes: ``(K_1, ..., K_F)``.
    """

    linear: eqx.nn.Linear
    table: jax.Array
    slot_of_combination: jax.Array
    factor_sizes: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, feature_size: int, factor_sizes: Sequence[int], table, *,
                 key: jax.Array):
        check_key(key, "key")
        self.factor_sizes = check_factor_sizes(factor_sizes)
        values = np.asarray(table)
        sizes = np.asarray(self.factor_sizes)
        if values.ndim != 2 or values.shape[1] != sizes.size or values.shape[0] < 1:
            raise ValueError(f"table: expected (E, {sizes.size}) factor values with E >= 1, got "
                             f"shape {values.shape}.")
        if not np.issubdtype(values.dtype, np.integer) or np.any((values < 0) | (values >= sizes)):
            raise ValueError(f"table: expected integer factor values in [0, K_f) for sizes "
                             f"{self.factor_sizes}.")
        ids = np.asarray(mixed_radix_index(self.factor_sizes, values))
        if np.unique(ids).size != ids.size:
            raise ValueError("table: the listed environments must be distinct factor combinations.")
        slots = np.full(math.prod(self.factor_sizes), -1, np.int32)
        slots[ids] = np.arange(ids.size, dtype=np.int32)
        self.table = jnp.asarray(values, jnp.int32)
        self.slot_of_combination = jnp.asarray(slots)
        self.linear = eqx.nn.Linear(feature_size, ids.size, key=key)

    def log_probs(self, features: jax.Array) -> jax.Array:
        """``log q(e | x_<t)`` over the listed environments, ``(T, E)``."""
        features = check_features(features, self.linear.in_features)
        return jax.nn.log_softmax(jax.vmap(self.linear)(features), axis=-1)

    def _of_slots(self, log_q: jax.Array, factors: jax.Array) -> jax.Array:
        """Gather ``log_q`` ``(T, E)`` at the slots of ``factors`` ``(..., F)`` (leading axes
        broadcast against ``(T,)``) -> ``(..., T)``; ``-inf`` where a combination is not listed."""
        slots = self.slot_of_combination[mixed_radix_index(self.factor_sizes, factors)]
        batch = jnp.broadcast_shapes(slots.shape, log_q.shape[:1])
        slots = jnp.broadcast_to(slots, batch)
        rows = jnp.broadcast_to(jnp.arange(log_q.shape[0]), batch)
        return jnp.where(slots >= 0, log_q[rows, jnp.maximum(slots, 0)], -jnp.inf)

    def log_prob(self, features: jax.Array, factors: jax.Array) -> jax.Array:
        """``log q(z | x_<t)``: features ``(T, d)``, factors ``(..., F)`` -> ``(..., T)`` (the
        leading axes of ``factors`` broadcast against ``(T,)``)."""
        factors = check_factors(factors, self.factor_sizes)
        return self._of_slots(self.log_probs(features), factors)

    def sample(self, key: jax.Array, features: jax.Array, sample_shape: tuple[int, ...] = ()
               ) -> jax.Array:
        """Draws ``sample_shape + (T, F)``: a listed environment's factors."""
        check_key(key, "key")
        log_q = self.log_probs(check_finite_features(features))
        slots = jax.random.categorical(key, log_q, shape=tuple(sample_shape) + log_q.shape[:1])
        return self.table[slots]

    def log_prob_table(self, features: jax.Array, table: jax.Array) -> jax.Array:
        """``log q`` of every row of ``table`` ``(E', F)`` at every row: ``(T, E')``."""
        table = check_factors(table, self.factor_sizes, "table")
        log_q = self.log_probs(features)
        return self._of_slots(log_q, jnp.broadcast_to(table[:, None, :],
                                                      (table.shape[0],) + log_q.shape[:1]
                                                      + table.shape[1:])).T
