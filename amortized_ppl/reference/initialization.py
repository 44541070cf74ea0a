"""Initial positions of the reference chains: NumPyro's init strategy, one key per chain.

:func:`build_initial_positions` is a jitted program of its own, separate from the sampler, so that
a cold start (positions from the init strategy) and a warm start (positions given as
``init_params``) share one compiled sampler. :func:`check_finite_start` guards the sampler against
a starting point where the log density is not finite.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from numpyro.infer.util import initialize_model

__all__ = ["build_initial_positions", "check_finite_start"]


def build_initial_positions(
    model: Callable, *, num_chains: int, init_strategy: Callable
) -> Callable[[jax.Array, tuple, dict], dict]:
    """Build ``init_fn(key, args, kwargs) -> positions``, the chains' unconstrained starts.

    Args:
        model: A NumPyro model with continuous latent sites.
        num_chains: Number of chains ``C``; the key is split into one key per chain.
        init_strategy: A NumPyro init strategy, e.g. ``init_to_uniform`` (uniform on
            ``[-2, 2]`` in unconstrained space).

    Returns:
        A jitted function of a key and the model's arguments (array leaves traced, other leaves
        static) returning a dict site -> ``(C, *unconstrained_shape)``. NumPyro's
        ``initialize_model`` also checks the model (discrete sites, invalid supports) and retries
        points where the log density is not finite.

    Examples:
        >>> from numpyro.infer.initialization import init_to_uniform
        >>> from amortized_ppl.models.linear_regression import model
        >>> init_fn = build_initial_positions(model, num_chains=4, init_strategy=init_to_uniform)
        >>> positions = init_fn(jax.random.key(0), (jnp.ones((5, 3)),), {"y": jnp.ones(5)})
        >>> positions["w"].shape, positions["sigma"].shape
        ((4, 3), (4,))
    """

    @eqx.filter_jit
    def init_fn(key, args, kwargs):
        model_info = initialize_model(
            jax.random.split(key, num_chains),
            model,
            init_strategy=init_strategy,
            model_args=args,
            model_kwargs=kwargs,
            dynamic_args=False,
        )
        return model_info.param_info.z

    return init_fn


def check_finite_start(positions: dict, logdensity_fn: Callable) -> dict:
    """Return ``positions`` with a runtime check that each chain's log density is finite.

    Args:
        positions: A dict site -> ``(C, *unconstrained_shape)``.
        logdensity_fn: The unconstrained log density of one position (unbatched).

    Returns:
        ``positions``, unchanged; inside ``jit`` an ``eqx.error_if`` raises when it runs and a
        chain's start has a non-finite log density.
    """
    initial_logdensity = jax.vmap(logdensity_fn)(positions)
    return eqx.error_if(
        positions,
        ~jnp.isfinite(initial_logdensity),
        "reference_posterior: an initial position has a non-finite log density; "
        "pass finite init_params or check the model's supports.",
    )
