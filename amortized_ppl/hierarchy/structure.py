"""A hierarchical model's structure, read from its plates: globals, group-level locals, observations.

The models this package amortizes have three levels:

- **global** latent sites, outside every plate;
- **local** latent sites, inside one plate of groups (and no other plate);
- **observed** sites, inside the group plate and a nested plate of observations. Groups of
  different sizes share one padded array ``(num_groups, max_group_size, ...)``; a boolean
  argument (``mask``, shape ``(num_groups, max_group_size)``) marks the real observations and
  the model applies it with ``numpyro.handlers.mask``.

:func:`inspect_hierarchy` traces the model once and returns a :class:`HierarchyStructure`, or
raises naming the site or plate it cannot take and why. Nothing here is learned.

Examples:
    >>> from amortized_ppl.models import hierarchical
    >>> data = hierarchical.eight_schools_data()
    >>> structure = inspect_hierarchy(hierarchical.eight_schools, data)
    >>> structure.global_names, structure.local_names, structure.group_plate
    (('mu', 'tau'), ('theta',), 'schools')
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import biject_to
from numpyro.distributions.transforms import Transform

__all__ = [
    "HierarchySite",
    "HierarchyStructure",
    "inspect_hierarchy",
    "site_log_prob",
    "trace_hierarchy",
]


class HierarchySite(NamedTuple):
    """One latent site, global or local.

    Attributes:
        name: the site's name.
        event_shape: the constrained shape of one value (for a local: of one group's value).
        unconstrained_shape: the shape of that value in unconstrained space.
        transform: ``biject_to(support)``: unconstrained -> constrained.
        batch_ndim: the number of batch dimensions of the site's value (plates and broadcasts).
        group_axis: for a local, the axis of the groups in the value; None for a global.
    """

    name: str
    event_shape: tuple[int, ...]
    unconstrained_shape: tuple[int, ...]
    transform: Transform
    batch_ndim: int
    group_axis: int | None

    @property
    def size(self) -> int:
        """Flat unconstrained size (per group, for a local)."""
        return math.prod(self.unconstrained_shape)


class HierarchyStructure(NamedTuple):
    """What :func:`inspect_hierarchy` reads from a model.

    Attributes:
        globals: the global latent sites, in trace order.
        locals: the local latent sites, in trace order.
        observed: the observed sites' names (each the name of the model argument holding it).
        covariates: the model arguments read per observation, ``(num_groups, max_size, ...)``.
        mask: the name of the model's boolean observation-mask argument.
        group_plate, obs_plate: the plates' names.
    """

    globals: tuple[HierarchySite, ...]
    locals: tuple[HierarchySite, ...]
    observed: tuple[str, ...]
    covariates: tuple[str, ...]
    mask: str
    group_plate: str
    obs_plate: str

    @property
    def global_names(self) -> tuple[str, ...]:
        return tuple(site.name for site in self.globals)

    @property
    def local_names(self) -> tuple[str, ...]:
        return tuple(site.name for site in self.locals)

    @property
    def global_dim(self) -> int:
        """Flat unconstrained size of the globals."""
        return sum(site.size for site in self.globals)

    @property
    def local_dim(self) -> int:
        """Flat unconstrained size of one group's locals."""
        return sum(site.size for site in self.locals)


def trace_hierarchy(model: Callable, data: Mapping[str, Any], key=None):
    """The model's trace on ``data`` (its keyword arguments), seeded by ``key`` (default 0)."""
    key = jax.random.key(0) if key is None else key
    with handlers.block():
        return handlers.trace(handlers.seed(model, key)).get_trace(**data)


def site_log_prob(site) -> jax.Array:
    """A traced sample site's log density, its mask and scale applied (masked entries 0)."""
    log_prob = site["fn"].log_prob(site["value"])
    if site.get("mask") is not None:
        log_prob = jnp.where(site["mask"], log_prob, 0.0)
    if site.get("scale") is not None:
        log_prob = log_prob * site["scale"]
    return log_prob


def _frames(site) -> tuple:
    return tuple(site["cond_indep_stack"])


def _site(name: str, site, group_dim: int | None) -> HierarchySite:
    fn = site["fn"]
    if fn.support.is_discrete:
        raise ValueError(
            f"Site {name!r} is a discrete latent: the hierarchical guides take continuous latents "
            "only; enumerate or marginalize it in the model."
        )
    value = jnp.shape(site["value"])
    event_shape = tuple(fn.event_shape)
    batch_ndim = len(value) - len(event_shape)
    batch = value[:batch_ndim]
    group_axis = None if group_dim is None else batch_ndim + group_dim
    others = [size for axis, size in enumerate(batch) if axis != group_axis]
    if any(size != 1 for size in others) or (group_dim is not None and group_axis < 0):
        where = "outside every plate" if group_dim is None else "in the group plate"
        raise ValueError(
            f"Site {name!r} ({where}) has batch shape {batch}: every batch dimension other than "
            "the group plate's must have size 1. A site whose shape grows with the data (or "
            "that broadcasts over a dimension no plate declares) is not supported; declare the "
            "dimension with a plate or make it part of the event (`.to_event`)."
        )
    transform = biject_to(fn.support)
    unconstrained = tuple(transform.inverse_shape(event_shape))
    return HierarchySite(name, event_shape, unconstrained, transform, batch_ndim, group_axis)


def inspect_hierarchy(
    model: Callable,
    data: Mapping[str, Any],
    *,
    mask: str = "mask",
    observed: tuple[str, ...] | None = None,
    covariates: tuple[str, ...] | None = None,
) -> HierarchyStructure:
    """Read the three levels of a hierarchical NumPyro model from one data set.

    Args:
        model: a NumPyro model called as ``model(**data)``.
        data: its keyword arguments for one data set: per-observation arrays
            ``(num_groups, max_size, ...)``, the observations and the boolean ``mask`` argument.
        mask: the name of the mask argument.
        observed: the observed sites (default: every observed site); each must be a keyword
            argument of the same name, so that ``None`` makes the model simulate it.
        covariates: the per-observation inputs the encoder reads (default: every other array
            argument of shape ``(num_groups, max_size, ...)``).

    Returns:
        A :class:`HierarchyStructure`.

    Raises:
        ValueError: naming the site, plate or argument, for a latent inside the observation plate,
            a latent in a plate other than the group plate, more than one group plate, an observed
            site outside the nested plates, a discrete latent, a shape that depends on the data,
            a missing or non-boolean mask, a group with no observation, or a model that ignores
            its mask.
    """
    if mask not in data:
        raise ValueError(f"data has no mask argument {mask!r}; pass its name as mask=.")
    mask_value = np.asarray(data[mask])
    if mask_value.dtype != np.bool_ or mask_value.ndim != 2:
        raise ValueError(
            f"The mask argument {mask!r} must be a boolean (num_groups, max_size) array; got "
            f"dtype {mask_value.dtype} and shape {mask_value.shape}."
        )
    empty = np.flatnonzero(~mask_value.any(axis=1))
    if empty.size:
        raise ValueError(
            f"Groups {empty[:10].tolist()} have no observation (mask {mask!r} all False): drop "
            "them, or give them an observation."
        )
    for name, value in data.items():
        if value is not None and not np.all(np.isfinite(np.asarray(value, np.float64))):
            raise ValueError(f"data[{name!r}] contains NaN or Inf.")
    trace = trace_hierarchy(model, data)
    latent = {n: s for n, s in trace.items() if s["type"] == "sample" and not s["is_observed"]}
    obs_sites = {n: s for n, s in trace.items() if s["type"] == "sample" and s["is_observed"]}
    if not obs_sites:
        raise ValueError("The model has no observed site; pass the observations in data.")
    # The group plate: the one plate every observed site and every plated latent shares.
    group_frames = {}
    for name, site in latent.items():
        frames = _frames(site)
        if len(frames) > 1:
            raise ValueError(
                f"Latent site {name!r} is in plates {[f.name for f in frames]}: a latent inside "
                "the observation plate (one per observation) or in nested group plates is not "
                "supported; marginalize it, or make it a group-level latent."
            )
        if frames:
            group_frames[frames[0].name] = frames[0]
    if len(group_frames) != 1:
        raise ValueError(
            "Exactly one plate of groups must hold the local latents; found "
            f"{sorted(group_frames) or 'none'}. Models with no local latent are one-level "
            "models (use the amortized guides); several group plates are not supported."
        )
    (group,) = group_frames.values()
    obs_plate = None
    for name, site in obs_sites.items():
        frames = {f.name: f for f in _frames(site)}
        inner = [f for n, f in frames.items() if n != group.name]
        if group.name not in frames or len(inner) != 1:
            raise ValueError(
                f"Observed site {name!r} is in plates {sorted(frames)}; it must be in the group "
                f"plate {group.name!r} and one nested plate of observations."
            )
        if obs_plate is not None and inner[0].name != obs_plate.name:
            raise ValueError(f"Observed sites use two observation plates: "
                             f"{obs_plate.name!r} and {inner[0].name!r}.")
        obs_plate = inner[0]
        if name not in data:
            raise ValueError(f"Observed site {name!r} must be a keyword argument of the same name.")
    observed = tuple(obs_sites) if observed is None else tuple(observed)
    unknown = [n for n in observed if n not in obs_sites]
    if unknown:
        raise ValueError(f"observed names {unknown}, which are not observed sites of the model "
                         f"(those are {sorted(obs_sites)}).")
    shape = mask_value.shape
    if covariates is None:
        covariates = tuple(
            n for n, v in data.items()
            if n not in observed and n != mask and v is not None and np.ndim(v) >= 2
            and np.shape(v)[:2] == shape
        )
    for name in covariates:
        if name not in data or np.shape(data[name])[:2] != shape:
            raise ValueError(f"Covariate {name!r} must be an argument of shape {shape + ('...',)}"
                             f" (groups, observations, ...); got "
                             f"{np.shape(data[name]) if name in data else 'no such argument'}.")
    globals_ = tuple(_site(n, s, None) for n, s in latent.items() if not _frames(s))
    locals_ = tuple(_site(n, s, group.dim) for n, s in latent.items() if _frames(s))
    structure = HierarchyStructure(globals_, locals_, observed, tuple(covariates), mask,
                                   group.name, obs_plate.name)
    _check_mask_respected(model, structure, data, trace)
    return structure


def _check_mask_respected(model, structure, data, trace) -> None:
    """Refuse a model whose log density changes when a padded observation changes."""
    mask_value = np.asarray(data[structure.mask])
    if mask_value.all():
        padded = np.ones_like(mask_value)
        padded[:, -1] = False  # probe with the last column masked
        if padded.shape[1] == 1:
            return  # no observation to hide; nothing to check
        probe = dict(data, **{structure.mask: jnp.asarray(padded.astype(bool))})
    else:
        probe = dict(data)
    probe_mask = np.asarray(probe[structure.mask])
    latents = {n: s["value"] for n, s in trace.items()
               if s["type"] == "sample" and not s["is_observed"]}

    def log_density(values):
        conditioned = handlers.substitute(handlers.seed(model, jax.random.key(0)), data=latents)
        with handlers.block():
            tr = handlers.trace(conditioned).get_trace(**dict(probe, **values))
        return sum(jnp.sum(site_log_prob(site)) for site in tr.values()
                   if site["type"] == "sample")

    base = log_density({})
    for name in structure.observed:
        value = np.array(data[name], np.float64)
        moved = np.where(_expand(~probe_mask, value.ndim), value + 1.0, value)
        if not np.isclose(float(log_density({name: jnp.asarray(moved, jnp.asarray(
                data[name]).dtype)})), float(base), rtol=1e-5, atol=1e-4):
            raise ValueError(
                f"The model's density changes with masked-out values of {name!r}: apply the mask "
                f"argument {structure.mask!r} to the observations, e.g. "
                f"`with numpyro.handlers.mask(mask={structure.mask}): numpyro.sample(...)`."
            )


def _expand(mask: np.ndarray, ndim: int) -> np.ndarray:
    return mask.reshape(mask.shape + (1,) * (ndim - mask.ndim))
