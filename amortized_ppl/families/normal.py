"""Diagonal Normal posterior family over the flat unconstrained latent vector."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

__all__ = ["DiagonalNormal"]

# softplus(_SCALE_SHIFT) == 1: a network output of zero means a unit posterior scale.
_SCALE_SHIFT = 0.5413248546129181
_MIN_SCALE = 1e-6


def positive_scale(raw: jax.Array) -> jax.Array:
    """Map unconstrained network outputs to positive scales (1 at ``raw == 0``)."""
    return jax.nn.softplus(raw + _SCALE_SHIFT) + _MIN_SCALE


class DiagonalNormal:
    """q(u | data) = Normal(loc, diag(scale^2)) over ``latent_dim`` unconstrained latents.

    The network emits ``2 * latent_dim`` numbers: the location, then raw scales.
    """

    name = "diagonal_normal"

    def __init__(self, latent_dim: int):
        self.latent_dim = latent_dim

    @property
    def num_params(self) -> int:
        return 2 * self.latent_dim

    def unpack(self, raw: jax.Array, base=None) -> tuple[jax.Array, jax.Array]:
        """Location ``(..., D)`` and scale ``(..., D)`` from raw outputs ``(..., num_params)``.

        With a ``base`` Gaussian ``(loc, scale_tril)`` the outputs are corrections relative to
        it, in units of its marginal SDs: zero outputs give the base's marginals.
        """
        d = self.latent_dim
        loc, scale = raw[..., :d], positive_scale(raw[..., d:])
        if base is not None:
            base_loc, base_tril = base
            base_sd = jnp.sqrt(jnp.sum(base_tril**2, axis=-1))
            loc, scale = base_loc + base_sd * loc, base_sd * scale
        return loc, scale

    def distribution(self, raw: jax.Array, base=None) -> dist.Distribution:
        """The posterior for raw outputs of shape ``(..., num_params)``; event shape ``(D,)``."""
        loc, scale = self.unpack(raw, base)
        return dist.Normal(loc, scale).to_event(1)

    def loc_and_scale_tril(self, raw: jax.Array, base=None) -> tuple[jax.Array, jax.Array]:
        """Location ``(..., D)`` and Cholesky factor ``(..., D, D)`` of the covariance."""
        loc, scale = self.unpack(raw, base)
        return loc, scale[..., :, None] * jnp.eye(self.latent_dim, dtype=scale.dtype)
