"""A factorized categorical posterior over discrete latents: ``q(z) = prod_f Categorical(z_f)``.

The discrete counterpart of the Normal families: a network's raw output of length
``sum(sizes)`` parameterizes one categorical per latent factor. Trained by forward KL
(``-log q(z_true)`` on simulated pairs), it is an amortized posterior over a discrete task latent.
A factorized family can represent combinations never seen in training, which is what an
out-of-distribution environment (an unseen combination of known factor values) needs; its price is
that it cannot represent correlations between factors in the posterior.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

__all__ = ["FactorizedCategorical"]


class FactorizedCategorical:
    """Map raw parameters ``(..., sum(sizes))`` to independent categoricals over ``F`` factors.

    Args:
        sizes: number of values of each factor, ``(K_1, ..., K_F)``.
    """

    def __init__(self, sizes: Sequence[int]):
        sizes = tuple(int(k) for k in sizes)
        if not sizes or min(sizes) < 1:
            raise ValueError(f"sizes: expected one or more positive factor sizes, got {sizes}.")
        self.sizes = sizes
        self._splits = tuple(int(s) for s in np.cumsum(sizes)[:-1])

    @property
    def num_params(self) -> int:
        return sum(self.sizes)

    def log_probs(self, raw: jax.Array) -> tuple[jax.Array, ...]:
        """Normalized log probabilities per factor: a tuple of ``(..., K_f)`` arrays."""
        if raw.shape[-1] != self.num_params:
            raise ValueError(
                f"raw: expected a trailing axis of {self.num_params} (sum of sizes {self.sizes}), "
                f"got shape {raw.shape}."
            )
        return tuple(jax.nn.log_softmax(r, axis=-1) for r in jnp.split(raw, self._splits, axis=-1))

    def distributions(self, raw: jax.Array) -> tuple[dist.Categorical, ...]:
        """One NumPyro ``Categorical`` per factor, batch shape ``raw.shape[:-1]``."""
        return tuple(dist.Categorical(logits=lp) for lp in self.log_probs(raw))

    def log_prob(self, raw: jax.Array, values: jax.Array) -> jax.Array:
        """``log q(values)``: raw ``(..., P)``, values ``(..., F)`` integers -> ``(...)``.

        Leading axes broadcast, e.g. values ``(M, T, F)`` (M draws) against raw ``(T, P)``.
        """
        total = 0.0
        batch = jnp.broadcast_shapes(raw.shape[:-1], values.shape[:-1])
        for f, lp in enumerate(self.log_probs(raw)):
            lp = jnp.broadcast_to(lp, batch + lp.shape[-1:])
            index = jnp.broadcast_to(values[..., f : f + 1], batch + (1,))
            total = total + jnp.take_along_axis(lp, index, axis=-1)[..., 0]
        return total

    def sample(self, key: jax.Array, raw: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        """Draws ``sample_shape + raw.shape[:-1] + (F,)`` of integer factor values."""
        keys = jax.random.split(key, len(self.sizes))
        draws = [
            jax.random.categorical(k, lp, shape=sample_shape + lp.shape[:-1])
            for k, lp in zip(keys, self.log_probs(raw))
        ]
        return jnp.stack(draws, axis=-1).astype(jnp.int32)

    def joint_log_prob_table(self, raw: jax.Array, table: jax.Array) -> jax.Array:
        """``log q`` of every row of a table of factor combinations.

        raw ``(..., P)``, table ``(E, F)`` -> ``(..., E)``; e.g. the table of all environments,
        for the KL from an exact posterior over environments.
        """
        total = 0.0
        for f, lp in enumerate(self.log_probs(raw)):
            total = total + jnp.take(lp, table[:, f], axis=-1)
        return total
