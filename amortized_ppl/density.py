"""The model's joint log density for one data set, with padded observations masked out."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from numpyro import handlers

from amortized_ppl.sites import ModelSites

__all__ = ["log_joint"]


def log_joint(
    model: Callable,
    sites: ModelSites,
    bound: Mapping[str, Any],
    latents: Mapping[str, jax.Array],
    mask: jax.Array | None = None,
) -> jax.Array:
    """log p(latents, data) for one unbatched data set.

    Args:
        model: the NumPyro model.
        sites: its traced description.
        bound: the model's bound arguments, observations included.
        latents: constrained latent values keyed by site name.
        mask: optional ``(N,)`` bool; observations where it is False (padding) do not count.

    Returns:
        A scalar.
    """
    conditioned = handlers.substitute(handlers.seed(model, jax.random.key(0)), data=dict(latents))
    # Blocked, so that evaluating the model inside a guide leaves no sites in an outer trace.
    with handlers.block():
        trace = handlers.trace(conditioned).get_trace(**bound)
    total = jnp.zeros(())
    for name, site in trace.items():
        if site["type"] != "sample":
            continue
        log_prob = site["fn"].log_prob(site["value"])
        if site.get("scale") is not None:
            log_prob = log_prob * site["scale"]
        if mask is not None and name in sites.observed_plate_dims:
            # The plate's axis in the log-prob (batch) shape, counted from the right.
            plate_dim = sites.observed_plate_dims[name]
            trailing = -plate_dim - 1
            log_prob = jnp.where(
                jnp.reshape(mask, mask.shape + (1,) * trailing), log_prob, 0.0
            )
        total = total + jnp.sum(log_prob)
    return total
