"""Trace a NumPyro model once: its latent sites, their supports and transforms, and its data plate.

Amortized guides work on one flat vector of unconstrained latents per data set. This module finds
the latent sample sites of a model (shapes, supports, ``biject_to`` transforms, as NumPyro's
autoguides do), decides which plate indexes the observations (the *data plate*), and packs and
unpacks latents between the dict-of-sites form and the flat form.

Global latents only: a latent inside the data plate, or one whose shape changes with the number of
observations, is a *local* latent that the amortized guides here cannot handle yet, and so is a
discrete latent. Both raise a ``ValueError`` naming the site.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.primitives import Messenger

__all__ = ["LatentSite", "ModelSites", "inspect_model", "trace_model"]


class LatentSite(NamedTuple):
    """A latent sample site of a model.

    Attributes:
        name: the site name.
        shape: shape of one constrained value (batch shape from enclosing plates plus event shape).
        unconstrained_shape: shape of the value in unconstrained space (differs for e.g. simplexes).
        support: the site's support constraint.
        transform: bijection from unconstrained space onto the support (``biject_to(support)``).
        event_ndim: number of dimensions of ``shape`` that are event dimensions for the guide.
    """

    name: str
    shape: tuple[int, ...]
    unconstrained_shape: tuple[int, ...]
    support: Any
    transform: Any
    event_ndim: int

    @property
    def size(self) -> int:
        """Number of unconstrained scalars of the site."""
        return int(math.prod(self.unconstrained_shape))


class ModelSites(NamedTuple):
    """What a model looks like to an amortized guide.

    Attributes:
        latents: the global latent sites, in trace order.
        observed: names of the observed sites inside the data plate, in trace order.
        plate_name: name of the plate that indexes observations.
        observed_plate_dims: for each observed site, the (negative) batch dimension of the plate.
        observed_event_shapes: for each observed site, the shape of one observation.
        observed_axes: for each observed site, the axis of its (unbatched) value that the data
            plate indexes.
    """

    latents: tuple[LatentSite, ...]
    observed: tuple[str, ...]
    plate_name: str
    observed_plate_dims: dict[str, int]
    observed_event_shapes: dict[str, tuple[int, ...]]
    observed_axes: dict[str, int]

    @property
    def latent_dim(self) -> int:
        """Length of the flat unconstrained latent vector."""
        return sum(site.size for site in self.latents)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(site.name for site in self.latents)

    @property
    def flat_names(self) -> tuple[str, ...]:
        """A label per entry of the flat unconstrained vector: ``"w[0]"``, ..., or ``"b"``.

        Multi-axis sites are labelled by their flat index within the site.
        """
        labels = []
        for site in self.latents:
            if site.size == 1 and not site.unconstrained_shape:
                labels.append(site.name)
            else:
                labels.extend(f"{site.name}[{i}]" for i in range(site.size))
        return tuple(labels)

    def site(self, name: str) -> LatentSite:
        """Return the latent site called ``name`` or raise a ``KeyError`` listing the known ones."""
        for site in self.latents:
            if site.name == name:
                return site
        raise KeyError(f"Unknown latent site {name!r}; the model's latent sites are {self.names}.")

    def flatten(self, unconstrained: dict[str, jax.Array]) -> jax.Array:
        """Pack unconstrained site values into one vector.

        Args:
            unconstrained: site name -> array of shape ``batch + unconstrained_shape``.

        Returns:
            Array of shape ``batch + (latent_dim,)``.
        """
        parts = []
        for site in self.latents:
            value = unconstrained[site.name]
            batch = value.shape[: value.ndim - len(site.unconstrained_shape)]
            parts.append(jnp.reshape(value, batch + (site.size,)))
        return jnp.concatenate(parts, axis=-1)

    def unflatten(self, flat: jax.Array) -> dict[str, jax.Array]:
        """Split a flat unconstrained vector (shape ``batch + (latent_dim,)``) into sites."""
        if flat.shape[-1] != self.latent_dim:
            raise ValueError(
                f"flat latent vector: expected last dimension {self.latent_dim}, got shape {flat.shape}."
            )
        out, start = {}, 0
        batch = flat.shape[:-1]
        for site in self.latents:
            chunk = flat[..., start : start + site.size]
            out[site.name] = jnp.reshape(chunk, batch + site.unconstrained_shape)
            start += site.size
        return out

    def constrain(self, flat: jax.Array) -> dict[str, jax.Array]:
        """Map a flat unconstrained vector to constrained site values (inside their supports)."""
        values = self.unflatten(flat)
        return {s.name: s.transform(values[s.name]) for s in self.latents}

    def unconstrain(self, values: dict[str, jax.Array]) -> jax.Array:
        """Map constrained site values to the flat unconstrained vector."""
        missing = [s.name for s in self.latents if s.name not in values]
        if missing:
            raise KeyError(f"Missing latent sites {missing}; expected {self.names}.")
        return self.flatten({s.name: s.transform.inv(values[s.name]) for s in self.latents})

    def log_abs_det_jacobian(self, flat: jax.Array) -> jax.Array:
        """Log |det J| of the map from the flat unconstrained vector to constrained values.

        Args:
            flat: shape ``batch + (latent_dim,)``.

        Returns:
            shape ``batch``.
        """
        values = self.unflatten(flat)
        batch = flat.shape[:-1]
        total = jnp.zeros(batch, flat.dtype)
        for site in self.latents:
            u = values[site.name]
            ladj = site.transform.log_abs_det_jacobian(u, site.transform(u))
            # Sum whatever the transform leaves per element down to the data-set batch.
            extra = jnp.ndim(ladj) - len(batch)
            if extra > 0:
                ladj = jnp.sum(ladj, axis=tuple(range(-extra, 0)))
            total = total + ladj
        return total


def trace_model(model: Callable, key: jax.Array, args: tuple, kwargs: dict):
    """Run ``model(*args, **kwargs)`` once with a seed and return its trace.

    The run is blocked from outer handlers, so tracing inside a guide records nothing outside.
    """
    current = _CurrentSite()
    try:
        with handlers.block():
            return handlers.trace(handlers.seed(current(model), key)).get_trace(*args, **kwargs)
    except NotImplementedError as error:
        # NumPyro raises a bare NotImplementedError for distributions it cannot sample (an
        # ImproperUniform prior, a custom distribution without `sample`): name the site.
        reason = str(error) or "it has no sample method"
        raise ValueError(
            f"Site {current.name!r} ({current.fn}) cannot be sampled ({reason}): amortized guides train on simulations from the model, so every latent needs a "
            "proper prior that can be sampled (replace ImproperUniform with a proper "
            "distribution)."
        ) from None


class _CurrentSite(Messenger):
    """Remembers the sample site the model is at, to name it when its sampling fails."""

    name, fn = None, None

    def process_message(self, msg):
        if msg["type"] == "sample":
            self.name, self.fn = msg["name"], type(msg["fn"]).__name__


def _plates_of(site) -> dict[str, Any]:
    return {frame.name: frame for frame in site["cond_indep_stack"]}


def inspect_model(
    model: Callable,
    args: tuple,
    kwargs: dict,
    *,
    key: jax.Array | None = None,
    num_obs: int | None = None,
    other_args: tuple | None = None,
    other_kwargs: dict | None = None,
) -> ModelSites:
    """Trace ``model`` and describe its latent sites and data plate.

    Args:
        model: a NumPyro model.
        args, kwargs: inputs for one data set (observations may be ``None``: the model samples them).
        key: PRNG key for the trace (only used to draw values, the result does not depend on it).
        num_obs: the number of observations in ``args``, if known; checked against the data plate.
        other_args, other_kwargs: inputs for a data set of a *different* size; when given, a latent
            whose shape changes between the two traces is reported as a local latent.

    Returns:
        The model's :class:`ModelSites`.

    Raises:
        ValueError: for a discrete latent, a local latent, a model without observed sites, or
            observed sites outside a plate, each naming the site.
    """
    key = jax.random.key(0) if key is None else key
    trace = trace_model(model, key, args, kwargs)

    # The caller passes the observations, so the observed sites are exactly those marked observed.
    observed = [
        s
        for s in trace.values()
        if s["type"] == "sample" and s["is_observed"] and not s["infer"].get("is_auxiliary")
        and type(s["fn"]).__name__ != "Unit"  # `numpyro.factor` terms are not observations
    ]
    plate_sizes: dict[str, int] = {}
    for site in trace.values():
        for frame in site.get("cond_indep_stack", ()):
            plate_sizes[frame.name] = frame.size

    if not observed:
        raise ValueError(
            "The model has no observed sample site (no `obs=` value in the trace). Pass the data "
            "set's observations to the model when tracing it."
        )

    plate_names = None
    for site in observed:
        names = set(_plates_of(site))
        if not names:
            raise ValueError(
                f"Observed site {site['name']!r} is not inside a `numpyro.plate`; amortized guides "
                "need a plate over independent observations to read the data set as a set."
            )
        plate_names = names if plate_names is None else plate_names & names
    if not plate_names:
        raise ValueError(
            "The observed sites "
            f"{[s['name'] for s in observed]} share no plate; put them in one plate over observations."
        )
    # The data plate is the shared plate of the observed sites; with nested plates, prefer the one
    # whose size matches the number of observations, else the outermost (largest |dim|).
    candidates = sorted(plate_names)
    if num_obs is not None:
        matching = [n for n in candidates if plate_sizes[n] == num_obs]
        if not matching:
            raise ValueError(
                f"No plate around the observed sites has size {num_obs} (the number of observations); "
                f"plates found: { {n: plate_sizes[n] for n in candidates} }."
            )
        candidates = matching
    plate_name = candidates[0]

    latents = []
    for site in trace.values():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if site["infer"].get("is_auxiliary"):
            continue
        name, fn = site["name"], site["fn"]
        if fn.support.is_discrete:
            raise ValueError(
                f"Latent site {name!r} is discrete ({type(fn).__name__} with support "
                f"{fn.support}); amortized guides (Gaussian and flow families alike) handle "
                "continuous latents only. Marginalize it out of the model or observe it."
            )
        if plate_name in _plates_of(site):
            raise ValueError(
                f"Latent site {name!r} lies inside the data plate {plate_name!r}: it is a local "
                "(per-observation) latent, which amortized guides here do not handle yet. "
                "Marginalize it or move it out of the plate."
            )
        value = site["value"]
        transform = biject_to(fn.support)
        shape = tuple(jnp.shape(value))
        latents.append(
            LatentSite(
                name=name,
                shape=shape,
                unconstrained_shape=tuple(transform.inverse_shape(shape)),
                support=fn.support,
                transform=transform,
                event_ndim=len(shape),
            )
        )
    if not latents:
        raise ValueError("The model has no continuous latent sample site to infer.")

    if other_args is not None or other_kwargs is not None:
        other = trace_model(model, key, other_args or args, other_kwargs or kwargs)
        for site in latents:
            other_shape = tuple(jnp.shape(other[site.name]["value"])) if site.name in other else None
            if other_shape != site.shape:
                raise ValueError(
                    f"Latent site {site.name!r} changes shape with the size of the data set "
                    f"({site.shape} vs {other_shape}): it is a local latent, which amortized guides "
                    "here do not handle yet."
                )

    plate_dims, event_shapes, axes = {}, {}, {}
    for site in observed:
        frame = _plates_of(site)[plate_name]
        value = jnp.asarray(site["value"])
        axis = plate_axis(value.ndim, len(site["fn"].event_shape), frame.dim)
        plate_dims[site["name"]] = frame.dim
        axes[site["name"]] = axis
        event_shapes[site["name"]] = value.shape[:axis] + value.shape[axis + 1 :]
    return ModelSites(
        latents=tuple(latents),
        observed=tuple(s["name"] for s in observed),
        plate_name=plate_name,
        observed_plate_dims=plate_dims,
        observed_event_shapes=event_shapes,
        observed_axes=axes,
    )


def plate_axis(value_ndim: int, event_ndim: int, plate_dim: int) -> int:
    """Axis of an observed value that the data plate indexes (``plate_dim`` counts in batch dims)."""
    return value_ndim - event_ndim + plate_dim
