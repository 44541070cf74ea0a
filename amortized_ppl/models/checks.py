"""Shape checks shared by the models of the zoo (value checks live in ``amortized_ppl._checks``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "as_float",
    "check_design_shape",
    "check_last_axis",
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





def check_last_axis(x: jax.Array, dim: int, name: str = "x") -> None:
    """Raise unless ``x`` has shape ``(..., dim)``."""
    if x.ndim < 1 or x.shape[-1] != dim:
        raise ValueError(f"{name} must have shape (..., {dim}); got shape {x.shape}.")
