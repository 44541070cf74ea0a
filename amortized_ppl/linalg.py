"""Small dense linear algebra in plain JAX: Cholesky factorization and triangular solves.

jaxlib 0.10's CPU kernels for batched Cholesky and eigendecompositions (``lapack_spotrf_ffi``,
``lapack_ssyevd_ffi``) split a batch over the same thread pool that runs them, and deadlock on a
2-core machine when two such calls run at once (seen here: every thread waiting, no CPU used).
The Laplace fits of amortized guides factor one small matrix (the latent dimension, usually a few
dozen at most) per data set under ``vmap``, so they use these loop-based versions instead: no
custom calls, the same on every backend, and cheap at these sizes. Each function is jitted, so
eager calls (e.g. an exact posterior per data set in a Python loop) compile once per shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["cho_solve", "cholesky", "solve_lower", "solve_upper_transposed"]


@jax.jit
def cholesky(matrix: jax.Array) -> jax.Array:
    """Lower Cholesky factor ``L`` of a symmetric positive definite ``(D, D)`` matrix.

    Entries are NaN (or Inf) when the matrix is not positive definite, as with
    ``jnp.linalg.cholesky``, so callers can test ``jnp.isfinite``.
    """
    size = matrix.shape[-1]
    rows = jnp.arange(size)

    def column(j, factor):
        # Columns j.. of `factor` are still zero, so full-row products use columns < j only.
        pivot = jnp.sqrt(matrix[j, j] - factor[j] @ factor[j])
        values = (matrix[:, j] - factor @ factor[j]) / pivot
        values = jnp.where(rows > j, values, 0.0).at[j].set(pivot)
        return factor.at[:, j].set(values)

    return jax.lax.fori_loop(0, size, column, jnp.zeros_like(matrix))


@jax.jit
def solve_lower(factor: jax.Array, rhs: jax.Array) -> jax.Array:
    """Solve ``L x = b`` for lower-triangular ``L (D, D)``; ``b`` is ``(D,)`` or ``(D, K)``."""

    def row(i, x):
        return x.at[i].set((rhs[i] - factor[i] @ x) / factor[i, i])

    return jax.lax.fori_loop(0, factor.shape[-1], row, jnp.zeros_like(rhs))


@jax.jit
def solve_upper_transposed(factor: jax.Array, rhs: jax.Array) -> jax.Array:
    """Solve ``L^T x = b`` for lower-triangular ``L (D, D)``; ``b`` is ``(D,)`` or ``(D, K)``."""
    size = factor.shape[-1]

    def row(k, x):
        i = size - 1 - k
        return x.at[i].set((rhs[i] - factor[:, i] @ x) / factor[i, i])

    return jax.lax.fori_loop(0, size, row, jnp.zeros_like(rhs))


@jax.jit
def cho_solve(factor: jax.Array, rhs: jax.Array) -> jax.Array:
    """Solve ``(L L^T) x = b`` given the lower Cholesky factor ``L``."""
    return solve_upper_transposed(factor, solve_lower(factor, rhs))
