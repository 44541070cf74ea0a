"""Input checks of the reference sampler: finite data, latent sites, initial positions, metric.

Each check runs on the host or at trace time (shapes are static), before any NUTS step, and raises
``ValueError`` naming the argument, what was expected and what came.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions.transforms import biject_to

__all__ = [
    "argument_names",
    "check_finite_arguments",
    "check_finite_tree",
    "check_init_params",
    "check_init_params_type",
    "check_inverse_mass_matrix",
    "check_target_accept",
    "unconstrained_shapes",
]


def check_target_accept(target_accept: Any) -> float:
    """``target_accept`` as a ``float``, or ``ValueError`` unless it lies in ``(0, 1)``."""
    if not 0.0 < float(target_accept) < 1.0:
        raise ValueError(f"target_accept must lie in (0, 1); got {target_accept!r}.")
    return float(target_accept)


def argument_names(model: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Map each model argument to its name in the model's signature (``args[i]`` as fallback).

    ``*args`` of the model are named ``name[i]``; ``**kwargs`` keep their keys.
    """
    try:
        bound = inspect.signature(model).bind_partial(*args, **kwargs)
    except (TypeError, ValueError):
        named = {f"args[{i}]": value for i, value in enumerate(args)}
        named.update(kwargs)
        return named
    named = {}
    parameters = inspect.signature(model).parameters
    for name, value in bound.arguments.items():
        kind = parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            named.update({f"{name}[{i}]": item for i, item in enumerate(value)})
        elif kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        else:
            named[name] = value
    return named


def check_finite_tree(name: str, tree) -> None:
    """Raise ``ValueError`` naming ``name`` when a concrete floating leaf has NaN or Inf.

    Traced leaves, integer and boolean leaves and non-array leaves (strings, ``None``) pass.
    """
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.core.Tracer):
            continue
        if isinstance(leaf, (float, complex)):
            leaf = np.asarray(leaf)
        if not isinstance(leaf, (jax.Array, np.ndarray)):
            continue
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            continue
        if not bool(jnp.all(jnp.isfinite(leaf))):
            raise ValueError(
                f"Argument '{name}' contains NaN or Inf; the reference posterior needs finite "
                "data. Remove or impute the non-finite entries."
            )


def check_finite_arguments(model: Callable, args: tuple, kwargs: dict) -> None:
    """Raise ``ValueError`` naming the first model argument (as the model names it) with NaN/Inf."""
    for name, value in argument_names(model, args, kwargs).items():
        check_finite_tree(name, value)


def unconstrained_shapes(model: Callable, args: tuple, kwargs: dict) -> dict:
    """Trace ``model`` once and return site -> unconstrained ``jax.ShapeDtypeStruct``.

    Runs on the host or at trace time (only shapes are read).

    Raises:
        ValueError: If a latent sample site is discrete (naming it).
    """
    model_trace = handlers.trace(handlers.seed(model, rng_seed=0)).get_trace(*args, **kwargs)
    shapes = {}
    for name, site in model_trace.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if site["fn"].support.is_discrete:
            raise ValueError(
                f"NUTS cannot handle discrete sample site '{name}'; marginalize it out or "
                "observe it."
            )
        shapes[name] = jax.eval_shape(biject_to(site["fn"].support).inv, site["value"])
    return shapes


def check_init_params(positions: dict, expected: dict, num_chains: int) -> None:
    """Check that initial positions match the latent sites, with a leading chain axis.

    Args:
        positions: Initial unconstrained positions, a dict site -> ``(num_chains, *shape)``.
        expected: Site -> unconstrained ``ShapeDtypeStruct``, as :func:`unconstrained_shapes`.
        num_chains: Number of chains.

    Raises:
        ValueError: If the keys differ from the latent sites, or a shape does not match.
    """
    if set(positions) != set(expected):
        raise ValueError(
            f"init_params must be a dict of unconstrained values keyed by the latent sites "
            f"{sorted(expected)}; got keys {sorted(positions)}."
        )
    for site, struct in expected.items():
        want = (num_chains,) + tuple(struct.shape)
        if tuple(positions[site].shape) != want:
            raise ValueError(
                f"init_params['{site}'] must have shape {want} (num_chains={num_chains}, then "
                f"the site's unconstrained shape); got {tuple(positions[site].shape)}."
            )


def check_init_params_type(init_params: Any) -> None:
    """Raise ``ValueError`` unless ``init_params`` is ``None`` or a dict."""
    if init_params is not None and not isinstance(init_params, dict):
        raise ValueError(
            "init_params must be a dict site -> unconstrained array of shape "
            f"(num_chains, ...); got {type(init_params).__name__}."
        )


def check_inverse_mass_matrix(
    inverse_mass_matrix: Any, model: Callable, args: tuple, kwargs: dict
) -> jax.Array:
    """``inverse_mass_matrix`` as an array of shape ``(D,)`` or ``(D, D)``, or ``ValueError``.

    ``D`` is the number of the model's unconstrained latents (all sites raveled together).
    """
    metric = jnp.asarray(inverse_mass_matrix)
    shapes = unconstrained_shapes(model, args, kwargs).values()
    size = sum(int(np.prod(struct.shape)) for struct in shapes)
    if metric.shape not in ((size,), (size, size)):
        raise ValueError(
            f"inverse_mass_matrix: expected shape ({size},) or ({size}, {size}) for the "
            f"model's {size} unconstrained latents, got {metric.shape}."
        )
    return metric
