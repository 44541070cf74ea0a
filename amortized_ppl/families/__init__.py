"""Posterior families: network outputs -> a distribution over the flat unconstrained latents."""

from amortized_ppl.families.mvn import MultivariateNormal
from amortized_ppl.families.normal import DiagonalNormal

__all__ = ["DiagonalNormal", "MultivariateNormal"]
