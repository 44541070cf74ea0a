"""A funnel: a scale and the latents it scales, seen through noisy observations.

``log_scale ~ Normal(0, 1.5)``, ``z ~ Normal(0, exp(log_scale))^4`` and, inside the ``"data"``
plate, ``y_n ~ Normal(z, 2)`` (a 4-vector per observation). With few observations the data pin
``z`` down only loosely, and the posterior keeps the prior's funnel: where ``log_scale`` is small
``z`` is squeezed to zero, where it is large ``z`` spreads, a curvature no single Gaussian has.
NUTS is the reference.

The joint density of ``(log_scale, z)`` rises steeply down the funnel's neck (``z``'s normal
density grows as its scale shrinks, until ``log_scale``'s prior stops it), so its mode (the
Laplace fit's centre) sits far down the neck, not where the posterior's mass is.
:func:`model_noncentered` is the same model with ``z = exp(log_scale) * z_decentered``
(NumPyro's ``LocScaleReparam``), whose posterior has no such neck: the frame in which a
Laplace/Newton stage makes sense for a funnel.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.infer.reparam import LocScaleReparam

__all__ = ["DIM", "NOISE", "design_fn", "model", "model_noncentered"]

DIM = 4
NOISE = 2.0


def model(y=None, num_obs=None):
    """Latent sites ``log_scale`` (``()``) and ``z`` (``(4,)``); ``y``: ``(N, 4)``, or ``None``
    with ``num_obs``."""
    if y is None and num_obs is None:
        raise ValueError("funnel.model: pass the observations y, or num_obs to simulate them.")
    if y is not None and (jnp.ndim(y) != 2 or jnp.shape(y)[1] != DIM):
        raise ValueError(f"funnel.model: y must have shape (N, {DIM}); got {jnp.shape(y)}.")
    log_scale = numpyro.sample("log_scale", dist.Normal(0.0, 1.5))
    z = numpyro.sample("z", dist.Normal(0.0, jnp.exp(log_scale)).expand([DIM]).to_event(1))
    with numpyro.plate("data", jnp.shape(y)[0] if y is not None else int(num_obs)):
        numpyro.sample("y", dist.Normal(z, NOISE).to_event(1), obs=y)


def model_noncentered(y=None, num_obs=None):
    """:func:`model` with ``z`` non-centered: latent sites ``log_scale`` and ``z_decentered``
    (``(4,)``, a priori standard normal), ``z`` a deterministic site."""
    with numpyro.handlers.reparam(config={"z": LocScaleReparam(centered=0)}):
        return model(y=y, num_obs=num_obs)


def design_fn(key, num_obs: int) -> tuple[tuple, dict]:
    """No covariates: the data set's size only."""
    del key
    return (), {"num_obs": int(num_obs)}
