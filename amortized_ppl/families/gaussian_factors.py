"""A family stage that solves for the Gaussian the pseudo-observations imply, then corrects it.

``GaussianFactors(family)`` reads the summed natural parameters of a
:class:`~amortized_ppl.encoders.PseudoObservations` encoder. In the prior's standardized frame
``u = m + L v`` (the problem's pilot moments), the prior is ``N(0, I)`` and the observations
add their precision and shift, so

    q_0(v | data) = N(P^{-1} s, P^{-1}),     P = I + precision,  s = shift,

one Cholesky factorization per data set. ``q_0`` is handed to the inner family as its ``base``
(a Gaussian's zero outputs give it exactly, a flow departs from it), so the network's learned
part is the factors, and the inner family learns only what the sum of factors misses. It reads
the pooled features, ``log N``, ``q_0``'s whitened mean and its log-SDs.

The model's density is not read: this is a network-alone family (trained by forward KL on
simulations), for where no Newton step is wanted or possible.
"""

from __future__ import annotations

from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from amortized_ppl._recipes import recipe
from amortized_ppl.encoders.pseudo_observations import split_factor_summary
from amortized_ppl.families.base import FamilyOutput
from amortized_ppl.linalg import cholesky

__all__ = ["GaussianFactors", "GaussianFactorsHead", "factor_posterior"]


def factor_posterior(precision, shift, prior_loc, prior_tril):
    """``(loc (D,), scale_tril (D, D), whitened_mean (D,), whitened_log_sd (D,))`` of
    ``u = m + L v`` with ``v ~ N((I + precision)^{-1} shift, (I + precision)^{-1})``."""
    d = shift.shape[-1]
    chol = cholesky(jnp.eye(d, dtype=shift.dtype) + precision)  # P = C C^T
    inverse_chol = jax.scipy.linalg.solve_triangular(chol, jnp.eye(d, dtype=shift.dtype),
                                                     lower=True)  # C^-1; P^-1 = C^-T C^-1
    mean = inverse_chol.T @ (inverse_chol @ shift)
    root = inverse_chol @ prior_tril.T  # C^-1 L^T, so root^T root = L P^-1 L^T
    tril = cholesky(root.T @ root)
    log_sd = 0.5 * jnp.log(jnp.sum(inverse_chol**2, axis=0))  # the diagonal of P^-1
    return prior_loc + prior_tril @ mean, tril, mean, log_sd


class GaussianFactorsHead(eqx.Module):
    """The factor posterior as the inner family's base (see the module's docstring)."""

    inner: eqx.Module
    latent_dim: int = eqx.field(static=True)

    def __call__(self, context, *, log_density=None, anchor=None, base=None,
                 prior=None) -> FamilyOutput:
        if prior is None:
            raise ValueError("GaussianFactors: the engine passed no prior moments (prior=).")
        if base is not None:
            raise ValueError("GaussianFactors makes its own base from the pseudo-observations; "
                             "it cannot sit inside another stage that passes one.")
        precision, shift, rest = split_factor_summary(context, self.latent_dim)
        loc, tril, mean, log_sd = factor_posterior(precision, shift, *prior)
        features = jnp.concatenate([rest, mean, log_sd])
        return self.inner(features, log_density=log_density, anchor=anchor, base=(loc, tril))


@recipe
class GaussianFactors:
    """Recipe: the Gaussian that a :class:`~amortized_ppl.encoders.PseudoObservations`
    encoder's factors imply, corrected by ``family`` (see the module's docstring).

    Attributes:
        family: the inner family's recipe (``MultivariateNormal()`` or a ``Flow``).
    """

    family: Any = None

    needs_factors: ClassVar[bool] = True

    def __post_init__(self):
        if self.family is not None and not hasattr(self.family, "build"):
            raise TypeError(f"family: expected a family recipe such as MultivariateNormal(), "
                            f"got {type(self.family).__name__}.")

    def build(self, key, latent_dim: int, context_dim: int) -> GaussianFactorsHead:
        from amortized_ppl.families.mvn import MultivariateNormal

        d = latent_dim
        rest = context_dim - d * (d + 1) // 2 - d
        if rest < 0:
            raise ValueError(f"GaussianFactors: a context of {context_dim} numbers cannot hold "
                             f"the natural parameters of {d} latents; pair it with a "
                             f"PseudoObservations encoder.")
        family = MultivariateNormal() if self.family is None else self.family
        return GaussianFactorsHead(family.build(key, d, rest + 2 * d), d)
