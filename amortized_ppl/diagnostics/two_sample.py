"""What the two-sample checks share: draw validation, batching over data sets, standardization.

Draws are flat arrays ``x`` of shape ``(..., n, D)`` (a guide's) and ``y`` of shape ``(..., m, D)``
(the reference); the leading axes ``...`` (typically data sets) must agree and every result has
shape ``(...)``. Each check first standardizes every dimension by the reference ``y``'s mean and
SD, so that a dimension counts the same whatever its scale or units. Shape and argument errors
are raised at trace time; NaN / Inf draws are reported eagerly (by :func:`check_draws_finite`)
whenever the arrays are concrete. Used by :mod:`~amortized_ppl.diagnostics.mmd`,
:mod:`~amortized_ppl.diagnostics.c2st` and :mod:`~amortized_ppl.diagnostics.distances`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from amortized_ppl.diagnostics.metrics import gaussian_moments_from_draws

__all__ = [
    "as_draws",
    "batch_keys",
    "check_count",
    "check_draws_finite",
    "check_pair",
    "over_batch",
    "random_order",
    "standardize",
]

_SHAPE_ERROR = "{name}: expected shape {expected}, got {got}."


def check_draws_finite(draws: Any, name: str = "draws") -> None:
    """Raise if draws ``(..., S, D)`` hold NaN or Inf, naming the data sets that do.

    Eager only: a traced array (inside ``jit``) cannot be inspected and is passed over silently,
    so call this before jitting when the draws come from an untrusted source.

    Args:
        draws: Draws of shape ``(..., S, D)``; the leading axes index data sets.
        name: The argument's name, used in the message.

    Raises:
        ValueError: if any entry is NaN or Inf; the message gives the indices of the offending
            data sets (the first five) and how many there are.
    """
    if isinstance(draws, jax.core.Tracer):
        return
    values = np.asarray(draws)
    if values.ndim < 2 or not np.issubdtype(values.dtype, np.inexact):
        return  # shapes are the shape checks' business; integers cannot be NaN
    is_bad = ~np.all(np.isfinite(values), axis=(-2, -1))
    if not np.any(is_bad):
        return
    if values.ndim == 2:
        raise ValueError(f"{name} holds NaN or Inf values.")
    bad = [tuple(int(i) for i in index) for index in np.argwhere(is_bad)]
    shown = ", ".join(str(index) for index in bad[:5]) + (", ..." if len(bad) > 5 else "")
    raise ValueError(
        f"{name} holds NaN or Inf values in {len(bad)} of {is_bad.size} data sets, at batch "
        f"indices {shown}."
    )


def as_draws(value: Any, name: str) -> jax.Array:
    value = jnp.asarray(value)
    if value.ndim < 2:
        raise ValueError(_SHAPE_ERROR.format(name=name, expected="(..., S, D)", got=value.shape))
    if not jnp.issubdtype(value.dtype, jnp.floating):
        value = value.astype(jnp.result_type(float))
    return value


def check_pair(
    x: Any, y: Any, *, min_draws: int, names: tuple[str, str] = ("x", "y"), why: str = ""
) -> tuple[jax.Array, jax.Array]:
    """Check two draw arrays against each other; return them as floating arrays."""
    x, y = as_draws(x, names[0]), as_draws(y, names[1])
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same number of dimensions D (last axis); "
            f"got shapes {x.shape} and {y.shape}."
        )
    if x.shape[:-2] != y.shape[:-2]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same leading (data set) axes; got "
            f"{x.shape[:-2]} and {y.shape[:-2]} (from shapes {x.shape} and {y.shape})."
        )
    for value, name in zip((x, y), names):
        if value.shape[-2] < min_draws:
            raise ValueError(
                f"{name}: expected at least {min_draws} draws (axis -2){why}, got "
                f"{value.shape[-2]} (shape {value.shape})."
            )
        check_draws_finite(value, name)
    dtype = jnp.result_type(x.dtype, y.dtype)
    return x.astype(dtype), y.astype(dtype)


def check_count(value: int, name: str, minimum: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}.")
    return int(value)




def over_batch(fn: Callable, batch_shape: tuple[int, ...], *arrays: Any) -> Any:
    """Apply ``fn`` (one data set) to every batch element with ``vmap``; keep the batch shape."""
    size = math.prod(batch_shape)
    flat = [a.reshape((size,) + a.shape[len(batch_shape) :]) for a in arrays]
    out = jax.vmap(fn)(*flat)
    return jax.tree.map(lambda o: o.reshape(batch_shape + o.shape[1:]), out)


def batch_keys(key: PRNGKeyArray, batch_shape: tuple[int, ...]) -> PRNGKeyArray:
    """One key per data set: ``split(key, B)`` over the flattened batch; ``key`` if unbatched."""
    if not batch_shape:
        return key
    keys = jax.random.split(key, math.prod(batch_shape))
    return keys.reshape(batch_shape + keys.shape[1:])


def random_order(key: PRNGKeyArray, shape: int | tuple[int, ...]) -> jax.Array:
    """Random permutations of ``range(shape[-1])``, independent along leading axes.

    The argsort of uniform draws: one random draw and one sort, which compiles much faster than
    ``jax.random.permutation`` (several sort rounds, each with fresh random bits). Ties among the
    float32 uniforms keep their input order, a bias far below what a permutation test resolves.
    """
    return jnp.argsort(jax.random.uniform(key, shape), axis=-1)


def standardize(
    x: Float[Array, "n d"], y: Float[Array, "m d"]
) -> tuple[Float[Array, "n d"], Float[Array, "m d"]]:
    """Centre and scale both samples by the reference ``y``'s mean and SD (ddof=1) per dimension.

    A constant reference dimension (SD 0) is only centred: dividing by 0 would turn every
    distance into NaN.
    """
    mean, sd = gaussian_moments_from_draws(y)
    sd = jnp.where(sd > 0, sd, 1.0)
    return (x - mean) / sd, (y - mean) / sd
