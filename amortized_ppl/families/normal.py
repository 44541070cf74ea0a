"""Diagonal Normal posterior family over the flat unconstrained latent vector."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from amortized_ppl._recipes import recipe
from amortized_ppl.families.base import (
    FamilyOutput,
    bounded_correction,
    head_mlp,
    positive_scale,
)

__all__ = ["DiagonalNormal", "DiagonalNormalHead"]


class DiagonalNormalHead(eqx.Module):
    """Context -> ``Normal(loc, diag(scale^2))``: an MLP emits the location, then raw scales.

    With a ``base`` Gaussian the outputs are corrections relative to it, in units of its
    marginal SDs: zero outputs give the base's marginals.
    """

    mlp: eqx.nn.MLP
    latent_dim: int = eqx.field(static=True)

    def __init__(self, latent_dim: int, context_dim: int, *, width: int, depth: int, key):
        self.mlp = head_mlp(context_dim, 2 * latent_dim, width, depth, key=key)
        self.latent_dim = latent_dim

    def loc_and_scale(self, raw: jax.Array, base=None) -> tuple[jax.Array, jax.Array]:
        """Location ``(D,)`` and scale ``(D,)`` from raw outputs ``(2 D,)``."""
        d = self.latent_dim
        loc, scale = raw[:d], positive_scale(raw[d:])
        if base is not None:
            base_loc, base_tril = base
            base_sd = jnp.sqrt(jnp.sum(base_tril**2, axis=-1))
            loc, scale = bounded_correction(loc, scale)
            loc, scale = base_loc + base_sd * loc, base_sd * scale
        return loc, scale

    def __call__(self, context, *, log_density=None, anchor=None, base=None,
                 prior=None) -> FamilyOutput:
        del log_density, anchor, prior
        loc, scale = self.loc_and_scale(self.mlp(context), base)
        return FamilyOutput(dist.Normal(loc, scale).to_event(1))


@recipe
class DiagonalNormal:
    """Recipe of a diagonal Normal posterior (see :class:`DiagonalNormalHead`).

    Attributes:
        head_width, head_depth: the MLP from the context to the ``2 D`` parameters.
    """

    head_width: int = 128
    head_depth: int = 2

    def build(self, key, latent_dim: int, context_dim: int) -> DiagonalNormalHead:
        return DiagonalNormalHead(latent_dim, context_dim, width=self.head_width,
                                  depth=self.head_depth, key=key)
