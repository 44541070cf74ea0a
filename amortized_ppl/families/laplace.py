"""A family stage that reads the model's density: Newton steps, then any family on top.

``LaplaceRefined(family, num_steps)`` wraps any family recipe. For each data set, a small MLP
proposes where to start (a diagonal Normal around the prior median), ``num_steps`` damped Newton
steps on the model's unconstrained log joint find a Laplace fit there, and the inner family,
reading the context plus where the steps went (the shift from the start and the Laplace
log-SDs), acts in the Laplace fit's whitened coordinates (it gets the fit as ``base``). For a
Gaussian inner family zero outputs give the Laplace fit exactly, so the posterior is exact for
linear-Gaussian models before any training; the network corrects it where Laplace is off.
Costs ``num_steps + 1`` Hessians of the log joint per data set.

The proposal is an auxiliary output (:attr:`FamilyOutput.start`): the losses train it to point
where the refined posterior lies, which is where the Newton steps should start.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from amortized_ppl._checks import check_int
from amortized_ppl._recipes import recipe
from amortized_ppl.families.base import FamilyOutput, head_mlp, positive_scale
from amortized_ppl.laplace import newton_laplace

__all__ = ["LaplaceRefined", "LaplaceRefinedHead"]


class LaplaceRefinedHead(eqx.Module):
    """Propose a start, take Newton steps, and let the inner family correct the Laplace fit."""

    inner: eqx.Module
    start_mlp: eqx.nn.MLP
    num_steps: int = eqx.field(static=True)

    def __init__(self, inner: eqx.Module, latent_dim: int, context_dim: int, *, num_steps: int,
                 width: int, depth: int, key):
        self.inner = inner
        self.start_mlp = head_mlp(context_dim, 2 * latent_dim, width, depth, key=key)
        self.num_steps = num_steps

    def __call__(self, context, *, log_density, anchor, base=None) -> FamilyOutput:
        del base  # this stage makes the base of the next one
        out = self.start_mlp(context)
        d = anchor.shape[0]
        start_loc = jax.lax.stop_gradient(anchor) + out[:d]
        start = jax.lax.stop_gradient(start_loc)
        laplace = newton_laplace(log_density, start, num_steps=self.num_steps)
        fit = jax.lax.stop_gradient((laplace.loc, laplace.scale_tril))
        log_sd = jnp.log(jnp.sqrt(jnp.sum(fit[1] ** 2, axis=-1)))
        features = jnp.concatenate([context, fit[0] - start, log_sd])
        inner = self.inner(features, log_density=log_density, anchor=anchor, base=fit)
        proposal = dist.Normal(start_loc, positive_scale(out[d:])).to_event(1)
        return FamilyOutput(inner.posterior, proposal)


@recipe
class LaplaceRefined:
    """Recipe: ``family`` corrected around a Laplace fit found by ``num_steps`` Newton steps.

    Attributes:
        family: the inner family's recipe (e.g. ``MultivariateNormal()``).
        num_steps: damped Newton steps per data set (>= 1).
        head_width, head_depth: the MLP that proposes where the steps start.
    """

    family: Any
    num_steps: int = 8
    head_width: int = 128
    head_depth: int = 2

    def __post_init__(self):
        check_int(self.num_steps, "num_steps", 1)
        if not hasattr(self.family, "build"):
            raise TypeError(
                f"family: expected a family recipe such as MultivariateNormal(), got "
                f"{type(self.family).__name__}."
            )

    def build(self, key, latent_dim: int, context_dim: int) -> LaplaceRefinedHead:
        inner_key, start_key = jax.random.split(key)
        inner = self.family.build(inner_key, latent_dim, context_dim + 2 * latent_dim)
        return LaplaceRefinedHead(inner, latent_dim, context_dim, num_steps=self.num_steps,
                                  width=self.head_width, depth=self.head_depth, key=start_key)
