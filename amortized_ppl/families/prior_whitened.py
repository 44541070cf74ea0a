"""A family stage that puts the network's output in the prior's standardized frame.

``PriorWhitened(family)``: the inner family's posterior is over ``v``, and the posterior over the
flat latents is ``u = m + L v`` with the prior's mean ``m`` and covariance factor ``L`` (measured
on the problem's pilot simulations). The network then works in units of prior SDs, whatever the
model's scales, so zero outputs mean "the prior's centre with unit prior scale" and the output
layer's natural range covers the posterior's; the standardized parameters of the neural
posterior estimation literature (e.g. BayesFlow's adapters, sbi's z-scoring of theta). For the
network alone (no Newton steps); the Laplace stage has its own, sharper frame.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import numpyro.distributions as dist

from amortized_ppl._recipes import recipe
from amortized_ppl.families.base import FamilyOutput, gaussian_moments
from amortized_ppl.families.flow_posterior import FlowPosterior

__all__ = ["PriorWhitened", "PriorWhitenedHead", "affine_posterior"]


def affine_posterior(posterior, loc, scale_tril):
    """The posterior of ``loc + scale_tril @ v`` for ``v`` from ``posterior`` (Gaussian or a
    flow), in closed form.

    Raises:
        TypeError: a family this stage cannot map exactly.
    """
    if isinstance(posterior, FlowPosterior):
        return FlowPosterior(posterior.bijection, posterior.condition,
                             loc + scale_tril @ posterior.loc, scale_tril @ posterior.scale_tril)
    inner_loc, inner_tril = gaussian_moments(posterior)
    return dist.MultivariateNormal(loc + scale_tril @ inner_loc,
                                   scale_tril=scale_tril @ inner_tril)


class PriorWhitenedHead(eqx.Module):
    """The inner family in the prior's whitened coordinates (see the module's docstring)."""

    inner: eqx.Module

    def __call__(self, context, *, log_density=None, anchor=None, base=None,
                 prior=None) -> FamilyOutput:
        if prior is None:
            raise ValueError("PriorWhitened: the engine passed no prior moments (prior=).")
        if base is not None:
            raise ValueError("PriorWhitened acts on the network alone; inside a Laplace stage "
                             "the family already works in the fit's whitened frame.")
        out = self.inner(context, log_density=log_density, anchor=anchor)
        return FamilyOutput(affine_posterior(out.posterior, *prior), out.start)


@recipe
class PriorWhitened:
    """Recipe: ``family`` in the prior's standardized frame (see the module's docstring).

    Attributes:
        family: a Gaussian or flow family recipe.
    """

    family: Any

    def __post_init__(self):
        if not hasattr(self.family, "build"):
            raise TypeError(f"family: expected a family recipe such as MultivariateNormal(), "
                            f"got {type(self.family).__name__}.")

    def build(self, key, latent_dim: int, context_dim: int) -> PriorWhitenedHead:
        return PriorWhitenedHead(self.family.build(key, latent_dim, context_dim))
