"""Full-rank Normal posterior family over the flat unconstrained latent vector."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from amortized_ppl.families.normal import positive_scale

__all__ = ["MultivariateNormal"]


class MultivariateNormal:
    """q(u | data) = MultivariateNormal(loc, L L^T) over ``latent_dim`` unconstrained latents.

    The network emits the location (D), the raw diagonal of the Cholesky factor L (D, made
    positive), and its strictly lower triangle (D (D - 1) / 2), so L is a valid Cholesky factor
    for any network output.
    """

    name = "multivariate_normal"

    def __init__(self, latent_dim: int):
        self.latent_dim = latent_dim
        self._rows, self._cols = jnp.tril_indices(latent_dim, k=-1)

    @property
    def num_params(self) -> int:
        d = self.latent_dim
        return 2 * d + d * (d - 1) // 2

    def loc_and_scale_tril(self, raw: jax.Array, base=None) -> tuple[jax.Array, jax.Array]:
        """Location ``(..., D)`` and Cholesky factor ``(..., D, D)`` from ``(..., num_params)``.

        With a ``base`` Gaussian ``(loc, scale_tril)`` the outputs act in its whitened
        coordinates: ``loc = base_loc + C delta`` and ``L = C T`` with ``C`` the base's factor and
        ``T`` the network's triangular factor (identity for zero outputs), so zero outputs give
        the base exactly and the product stays lower triangular with a positive diagonal.
        """
        d = self.latent_dim
        loc, diag, off = raw[..., :d], positive_scale(raw[..., d : 2 * d]), raw[..., 2 * d :]
        tril = jnp.zeros(raw.shape[:-1] + (d, d), raw.dtype)
        tril = tril.at[..., self._rows, self._cols].set(off)
        tril = tril + diag[..., :, None] * jnp.eye(d, dtype=raw.dtype)
        if base is not None:
            base_loc, base_tril = base
            loc = base_loc + jnp.einsum("...ij,...j->...i", base_tril, loc)
            tril = base_tril @ tril
        return loc, tril

    def distribution(self, raw: jax.Array, base=None) -> dist.Distribution:
        """The posterior for raw outputs of shape ``(..., num_params)``; event shape ``(D,)``."""
        loc, tril = self.loc_and_scale_tril(raw, base)
        return dist.MultivariateNormal(loc, scale_tril=tril)
