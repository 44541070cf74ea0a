"""What every posterior family shares: its output, positive scales, small initial layers.

A family is chosen by a *recipe* (a frozen dataclass, see :mod:`amortized_ppl._recipes`) whose
``build(key, latent_dim, context_dim)`` makes the family's module. The module is called on one
data set's context vector:

``module(context, *, log_density, anchor, base=None, prior=None) -> FamilyOutput``

- ``context``: ``(context_dim,)``, the encoder's summary (and whatever earlier stages add);
- ``log_density``: ``u (D,) -> log p(T(u), data) + log|J|``, the model's unconstrained log joint
  for this data set (stages that read the model's density use it; the others ignore it);
- ``anchor``: ``(D,)``, the prior median in unconstrained space;
- ``base``: an optional Gaussian ``(loc (D,), scale_tril (D, D))``: the family then acts in its
  whitened coordinates, so zero network outputs give the base exactly;
- ``prior``: the prior's mean and covariance factor ``(loc (D,), scale_tril (D, D))`` over the
  flat latents (a :class:`~amortized_ppl.families.PriorWhitened` stage reads it; stages pass it
  on).

Stages compose: :class:`~amortized_ppl.families.LaplaceRefined` finds a Laplace fit by Newton
steps and hands it to any inner family as ``base``.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist

__all__ = ["FamilyOutput", "gaussian_moments", "positive_scale", "small_last_layer"]

# softplus(_SCALE_SHIFT) == 1: a network output of zero means a unit posterior scale.
_SCALE_SHIFT = 0.5413248546129181
_MIN_SCALE = 1e-6


class FamilyOutput(NamedTuple):
    """A family's posterior for one data set.

    Attributes:
        posterior: q(u | data) over the flat unconstrained latents, event shape ``(D,)``.
        start: an auxiliary distribution the losses also train, or None (for
            :class:`~amortized_ppl.families.LaplaceRefined`: the network's guess where the
            Newton steps start).
    """

    posterior: dist.Distribution
    start: dist.Distribution | None = None


def positive_scale(raw: jax.Array) -> jax.Array:
    """Map unconstrained network outputs to positive scales (1 at ``raw == 0``)."""
    return jax.nn.softplus(raw + _SCALE_SHIFT) + _MIN_SCALE


MAX_SHIFT_SDS = 3.0
"""The most a learned correction moves a base's location: this many base SDs per coordinate."""
MAX_SCALE_FACTOR = 4.0
"""The most a learned correction widens or narrows a base's scales (a factor and its inverse)."""


def bounded_correction(shift: jax.Array, scale: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A correction of a base Gaussian (whitened ``shift``, ``scale`` factors) squashed into
    ``|shift| <= MAX_SHIFT_SDS`` and ``scale`` within ``MAX_SCALE_FACTOR`` of 1.

    Smooth (tanh) and the identity near zero shift and unit scale, so zero outputs still give
    the base exactly and small corrections pass unchanged; a badly trained network cannot put
    the posterior far from the Laplace fit it corrects (issue 15: a 200-step network moved
    sigma's mean from its base's 0.58 to 9.0).
    """
    shift = MAX_SHIFT_SDS * jnp.tanh(shift / MAX_SHIFT_SDS)
    log_bound = jnp.log(MAX_SCALE_FACTOR)
    scale = jnp.exp(log_bound * jnp.tanh(jnp.log(scale) / log_bound))
    return shift, scale


def small_last_layer(mlp: eqx.nn.MLP, factor: float = 0.1) -> eqx.nn.MLP:
    """``mlp`` with its last layer's weights scaled by ``factor``: small initial outputs, which
    mean "no correction" and "unit scale" in the families."""
    return eqx.tree_at(lambda m: m.layers[-1].weight, mlp, mlp.layers[-1].weight * factor)


def head_mlp(in_size: int, out_size: int, width: int, depth: int, *, key) -> eqx.nn.MLP:
    """The families' MLP: GELU, ``depth`` hidden layers of ``width``, small last layer."""
    return small_last_layer(
        eqx.nn.MLP(in_size, out_size, width, depth, activation=jax.nn.gelu, key=key))


def gaussian_moments(posterior: dist.Distribution) -> tuple[jax.Array, jax.Array]:
    """``(loc (..., D), scale_tril (..., D, D))`` of a Gaussian family's posterior.

    Raises:
        TypeError: the posterior is not Gaussian (use its samples instead).
    """
    if isinstance(posterior, dist.MultivariateNormal):
        return posterior.loc, posterior.scale_tril
    base = getattr(posterior, "base_dist", None)
    if isinstance(posterior, dist.Independent) and isinstance(base, dist.Normal):
        scale = base.scale
        return base.loc, scale[..., :, None] * jnp.eye(scale.shape[-1], dtype=scale.dtype)
    raise TypeError(
        f"A Gaussian posterior was expected (MultivariateNormal or Independent Normal), got "
        f"{type(posterior).__name__}; use sample_posterior and empirical moments instead."
    )
