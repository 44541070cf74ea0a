"""Amortized posteriors over discrete task factors: the head interface and the factorized head.

A Monte Carlo predictor (:class:`~amortized_ppl.sequence.monte_carlo.MonteCarloPredictor`) reads
a causal trunk's features, one row ``h_t`` per prefix ``x_<t``, and needs a distribution
``q(z | x_<t)`` over ``F`` discrete factors ``z = (z_1, ..., z_F)``, ``z_f in [0, K_f)``. A
*posterior head* is an equinox module on one sequence's features ``(T, d)`` with

- ``log_prob(features (T, d), factors (..., F)) -> (..., T)``, ``log q(z | x_<t)``; the leading
  axes of ``factors`` broadcast against the rows ``(T,)``: ``(M, T, F)`` for M draws per row,
  ``(F,)`` for one combination scored at every row (a training label);
- ``sample(key, features (T, d), sample_shape) -> sample_shape + (T, F)``, int32 draws;
- ``log_prob_table(features (T, d), table (E, F)) -> (T, E)``, ``log q`` of every row of a table
  of combinations (e.g. the environments of an oracle's prior, for the KL between posteriors);
- ``factor_sizes`` (static).

A *posterior spec*, a frozen dataclass, builds one: ``spec.build(key, feature_size,
factor_sizes) -> head``; the predictor takes the spec, so the head is a value passed in, not a
flag. Three specs:

- :class:`FactorizedPosterior` (here): one categorical per factor, independent given ``x_<t``.
  It gives every combination mass, held-out ones included, but cannot hold correlations: its
  best KL to an exact posterior ``p`` is the total correlation ``KL(p || prod_f p_f)``
  (:func:`~amortized_ppl.sequence.study.factorized_floor_kl`).
- :class:`~amortized_ppl.sequence.autoregressive_posterior.AutoregressivePosterior`:
  ``q(z) = prod_f q(z_f | z_<f, x_<t)``, any joint, held-out combinations included.
- :class:`~amortized_ppl.sequence.environment_posterior.EnvironmentPosterior`: one categorical
  over an enumerated list of environments (any joint over that list, zero mass elsewhere).

Factor combinations are numbered in mixed radix, the last factor fastest
(:func:`mixed_radix_index`), as the MetaHMM family numbers its environments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl.families.categorical import FactorizedCategorical

__all__ = [
    "FactorizedHead",
    "FactorizedPosterior",
    "check_factor_sizes",
    "check_factors",
    "check_features",
    "check_finite_features",
    "mixed_radix_index",
]


def check_factor_sizes(factor_sizes: Sequence[int]) -> tuple[int, ...]:
    """``factor_sizes`` as a tuple of ints, or ``ValueError`` unless every size is an int >= 1."""
    sizes = tuple(factor_sizes)
    if not sizes or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1
                        for k in sizes):
        raise ValueError(f"factor_sizes: expected one or more ints >= 1, got {sizes!r}.")
    return tuple(int(k) for k in sizes)


def check_features(features: jax.Array, feature_size: int, name: str = "features") -> jax.Array:
    """Raise at trace time unless ``features`` is ``(T, feature_size)`` (one sequence's rows)."""
    if jnp.ndim(features) != 2 or jnp.shape(features)[-1] != feature_size:
        raise ValueError(
            f"{name}: expected one sequence's trunk features (T, {feature_size}), got shape "
            f"{jnp.shape(features)}; vmap over a batch outside the head."
        )
    return features


def check_finite_features(features: jax.Array) -> jax.Array:
    """``features`` unchanged; NaN or Inf raise when the function runs (``eqx.error_if``).

    For sampling and evaluation only: in training a non-finite loss must reach the loop, whose
    policy skips the step (:data:`amortized_ppl.loop.NONFINITE_POLICY`).
    """
    return eqx.error_if(features, ~jnp.all(jnp.isfinite(features)),
                        "features: expected finite values, got NaN or Inf entries (the trunk's "
                        "parameters or its input).")


def check_factors(factors: jax.Array, factor_sizes: tuple[int, ...], name: str = "factors"):
    """``factors`` ``(..., F)`` as int32; wrong shape or dtype raise at trace time, values out of
    range raise when the function runs (``eqx.error_if``: they would otherwise index silently)."""
    num = len(factor_sizes)
    if jnp.ndim(factors) < 1 or jnp.shape(factors)[-1] != num:
        raise ValueError(f"{name}: expected a trailing axis of {num} factors (sizes "
                         f"{factor_sizes}), got shape {jnp.shape(factors)}.")
    if not jnp.issubdtype(jnp.result_type(factors), jnp.integer):
        raise ValueError(f"{name}: expected integer factor values, got dtype "
                         f"{jnp.result_type(factors)}.")
    factors = jnp.asarray(factors, jnp.int32)
    bad = (factors < 0) | (factors >= jnp.asarray(factor_sizes, jnp.int32))
    return eqx.error_if(factors, jnp.any(bad),
                        f"{name}: every value must lie in [0, K_f) for sizes {factor_sizes}.")


def mixed_radix_index(factor_sizes: Sequence[int], factors: jax.Array) -> jax.Array:
    """Combination ids ``(...)`` of factor values ``(..., F)``: mixed radix, last factor fastest."""
    sizes = np.asarray(factor_sizes)
    strides = np.concatenate([np.cumprod(sizes[::-1])[::-1][1:], [1]]).astype(np.int32)
    return jnp.sum(jnp.asarray(factors).astype(jnp.int32) * strides, axis=-1)


@dataclass(frozen=True)
class FactorizedPosterior:
    """Spec of :class:`FactorizedHead`: a linear map to one categorical per factor."""

    name = "factorized"

    def build(self, key: jax.Array, feature_size: int, factor_sizes: Sequence[int]
              ) -> FactorizedHead:
        return FactorizedHead(feature_size, factor_sizes, key=key)


class FactorizedHead(eqx.Module):
    """``q(z | x_<t) = prod_f Categorical(z_f; softmax(W_f h_t + b_f))``.

    Attributes:
        linear: features ``(d,)`` -> raw parameters ``(sum K_f,)`` of
            :class:`~amortized_ppl.families.categorical.FactorizedCategorical`.
        factor_sizes: ``(K_1, ..., K_F)``.
    """

    linear: eqx.nn.Linear
    factor_sizes: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, feature_size: int, factor_sizes: Sequence[int], *, key: jax.Array):
        self.factor_sizes = check_factor_sizes(factor_sizes)
        self.linear = eqx.nn.Linear(feature_size, sum(self.factor_sizes), key=key)

    @property
    def family(self) -> FactorizedCategorical:
        return FactorizedCategorical(self.factor_sizes)

    def raw(self, features: jax.Array) -> jax.Array:
        """Raw parameters ``(T, sum K_f)`` from features ``(T, d)``."""
        return jax.vmap(self.linear)(check_features(features, self.linear.in_features))

    def log_prob(self, features: jax.Array, factors: jax.Array) -> jax.Array:
        """``log q(z | x_<t)``: features ``(T, d)``, factors ``(..., F)`` -> ``(..., T)`` (the
        leading axes of ``factors`` broadcast against ``(T,)``)."""
        return self.family.log_prob(self.raw(features), check_factors(factors, self.factor_sizes))

    def sample(self, key: jax.Array, features: jax.Array, sample_shape: tuple[int, ...] = ()
               ) -> jax.Array:
        """Draws ``sample_shape + (T, F)`` of factor values, independent across factors."""
        raw = self.raw(check_finite_features(features))
        return self.family.sample(key, raw, tuple(sample_shape))

    def log_prob_table(self, features: jax.Array, table: jax.Array) -> jax.Array:
        """``log q`` of every row of ``table`` ``(E, F)`` at every row: ``(T, E)``."""
        table = check_factors(table, self.factor_sizes, "table")
        return self.family.joint_log_prob_table(self.raw(features), table)

    def marginal_cross_entropy(self, features: jax.Array, marginals: jax.Array) -> jax.Array:
        """``-sum_f sum_k p(z_f = k | x_<t) log q_f(k | x_<t)`` per row, ``(T,)``.

        ``marginals`` ``(T, sum K_f)``: the exact posterior marginals of every factor,
        concatenated. For a factorized ``q`` this equals the cross-entropy from the exact joint
        (``q`` only sees the marginals), so it is forward KL with the label's sampling noise
        integrated out.
        """
        if marginals.shape[-1] != sum(self.factor_sizes):
            raise ValueError(f"marginals: expected a trailing axis of {sum(self.factor_sizes)}, "
                             f"got shape {marginals.shape}.")
        log_q = jnp.concatenate(self.family.log_probs(self.raw(features)), axis=-1)
        return -jnp.sum(log_q * marginals, axis=-1)
