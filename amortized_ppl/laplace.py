"""Damped Newton iterations on a log density and the Laplace (Gaussian) approximation at the end.

Amortized guides use it to read the model's joint density directly: a few Newton steps from a
start point give, per data set, a Gaussian that is exact for linear-Gaussian models and a good
base elsewhere; the network then corrects it. Vectorize over data sets with ``jax.vmap``.

Only Cholesky factorizations are used (no eigendecomposition), from :mod:`amortized_ppl.linalg`
(plain JAX; jaxlib's batched CPU kernels can deadlock on 2 cores, see there).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from amortized_ppl.linalg import cho_solve, cholesky

__all__ = ["LaplaceApproximation", "newton_laplace"]

# Step lengths tried at every Newton step; 0 keeps the current point, so no step lowers the density.
_STEP_LENGTHS = (1.0, 0.5, 0.25, 0.1, 0.0)


class LaplaceApproximation(NamedTuple):
    """A Gaussian N(loc, scale_tril scale_tril^T).

    Attributes:
        loc: shape ``(D,)``, the last Newton iterate.
        scale_tril: shape ``(D, D)``, Cholesky factor of the inverse of the (regularized)
            negative Hessian at ``loc``.
        grad_norm: shape ``()``, norm of the gradient at ``loc`` (near 0 at a mode; Inf when the
            density was not finite and the fall-back N(init, I) was returned).
    """

    loc: jax.Array
    scale_tril: jax.Array
    grad_norm: jax.Array


def _precision_cholesky(hessian: jax.Array, min_eigenvalue: float) -> jax.Array:
    """Cholesky factor of -H, or of -H shifted to be safely positive definite where it is not.

    The shift (a Gershgorin bound plus ``min_eigenvalue``) is applied only when the plain
    factorization fails, so a log-concave density keeps its exact curvature.
    """
    precision = -0.5 * (hessian + hessian.T)
    eye = jnp.eye(precision.shape[0], dtype=precision.dtype)
    plain = cholesky(precision)
    off_diagonal = jnp.sum(jnp.abs(precision), axis=1) - jnp.abs(jnp.diag(precision))
    shift = jnp.maximum(jnp.max(off_diagonal - jnp.diag(precision)), 0.0) + min_eigenvalue
    shifted = cholesky(precision + shift * eye)
    return jnp.where(jnp.all(jnp.isfinite(plain)), plain, shifted)


def newton_laplace(
    logdensity_fn: Callable[[jax.Array], jax.Array],
    init: jax.Array,
    *,
    num_steps: int = 3,
    max_step: float = 5.0,
    min_eigenvalue: float = 1e-3,
) -> LaplaceApproximation:
    """Run ``num_steps`` damped Newton steps on ``logdensity_fn`` from ``init``; fit a Laplace.

    Each step solves with the negative Hessian (shifted to be positive definite where the density
    is not log-concave), shortens steps longer than ``max_step`` (a trust region), and takes the
    best of a few step lengths along the direction (a line search that never goes downhill).

    Args:
        logdensity_fn: ``u (D,) -> scalar``.
        init: starting point, shape ``(D,)``.
        num_steps: Newton steps (0 gives the Laplace fit at ``init``).
        max_step: largest Euclidean length of one step.
        min_eigenvalue: regularization added when the negative Hessian is not positive definite.

    Returns:
        A :class:`LaplaceApproximation`.
    """
    grad_fn = jax.grad(logdensity_fn)
    hess_fn = jax.hessian(logdensity_fn)
    lengths = jnp.asarray(_STEP_LENGTHS, init.dtype)

    def step(u, _):
        g = grad_fn(u)
        chol = _precision_cholesky(hess_fn(u), min_eigenvalue)
        delta = cho_solve(chol, g)
        delta = delta * jnp.minimum(1.0, max_step / jnp.maximum(jnp.linalg.norm(delta), 1e-12))
        candidates = u[None, :] + lengths[:, None] * delta[None, :]
        values = jax.vmap(logdensity_fn)(candidates)
        values = jnp.where(jnp.isfinite(values), values, -jnp.inf)
        best = candidates[jnp.argmax(values)]
        return jnp.where(jnp.all(jnp.isfinite(best)), best, u), None

    loc, _ = jax.lax.scan(step, init, None, length=num_steps)
    chol = _precision_cholesky(hess_fn(loc), min_eigenvalue)
    eye = jnp.eye(loc.shape[0], dtype=loc.dtype)
    cov = cho_solve(chol, eye)
    scale_tril = cholesky(0.5 * (cov + cov.T))
    grad_norm = jnp.linalg.norm(grad_fn(loc))
    # A density that is not finite here gives no usable curvature: fall back to N(init, I) and
    # let the caller's network carry the whole posterior.
    finite = jnp.all(jnp.isfinite(scale_tril)) & jnp.all(jnp.isfinite(loc))
    return LaplaceApproximation(
        jnp.where(finite, loc, init),
        jnp.where(finite, scale_tril, eye),
        jnp.where(finite, grad_norm, jnp.inf),
    )
