"""The model's joint log density for one data set, with padded observations masked out."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from numpyro import handlers

from amortized_ppl.sites import ModelSites

__all__ = ["log_joint", "log_joint_parts"]


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
    latent_term, observed_term = log_joint_parts(model, sites, bound, latents, mask)
    return latent_term + observed_term


def log_joint_parts(
    model: Callable,
    sites: ModelSites,
    bound: Mapping[str, Any],
    latents: Mapping[str, jax.Array],
    mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``(log p(latents), log p(data | latents))`` for one unbatched data set: two scalars.

    The second term holds the observed sites of the data plate; anything else (latent sites and
    observed sites outside the plate) goes into the first. The split lets mini-batch methods scale the likelihood of a subset of the observations up
    to the whole data set while counting the prior once. Arguments as in :func:`log_joint`.
    """
    conditioned = handlers.substitute(handlers.seed(model, jax.random.key(0)), data=dict(latents))
    # Blocked, so that evaluating the model inside a guide leaves no sites in an outer trace.
    with handlers.block():
        trace = handlers.trace(conditioned).get_trace(**bound)
    latent_term, observed_term = jnp.zeros(()), jnp.zeros(())
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
        if name in sites.observed_plate_dims:  # the data set's own observations
            observed_term = observed_term + jnp.sum(log_prob)
        else:
            latent_term = latent_term + jnp.sum(log_prob)
    return latent_term, observed_term
