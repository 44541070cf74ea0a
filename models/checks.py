"""Input checks shared by the regression models."""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["check_design_shape"]


def check_design_shape(x, y) -> None:
    """Raise at trace time when ``x`` is not ``(N, d)`` or ``y`` is not ``None`` or ``(N,)``."""
    if jnp.ndim(x) != 2:
        raise ValueError(f"x must be a 2-D array of shape (N, d); got shape {jnp.shape(x)}.")
    if y is not None and jnp.shape(y) != (jnp.shape(x)[0],):
        raise ValueError(
            f"y must be a 1-D array with one entry per row of x, shape ({jnp.shape(x)[0]},); "
            f"got shape {jnp.shape(y)}."
        )
