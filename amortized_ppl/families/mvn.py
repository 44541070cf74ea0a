"""Full-rank Normal posterior family over the flat unconstrained latent vector."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from amortized_ppl._recipes import recipe
from amortized_ppl.families.base import (
    FamilyOutput,
    bounded_correction,
    head_mlp,
    positive_scale,
)

__all__ = ["MultivariateNormal", "MultivariateNormalHead"]


class MultivariateNormalHead(eqx.Module):
    """Context -> ``MultivariateNormal(loc, L L^T)``.

    The MLP emits the location (D), the raw diagonal of the Cholesky factor L (D, made
    positive), and its strictly lower triangle (D (D - 1) / 2), so L is a valid Cholesky factor
    for any output. With a ``base`` Gaussian ``(loc, C)`` the outputs act in its whitened
    coordinates: ``loc = base_loc + C delta`` and ``L = C T`` with ``T`` the network's
    triangular factor (the identity for zero outputs), so zero outputs give the base exactly.
    """

    mlp: eqx.nn.MLP
    latent_dim: int = eqx.field(static=True)

    def __init__(self, latent_dim: int, context_dim: int, *, width: int, depth: int, key):
        num_params = 2 * latent_dim + latent_dim * (latent_dim - 1) // 2
        self.mlp = head_mlp(context_dim, num_params, width, depth, key=key)
        self.latent_dim = latent_dim

    def loc_and_scale_tril(self, raw: jax.Array, base=None) -> tuple[jax.Array, jax.Array]:
        """Location ``(D,)`` and Cholesky factor ``(D, D)`` from raw outputs."""
        d = self.latent_dim
        rows, cols = np.tril_indices(d, k=-1)
        loc, diag, off = raw[:d], positive_scale(raw[d : 2 * d]), raw[2 * d :]
        if base is not None:  # a correction of the base, bounded (see bounded_correction)
            loc, diag = bounded_correction(loc, diag)
            off = jnp.tanh(off)
        tril = jnp.zeros((d, d), raw.dtype).at[rows, cols].set(off) + jnp.diag(diag)
        if base is not None:
            base_loc, base_tril = base
            loc = base_loc + base_tril @ loc
            tril = base_tril @ tril
        return loc, tril

    def __call__(self, context, *, log_density=None, anchor=None, base=None,
                 prior=None) -> FamilyOutput:
        del log_density, anchor, prior
        loc, tril = self.loc_and_scale_tril(self.mlp(context), base)
        return FamilyOutput(dist.MultivariateNormal(loc, scale_tril=tril))


@recipe
class MultivariateNormal:
    """Recipe of a full-rank Normal posterior (see :class:`MultivariateNormalHead`).

    Attributes:
        head_width, head_depth: the MLP from the context to the ``2 D + D (D - 1) / 2``
            parameters.
    """

    head_width: int = 128
    head_depth: int = 2

    def build(self, key, latent_dim: int, context_dim: int) -> MultivariateNormalHead:
        return MultivariateNormalHead(latent_dim, context_dim, width=self.head_width,
                                      depth=self.head_depth, key=key)
