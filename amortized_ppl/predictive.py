"""Posterior predictive draws of the observed sites, through NumPyro's ``Predictive``.

An amortized guide reads the observations to produce the posterior; the model, run by
``Predictive`` with those observations, returns them unchanged for every draw (they are
``obs=`` values there). NumPyro's way to get predictive draws is to call ``Predictive`` without
the observations, as one does with its autoguides; :func:`given` makes our guides take part in
that call by holding the observations for the guide alone:

    Predictive(model, guide=given(guide, y=y), params=params, num_samples=500)(key, x)

Or keep the observations in the call and let the model draw its observed sites anew with
:class:`unobserve` (the shapes then come from the data, so models that size their plates from
``y`` need no extra argument):

    Predictive(unobserve(model), guide=guide, params=params, num_samples=500)(key, x, y)

:func:`posterior_predictive` does the latter in one vectorized call (the guide's
``sample_posterior``, then the model under ``Predictive``).
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
from numpyro.infer import Predictive
from numpyro.primitives import Messenger

from amortized_ppl._checks import check_int, check_key

__all__ = ["GivenObservations", "given", "posterior_predictive", "unobserve"]


class unobserve(Messenger):  # noqa: N801 (a NumPyro effect handler, named as NumPyro's are)
    """Draw observed sites from their distributions instead of returning the observations.

    A NumPyro effect handler (NumPyro has ``condition`` but not its inverse): a sample site
    with ``obs=`` given is sampled as if it were latent, with the shapes the observations gave
    the model's plates. ``sites`` limits it to those names (default: every observed site).

    Examples:
        >>> y_rep = Predictive(unobserve(model), guide=guide, params=params,
        ...                    num_samples=500)(key, x, y)["y"]
    """

    def __init__(self, fn=None, sites=None):
        self.sites = None if sites is None else frozenset(sites)
        super().__init__(fn)

    def process_message(self, msg):
        if (msg["type"] == "sample" and msg.get("is_observed")
                and (self.sites is None or msg["name"] in self.sites)):
            msg["value"] = None
            msg["is_observed"] = False


def _observed_arguments(guide) -> dict[str, str]:
    """Observed site -> the model argument carrying it; the guide must know its problem."""
    if not getattr(guide, "is_setup", False):
        raise ValueError(
            "guide: not set up, so its observed arguments are unknown; train it (fit) or load it "
            "(load_guide) first."
        )
    return dict(guide.problem.spec.observed)


class GivenObservations:
    """A guide that holds the observations, for programs that run the model without them.

    Called like the model (its observations left as None), it fills them in for the guide
    only. It registers the same parameter sites as the guide, so ``params`` from training
    apply unchanged. Build it with :func:`given`.
    """

    def __init__(self, guide, observations: dict[str, Any]):
        self.guide = guide
        self.observations = dict(observations)

    def __call__(self, *args, **kwargs):
        bound = self.guide.signature.bind_partial(*args, **kwargs).arguments
        twice = [name for name in self.observations if bound.get(name) is not None]
        if twice:
            raise ValueError(
                f"{twice}: given to the guide already; leave them out of the model's call (the "
                "model must run without its observations to draw predictions)."
            )
        return self.guide(*args, **{**kwargs, **self.observations})


def given(guide, **observations) -> GivenObservations:
    """Hold a data set's observations for ``guide``, so ``Predictive`` can leave them out.

    Args:
        guide: a set-up amortized guide.
        **observations: every observed argument of the model, by name (e.g. ``y=y``).

    Returns:
        A guide program for ``Predictive(model, guide=..., params=...)`` called with the model's
        other arguments; the model's observed sites then come back as predictive draws.

    Raises:
        ValueError: an observed argument missing or None, or a name that is not one.

    Examples:
        >>> predictive = Predictive(model, guide=given(guide, y=y), params=params,
        ...                         num_samples=500)
        >>> y_rep = predictive(key, x)["y"]  # (500, num_obs)
    """
    expected = set(_observed_arguments(guide).values())
    unknown = sorted(set(observations) - expected)
    if unknown:
        raise ValueError(
            f"given: {unknown} are not observed arguments of the model; they are "
            f"{sorted(expected)}."
        )
    missing = sorted(name for name in expected if observations.get(name) is None)
    if missing:
        raise ValueError(f"given: the observations {missing} are missing (None).")
    return GivenObservations(guide, observations)


def posterior_predictive(
    rng_key: jax.Array, guide, params, *args, num_samples: int = 1000, **kwargs
) -> dict[str, jax.Array]:
    """Draw the observed sites from the posterior predictive of one data set.

    Latents come from ``guide.sample_posterior`` (one vectorized call); the model then runs
    under NumPyro's ``Predictive`` with those latents, its observed sites drawn anew
    (:class:`unobserve`).

    Args:
        rng_key: PRNG key.
        guide: a set-up amortized guide; ``params`` its parameters.
        *args, **kwargs: the model's arguments for one data set, observations included.
        num_samples: number of draws.

    Returns:
        Observed site -> ``(num_samples, *site_shape)`` draws, and each latent site's draws.

    Raises:
        ValueError: a batch of data sets (one at a time here), or an observation missing.
    """
    check_key(rng_key, "rng_key")
    num_samples = check_int(num_samples, "num_samples")
    observed = _observed_arguments(guide)
    arguments = inspect.signature(guide.model).bind_partial(*args, **kwargs).arguments
    missing = sorted(arg for arg in observed.values() if arguments.get(arg) is None)
    if missing:
        raise ValueError(f"posterior_predictive: the observations {missing} are missing (None).")
    _, _, is_batch = guide.prepare(*args, **kwargs)
    if is_batch:
        raise ValueError(
            "posterior_predictive: one data set at a time (the data carry a leading batch axis); "
            "loop or vmap over data sets."
        )
    latent_key, predictive_key = jax.random.split(rng_key)
    latents = guide.sample_posterior(latent_key, params, *args, sample_shape=(num_samples,),
                                     **kwargs)
    draws = Predictive(unobserve(guide.model, observed), posterior_samples=latents,
                       return_sites=list(observed))(predictive_key, *args, **kwargs)
    return {**latents, **draws}
