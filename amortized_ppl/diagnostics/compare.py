"""A trained guide against a NUTS reference on one data set, with the sites checked first."""

from __future__ import annotations

import jax
import numpy as np

from amortized_ppl.diagnostics.distances import DistanceReport, compare_to_reference
from amortized_ppl.diagnostics.metrics import flatten_draws

__all__ = ["compare_guide_to_reference"]


def _check_sites(guide, samples: dict) -> None:
    """Raise when the reference does not hold the guide's latent sites with their shapes."""
    missing = [name for name in guide.problem.sites.names if name not in samples]
    if missing:
        raise ValueError(
            f"reference: no draws of the guide's latent sites {missing} (it has "
            f"{sorted(samples)}); was it sampled from another model than the guide's?"
        )
    for site in guide.problem.sites.latents:
        shape = tuple(np.shape(samples[site.name])[2:])
        if shape != tuple(site.shape):
            raise ValueError(
                f"reference: site {site.name!r} has shape {shape} per draw, the guide's model "
                f"{tuple(site.shape)}; the reference and the guide disagree on the model."
            )


def compare_guide_to_reference(
    key: jax.Array, guide, params, reference, *args, num_draws: int = 1000, **kwargs
) -> tuple[DistanceReport, jax.Array, jax.Array]:
    """Moment errors, MMD and C2ST of the guide's posterior against a NUTS reference.

    Args:
        key: PRNG key.
        guide, params: a trained guide and its parameters.
        reference: a :class:`~amortized_ppl.reference.ReferenceResult` for the same data set
            (``samples`` site -> ``(chains, draws, ...)``).
        *args, **kwargs: the model's arguments for that one data set.
        num_draws: guide draws; the reference is thinned to about as many.

    Returns:
        ``(report, guide_draws (S, D), reference_draws (S', D))`` with flat constrained draws in
        the order of ``guide.problem.sites.flat_names``.

    Raises:
        ValueError: when the reference lacks a latent site of the guide's model or a site's
            shape differs (a reference from another model), or when either side has too few
            draws for the tests.
    """
    _check_sites(guide, reference.samples)
    draw_key, test_key = jax.random.split(key)
    names = list(guide.problem.sites.names)
    draws = guide.sample_posterior(draw_key, params, *args, sample_shape=(num_draws,), **kwargs)
    guide_flat = flatten_draws(draws, names)
    ref_flat = flatten_draws(
        {
            name: np.reshape(v, (-1,) + np.shape(v)[2:])
            for name, v in reference.samples.items()
            if name in names
        },
        names,
    )
    ref_flat = ref_flat[:: max(1, ref_flat.shape[0] // num_draws)]
    report = compare_to_reference(test_key, guide_flat[None], ref_flat[None])
    return jax.tree.map(lambda v: v[0], report), guide_flat, ref_flat
