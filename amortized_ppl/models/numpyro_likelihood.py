"""Any NumPyro likelihood as a constraint ``r(x)`` for the diffusion samplers.

:func:`numpyro_likelihood` traces a NumPyro model with one observed site once, checks what it
needs (one observed site of ``y``'s shape, no other latent than ``x``), and returns
``log r(x) = log p(y | x)`` as a batched function, so that any NumPyro likelihood plugs into
:mod:`amortized_ppl.diffusion` the way the zoo's inverse problems
(:mod:`~amortized_ppl.models.inverse_problems`, which re-exports it) do.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from numpyro import handlers

from amortized_ppl._checks import check_finite, check_int
from amortized_ppl.models.checks import as_float

__all__ = ["numpyro_likelihood"]


def _observed_site(trace: dict, site: str | None) -> tuple[str, dict]:
    samples = {name: s for name, s in trace.items() if s["type"] == "sample"}
    observed = [name for name, s in samples.items() if s["is_observed"]]
    if site is None:
        if len(observed) != 1:
            raise ValueError(
                "numpyro_likelihood needs exactly one observed sample site when `site` is not "
                f"given; the model has {observed}. Pass site=<name>."
            )
        site = observed[0]
    if site not in samples:
        raise ValueError(
            f"Unknown site {site!r}: the model's sample sites are {sorted(samples)} "
            f"(observed: {observed})."
        )
    if not samples[site]["is_observed"]:
        raise ValueError(
            f"Site {site!r} is not observed: the model must pass obs=y to it "
            f"(observed sites: {observed})."
        )
    return site, samples[site]


def numpyro_likelihood(
    model: Callable,
    y,
    site: str | None = None,
    *,
    x_site: str | None = None,
    event_ndim: int = 1,
) -> Callable[[jax.Array], jax.Array]:
    """Build the constraint ``r(x) = log p(y | x)`` from a NumPyro model's observed site.

    By default the model is called as ``model(x, y=y)``: ``x`` is an argument (e.g.
    ``def model(x, y=None): numpyro.sample("y", dist.Normal(f(x), s).to_event(1), obs=y)``).
    With ``x_site``, the model is called as ``model(y=y)`` with its latent sample site ``x_site``
    substituted by ``x`` (so a joint model ``x ~ prior; y ~ p(y | x)`` works too); only the
    observed site's log density enters, never the prior's.

    Shapes are checked at trace time: the observed site's distribution shape
    (``batch_shape + event_shape``) and value must both equal ``y.shape``, and the model must have
    no other latent sample site (which would make ``r`` random).

    Args:
        model: A NumPyro model.
        y: The observation, any shape, finite.
        site: Name of the observed site; ``None`` takes the model's only observed site.
        x_site: Name of a latent site to substitute with ``x``; ``None`` passes ``x`` as the
            model's first argument.
        event_ndim: Number of trailing axes of ``x`` that form one latent point (1 for vectors);
            leading axes are batch axes, mapped with ``jax.vmap``.

    Returns:
        A function ``x -> log p(y | x)`` from shape ``(..., *event)`` to ``(...)``.

    Raises:
        ValueError: When called, if the site is unknown or not observed, if its shape disagrees
            with ``y``'s, or if other latent sites exist. On construction, if ``y`` has NaN/Inf.

    Examples:
        >>> import numpyro
        >>> import numpyro.distributions as dist
        >>> def model(x, y=None):
        ...     numpyro.sample("y", dist.Normal(x, 0.1).to_event(1), obs=y)
        >>> log_r = numpyro_likelihood(model, jnp.zeros(3))
        >>> log_r(jnp.zeros((4, 3))).shape
        (4,)
    """
    y = check_finite(as_float(y), "y")
    check_int(event_ndim, "event_ndim", minimum=0)

    def single(x):
        traced_model = handlers.seed(model, rng_seed=0)
        if x_site is None:
            trace = handlers.trace(traced_model).get_trace(x, y=y)
        else:
            substituted = handlers.substitute(traced_model, data={x_site: x})
            trace = handlers.trace(substituted).get_trace(y=y)
            if x_site not in trace or trace[x_site]["type"] != "sample":
                raise ValueError(f"Unknown x_site {x_site!r}: not a sample site of the model.")
        name, node = _observed_site(trace, site)
        others = [
            n
            for n, s in trace.items()
            if s["type"] == "sample" and not s["is_observed"] and n != x_site
        ]
        if others:
            raise ValueError(
                f"The likelihood model has latent sample sites {others} besides x; r(x) would be "
                "random. Fix them with numpyro.handlers.condition or make them arguments."
            )
        fn = node["fn"]
        site_shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
        value_shape = tuple(jnp.shape(node["value"]))
        if site_shape != tuple(y.shape) or value_shape != tuple(y.shape):
            raise ValueError(
                f"Observed site {name!r} has shape {site_shape} (value shape {value_shape}) but "
                f"y has shape {tuple(y.shape)}; the likelihood's observation shape must equal y's."
            )
        log_prob = fn.log_prob(node["value"])
        if node.get("scale") is not None:
            log_prob = node["scale"] * log_prob
        return jnp.sum(log_prob)

    def log_likelihood(x):
        x = as_float(x)
        if x.ndim < event_ndim:
            raise ValueError(
                f"x must have at least event_ndim={event_ndim} axes; got shape {x.shape}."
            )
        batch_shape = x.shape[: x.ndim - event_ndim]
        if not batch_shape:
            return single(x)
        flat = x.reshape((-1,) + x.shape[x.ndim - event_ndim :])
        return batched(flat).reshape(batch_shape)

    batched = jax.jit(jax.vmap(single))

    return log_likelihood
