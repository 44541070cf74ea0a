"""Simulated training data: (latents, data set) pairs from the model's prior predictive.

Each data set is simulated at the largest size of the requested range and then cut to a random
size by a mask. Observations are conditionally independent given the latents (they sit in a plate)
and a design function draws covariate rows independently, so the first ``n`` rows of a data set of
size ``N_max`` are a data set of size ``n`` from the same prior predictive.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from numpyro import handlers

from amortized_ppl.data import DataSpec, bind_arguments, make_tokens
from amortized_ppl.sites import ModelSites

__all__ = ["SimulatedBatch", "build_simulator", "check_num_obs"]

DesignFn = Callable[[jax.Array, int], tuple[tuple, dict]]


class SimulatedBatch(NamedTuple):
    """A batch of simulated data sets.

    Attributes:
        latents: flat unconstrained latents, shape ``(B, D)``.
        tokens: shape ``(B, N_max, token_dim)``.
        mask: shape ``(B, N_max)`` bool; row ``i`` of data set ``b`` is real iff ``i < num_obs[b]``.
        num_obs: shape ``(B,)`` int.
        arguments: the model's bound arguments, observations included; arrays carry a leading
            ``B`` axis, other values are shared.
    """

    latents: jax.Array
    tokens: jax.Array
    mask: jax.Array
    num_obs: jax.Array
    arguments: dict[str, Any]


def check_num_obs(num_obs) -> tuple[int, int]:
    """Validate a number or an inclusive ``(low, high)`` range of observations."""
    if isinstance(num_obs, int):
        num_obs = (num_obs, num_obs)
    try:
        low, high = (int(v) for v in num_obs)
    except (TypeError, ValueError):
        raise ValueError(
            f"num_obs: expected an int or a (low, high) pair of ints, got {num_obs!r}."
        ) from None
    if not 1 <= low <= high:
        raise ValueError(f"num_obs: expected 1 <= low <= high, got ({low}, {high}).")
    return low, high


def call_design(design_fn: DesignFn, key: jax.Array, num_obs: int) -> tuple[tuple, dict]:
    """``design_fn(key, num_obs)``, checked to return the model's ``(args, kwargs)``."""
    out = design_fn(key, num_obs)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], Mapping)
            and isinstance(out[0], (tuple, list))):
        raise TypeError(
            f"design_fn: expected it to return (args, kwargs), the model's inputs for one data "
            f"set without its observations, e.g. ((x,), {{}}); got {type(out).__name__}"
            + (f" of length {len(out)}" if isinstance(out, tuple) else "") + ".")
    return tuple(out[0]), dict(out[1])


def simulate_one(
    key: jax.Array,
    model: Callable,
    sites: ModelSites,
    spec: DataSpec,
    design_fn: DesignFn,
    num_obs: tuple[int, int],
):
    """Simulate one data set of size ``num_obs[1]`` and a random size in the range."""
    design_key, model_key, size_key = jax.random.split(key, 3)
    low, high = num_obs
    args, kwargs = call_design(design_fn, design_key, high)
    bound = bind_arguments(spec.signature, tuple(args), dict(kwargs))
    for arg in spec.observed.values():
        bound[arg] = None
    with handlers.block():  # nothing leaks into a NumPyro program that simulates (e.g. SVI)
        trace = handlers.trace(handlers.seed(model, model_key)).get_trace(**bound)
    for site, arg in spec.observed.items():
        bound[arg] = trace[site]["value"]
    latents = sites.unconstrain({s.name: trace[s.name]["value"] for s in sites.latents})
    tokens = make_tokens(spec, sites, bound)
    n = jax.random.randint(size_key, (), low, high + 1)
    mask = jnp.arange(high) < n
    return latents, tokens, mask, n, bound


def build_simulator(
    model: Callable,
    sites: ModelSites,
    spec: DataSpec,
    design_fn: DesignFn,
    num_obs: tuple[int, int],
) -> Callable[[jax.Array, int], SimulatedBatch]:
    """Return ``simulate(key, batch_size) -> SimulatedBatch`` (traceable; jit it with the step)."""
    num_obs = check_num_obs(num_obs)

    def simulate(key: jax.Array, batch_size: int) -> SimulatedBatch:
        keys = jax.random.split(key, batch_size)
        one = lambda k: simulate_one(k, model, sites, spec, design_fn, num_obs)  # noqa: E731
        latents, tokens, mask, n, bound = eqx.filter_vmap(one)(keys)
        return SimulatedBatch(latents, tokens, mask, n, bound)

    return simulate
