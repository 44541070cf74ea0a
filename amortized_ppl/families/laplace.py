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
from numpyro.distributions.batch_util import promote_batch_shape

from amortized_ppl._checks import check_int
from amortized_ppl._recipes import recipe
from amortized_ppl.families.base import FamilyOutput, head_mlp, positive_scale
from amortized_ppl.families.mixture_posterior import MixturePosterior
from amortized_ppl.laplace import newton_laplace

__all__ = ["LaplaceRefined", "LaplaceRefinedHead", "mode_log_weights", "start_offsets"]


def start_offsets(num_starts: int, dim: int, dtype=jnp.float32) -> jax.Array:
    """Fixed offsets of the starts from the network's proposals, ``(K, D)``: ``+-e_0, +-e_1,
    ...`` (one unconstrained unit), so that several starts differ before any training (from the
    prior median a symmetric posterior's gradient is zero and every start would stay there)."""
    rows = []
    for k in range(num_starts):
        axis, sign = (k // 2) % dim, 1.0 if k % 2 == 0 else -1.0
        rows.append(sign * jnp.eye(dim, dtype=dtype)[axis])
    return jnp.stack(rows)


def mode_log_weights(values, locs, trils) -> jax.Array:
    """Laplace log weights of ``K`` fits, ``(K,)``: ``log p(mode_k) + log|L_k|`` (each mode's
    Laplace evidence, exact for well separated Gaussian modes), less the log of how many fits
    found the same mode (within one whitened unit), so a mode found twice is not counted
    twice."""

    def whitened_sq(tril, loc):
        diff = jax.scipy.linalg.solve_triangular(tril, (locs - loc).T, lower=True)
        return jnp.sum(diff**2, axis=0)  # (K,)

    close = jax.vmap(whitened_sq)(trils, locs) < 1.0  # (K, K)
    multiplicity = jnp.sum(close, axis=1)
    log_det = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(trils, axis1=-2, axis2=-1))), axis=-1)
    out = values + log_det - jnp.log(multiplicity)
    return jnp.where(jnp.isfinite(out), out, -jnp.inf)


class LaplaceRefinedHead(eqx.Module):
    """Propose starts, take Newton steps, and let the inner family correct each Laplace fit.

    With one start (the default) the posterior is the inner family around the one fit. With
    ``K > 1`` the network proposes ``K`` starts (a Gaussian mixture, trained by the losses to
    cover where the posterior lies), each gets its Newton steps and its corrected fit, and the
    posterior is their mixture weighted by :func:`mode_log_weights`
    (:class:`~amortized_ppl.families.mixture_posterior.MixturePosterior`).
    """

    inner: eqx.Module
    start_mlp: eqx.nn.MLP
    num_steps: int = eqx.field(static=True)
    num_starts: int = eqx.field(static=True, default=1)

    def __init__(self, inner: eqx.Module, latent_dim: int, context_dim: int, *, num_steps: int,
                 width: int, depth: int, key, num_starts: int = 1):
        self.inner = inner
        size = 2 * latent_dim if num_starts == 1 else num_starts * (2 * latent_dim + 1)
        self.start_mlp = head_mlp(context_dim, size, width, depth, key=key)
        self.num_steps = num_steps
        self.num_starts = num_starts

    def _refined(self, context, start, log_density, anchor, prior=None):
        laplace = newton_laplace(log_density, start, num_steps=self.num_steps)
        fit = jax.lax.stop_gradient((laplace.loc, laplace.scale_tril))
        log_sd = jnp.log(jnp.sqrt(jnp.sum(fit[1] ** 2, axis=-1)))
        features = jnp.concatenate([context, fit[0] - start, log_sd])
        inner = self.inner(features, log_density=log_density, anchor=anchor, base=fit,
                           prior=prior)
        return inner.posterior, fit

    def __call__(self, context, *, log_density, anchor, base=None, prior=None) -> FamilyOutput:
        del base  # this stage makes the base of the next one
        out = self.start_mlp(context)
        d = anchor.shape[0]
        anchor = jax.lax.stop_gradient(anchor)
        if self.num_starts == 1:
            start_loc = anchor + out[:d]
            posterior, _ = self._refined(context, jax.lax.stop_gradient(start_loc),
                                         log_density, anchor, prior)
            proposal = dist.Normal(start_loc, positive_scale(out[d:])).to_event(1)
            return FamilyOutput(posterior, proposal)
        k = self.num_starts
        start_locs = (anchor + out[: k * d].reshape(k, d)
                      + start_offsets(k, d, out.dtype))
        start_scales = positive_scale(out[k * d: 2 * k * d].reshape(k, d))
        proposal = dist.MixtureSameFamily(
            dist.Categorical(logits=out[2 * k * d:]),
            dist.Normal(start_locs, start_scales).to_event(1))
        posteriors, (locs, trils) = jax.vmap(
            lambda s: self._refined(context, s, log_density, anchor, prior))(
                jax.lax.stop_gradient(start_locs))
        values = jax.vmap(log_density)(locs)
        logits = jax.lax.stop_gradient(mode_log_weights(values, locs, trils))
        return FamilyOutput(MixturePosterior(logits, promote_batch_shape(posteriors)), proposal)


@recipe
class LaplaceRefined:
    """Recipe: ``family`` corrected around a Laplace fit found by ``num_steps`` Newton steps.

    Attributes:
        family: the inner family's recipe (e.g. ``MultivariateNormal()``).
        num_steps: damped Newton steps per data set (>= 1).
        head_width, head_depth: the MLP that proposes where the steps start.
        num_starts: Newton runs per data set from different starts (> 1: a mixture of the
            corrected fits, for posteriors with several modes; costs that many times the
            Hessians).
    """

    family: Any
    num_steps: int = 8
    head_width: int = 128
    head_depth: int = 2
    num_starts: int = 1

    def __post_init__(self):
        check_int(self.num_steps, "num_steps", 1)
        check_int(self.num_starts, "num_starts", 1)
        if not hasattr(self.family, "build"):
            raise TypeError(
                f"family: expected a family recipe such as MultivariateNormal(), got "
                f"{type(self.family).__name__}."
            )

    def build(self, key, latent_dim: int, context_dim: int) -> LaplaceRefinedHead:
        inner_key, start_key = jax.random.split(key)
        inner = self.family.build(inner_key, latent_dim, context_dim + 2 * latent_dim)
        return LaplaceRefinedHead(inner, latent_dim, context_dim, num_steps=self.num_steps,
                                  width=self.head_width, depth=self.head_depth, key=start_key,
                                  num_starts=self.num_starts)
