"""Latents of a hierarchical model as two flat arrays, and its log joint in that layout.

A draw is ``(g, u)``: ``g`` the globals' unconstrained values concatenated, ``(global_dim,)``,
and ``u`` every group's locals, ``(num_groups, local_dim)``. :func:`log_joint` is the model's
log density there (with the transforms' log-Jacobians), so it is what NUTS, Laplace, Newton steps
and importance weights read; :func:`log_joint_split` separates the globals' prior from the
groups' terms, so that a group's conditional density can be evaluated on that group alone.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from numpyro import handlers

from amortized_ppl.hierarchy.structure import HierarchySite, HierarchyStructure, site_log_prob

__all__ = ["constrain", "flatten", "log_joint", "log_joint_split", "simulate"]


def _local_shape(site: HierarchySite, num_groups: int, shape: tuple[int, ...]):
    batch = [1] * site.batch_ndim
    batch[site.group_axis] = num_groups
    return tuple(batch) + shape


def _constrain_sites(sites, raw_of):
    values, log_det = {}, jnp.zeros(())
    for site, raw in zip(sites, raw_of):
        value = site.transform(raw)
        log_det = log_det + jnp.sum(site.transform.log_abs_det_jacobian(raw, value))
        values[site.name] = value
    return values, log_det


def _split(structure: HierarchyStructure, g: jax.Array, u: jax.Array):
    raw_globals, raw_locals, start = [], [], 0
    for site in structure.globals:
        raw_globals.append(g[start:start + site.size].reshape(site.unconstrained_shape))
        start += site.size
    start = 0
    for site in structure.locals:
        raw_locals.append(
            u[:, start:start + site.size].reshape((u.shape[0],) + site.unconstrained_shape))
        start += site.size
    return raw_globals, raw_locals


def constrain(structure: HierarchyStructure, g: jax.Array, u: jax.Array):
    """Constrained site values from ``(g, u)``, and the total log-Jacobian of the transforms."""
    values, log_det, _ = _constrain_parts(structure, g, u)
    return values, log_det


def _constrain_parts(structure, g, u):
    raw_globals, raw_locals = _split(structure, g, u)
    values, global_det = _constrain_sites(structure.globals, raw_globals)
    local_values, local_det = _constrain_sites(structure.locals, raw_locals)
    for site in structure.locals:
        values[site.name] = local_values[site.name].reshape(
            _local_shape(site, u.shape[0], site.event_shape))
    return values, global_det + local_det, global_det


def flatten(structure: HierarchyStructure, values: Mapping[str, jax.Array]):
    """``(g, u)`` from constrained site values (the inverse of :func:`constrain`)."""
    g = [site.transform.inv(values[site.name]).reshape(-1) for site in structure.globals]
    u = []
    for site in structure.locals:
        value = jnp.moveaxis(jnp.asarray(values[site.name]), site.group_axis, 0)
        value = value.reshape((value.shape[0],) + site.event_shape)
        u.append(site.transform.inv(value).reshape(value.shape[0], -1))
    g = jnp.concatenate(g) if g else jnp.zeros((0,))
    return g, jnp.concatenate(u, axis=1)


def log_joint_split(model: Callable, structure: HierarchyStructure, data: Mapping[str, Any],
                    g: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(log p(g), log p(u, data | g))`` in unconstrained space, log-Jacobians included.

    The first term holds the global sites (and their Jacobians) only, so for a data set of one
    group it is what the group does not own: summing the second term over groups, one group at a
    time, and adding the first once gives :func:`log_joint`.
    """
    values, log_det, global_det = _constrain_parts(structure, g, u)
    conditioned = handlers.substitute(handlers.seed(model, jax.random.key(0)), data=values)
    with handlers.block():
        trace = handlers.trace(conditioned).get_trace(**data)
    global_names = set(structure.global_names)
    global_term, group_term = global_det, log_det - global_det
    for name, site in trace.items():
        if site["type"] != "sample":
            continue
        log_prob = site_log_prob(site)
        if name in global_names:
            global_term = global_term + jnp.sum(log_prob)
        else:
            group_term = group_term + jnp.sum(log_prob)
    return global_term, group_term


def log_joint(model: Callable, structure: HierarchyStructure, data: Mapping[str, Any],
              g: jax.Array, u: jax.Array) -> jax.Array:
    """log p(g, u, data) in unconstrained space (log-Jacobians included): a scalar."""
    global_term, group_term = log_joint_split(model, structure, data, g, u)
    return global_term + group_term


def simulate(key: jax.Array, model: Callable, structure: HierarchyStructure,
             design: Mapping[str, Any]):
    """One prior-predictive data set on a padded layout.

    Args:
        key: PRNG key.
        model, structure: the model and its :func:`inspect_hierarchy` structure.
        design: the model's keyword arguments without the observations (covariates and mask).

    Returns:
        ``(data, g, u)``: ``design`` with the simulated observations added, and the latents.
    """
    with handlers.block():
        trace = handlers.trace(handlers.seed(model, key)).get_trace(
            **dict(design, **{name: None for name in structure.observed}))
    values = {name: site["value"] for name, site in trace.items()}
    data = dict(design, **{name: values[name] for name in structure.observed})
    g, u = flatten(structure, values)
    return data, g, u
