"""The cached entry points: one reference sampler per model and configuration.

:func:`get_reference_sampler` caches :func:`build_reference_sampler` per ``(model,
configuration)``, so repeated calls reuse its compiled programs; :func:`reference_posterior` is
the convenience entry point on top.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from amortized_ppl._progress import resolve_progress
from amortized_ppl.convergence import ReferenceResult
from amortized_ppl.reference.sampler import ReferenceSampler, build_reference_sampler
from amortized_ppl.sharding import resolve_mesh

__all__ = ["SAMPLER_CACHE_SIZE", "get_reference_sampler", "reference_posterior"]

SAMPLER_CACHE_SIZE = 32
"""Number of ``(model, configuration)`` samplers :func:`get_reference_sampler` keeps."""


@functools.lru_cache(maxsize=SAMPLER_CACHE_SIZE)
def _cached_sampler(model, **config) -> ReferenceSampler:
    return build_reference_sampler(model, **config)


def get_reference_sampler(model: Callable, **config) -> ReferenceSampler:
    """:func:`build_reference_sampler`, cached per ``(model, configuration)`` (32 entries).

    A model or init strategy that cannot be hashed is built without caching.
    """
    try:
        return _cached_sampler(model, **config)
    except TypeError as error:  # an unhashable model or init strategy: build without caching
        if "unhashable" not in str(error):
            raise
        return build_reference_sampler(model, **config)


def reference_posterior(
    key,
    model: Callable,
    *args,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 1000,
    target_accept: float = 0.8,
    init_params: dict | None = None,
    progress: bool | None = None,
    mesh=None,
    **kwargs,
) -> ReferenceResult:
    """Sample a reference posterior of ``model`` given data with NUTS (several chains).

    The sampler for ``(model, num_chains, num_warmup, num_samples, target_accept, progress)`` is
    built once and cached; its jitted program is compiled once per shape of the data, so repeated
    calls on data sets of one shape only run (see :func:`build_reference_sampler`).

    Args:
        key: A JAX PRNG key.
        model: A NumPyro model with continuous latent sites.
        *args: The model's positional arguments (the data set), e.g. ``x``.
        num_chains: Number of chains, at least 2.
        num_warmup: Window-adaptation steps per chain.
        num_samples: Post-warm-up samples per chain, at least 10.
        target_accept: Target acceptance rate of step-size adaptation.
        init_params: Optional unconstrained initial positions, a dict site ->
            ``(num_chains, *unconstrained_shape)`` (e.g. ``result.info.last_position`` of an earlier
            run); by default each chain is initialized by ``init_to_uniform``.
        progress: Show a progress bar (default: in a terminal or notebook).
        mesh: Split the chains over a device mesh (a device count or a
            :class:`jax.sharding.Mesh` from :func:`~amortized_ppl.sharding.data_mesh`).
        **kwargs: The model's keyword arguments, e.g. ``y=y``. Array leaves are traced; other
            leaves (Python scalars) are static, so a new value recompiles.

    Returns:
        A :class:`~amortized_ppl.convergence.ReferenceResult`.

    Raises:
        ValueError: If a count is out of range, if an argument (named) contains NaN/Inf, or if
            ``init_params`` does not match the latent sites.

    Warns:
        RuntimeWarning: When a site's split R-hat exceeds
            :data:`~amortized_ppl.convergence.RHAT_THRESHOLD` (naming the site and the value), or
            when there are divergent transitions after warm-up.

    Examples:
        >>> from amortized_ppl.models.linear_regression import design_fn, model_known_noise
        >>> (x,), _ = design_fn(jax.random.key(0), 50, num_features=3)
        >>> y = x @ jnp.array([1.0, -1.0, 0.5])
        >>> result = reference_posterior(jax.random.key(1), model_known_noise, x, y=y)
        >>> result.samples["w"].shape, result.samples["b"].shape
        ((4, 1000, 3), (4, 1000))
    """
    sampler = get_reference_sampler(
        model,
        num_chains=num_chains,
        num_warmup=num_warmup,
        num_samples=num_samples,
        target_accept=target_accept,
        progress=resolve_progress(progress),
        mesh=resolve_mesh(mesh),
    )
    return sampler.sample(key, *args, init_params=init_params, **kwargs)
