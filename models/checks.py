"""Input checks shared by the models of the zoo."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = [
    "as_float",
    "check_design_shape",
    "check_finite",
    "check_last_axis",
    "check_positive_float",
    "check_positive_int",
]


def check_design_shape(x, y) -> None:
    """Raise at trace time when ``x`` is not ``(N, d)`` or ``y`` is not ``None`` or ``(N,)``."""
    if jnp.ndim(x) != 2:
        raise ValueError(f"x must be a 2-D array of shape (N, d); got shape {jnp.shape(x)}.")
    if y is not None and jnp.shape(y) != (jnp.shape(x)[0],):
        raise ValueError(
            f"y must be a 1-D array with one entry per row of x, shape ({jnp.shape(x)[0]},); "
            f"got shape {jnp.shape(y)}."
        )


def as_float(value) -> jax.Array:
    """``value`` as a JAX array of the default float dtype unless it is floating already."""
    array = jnp.asarray(value)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        array = array.astype(jnp.result_type(float))
    return array


def check_finite(array: jax.Array, name: str) -> jax.Array:
    """Raise ``ValueError`` on NaN/Inf when concrete; inside ``jit``/``vmap`` use ``error_if``."""
    message = f"{name} must be finite; got NaN or Inf entries."
    if isinstance(array, jax.core.Tracer):
        return eqx.error_if(array, ~jnp.all(jnp.isfinite(array)), message)
    if not bool(jnp.all(jnp.isfinite(array))):
        raise ValueError(message)
    return array


def check_positive_float(value, name: str) -> float:
    """``value`` as a Python float, or ``ValueError`` unless it is positive and finite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive finite float; got {value!r}.") from None
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a positive finite float; got {value!r}.")
    return number


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """``value``, or ``ValueError`` unless it is an int (not a bool) of at least ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}.")
    return value


def check_last_axis(x: jax.Array, dim: int, name: str = "x") -> None:
    """Raise unless ``x`` has shape ``(..., dim)``."""
    if x.ndim < 1 or x.shape[-1] != dim:
        raise ValueError(f"{name} must have shape (..., {dim}); got shape {x.shape}.")
