"""Damped Newton iterations on a log density and the Laplace (Gaussian) approximation at the end.

Amortized guides use it to read the model's joint density directly: a few Newton steps from a
fixed anchor give, per data set, a Gaussian that is exact for linear-Gaussian models and a good
base elsewhere; the network then corrects it. Vectorize over data sets with ``jax.vmap``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["LaplaceApproximation", "newton_laplace"]


class LaplaceApproximation(NamedTuple):
    """A Gaussian N(loc, scale_tril scale_tril^T).

    Attributes:
        loc: shape ``(D,)``, the last Newton iterate.
        scale_tril: shape ``(D, D)``, Cholesky factor of the inverse (floored) negative Hessian.
        grad_norm: shape ``()``, norm of the gradient at ``loc`` (near 0 at a mode).
    """

    loc: jax.Array
    scale_tril: jax.Array
    grad_norm: jax.Array


def _precision(hessian: jax.Array, min_eigenvalue: float):
    """Eigen-decompose -H with eigenvalues floored, so the step is an ascent direction."""
    sym = -0.5 * (hessian + hessian.T)
    eigvals, eigvecs = jnp.linalg.eigh(sym)
    return jnp.maximum(eigvals, min_eigenvalue), eigvecs


def newton_laplace(
    logdensity_fn: Callable[[jax.Array], jax.Array],
    init: jax.Array,
    *,
    num_steps: int = 3,
    max_step: float = 5.0,
    min_eigenvalue: float = 1e-3,
) -> LaplaceApproximation:
    """Run ``num_steps`` damped Newton steps on ``logdensity_fn`` from ``init``; return the Laplace fit.

    Each step solves with the negative Hessian, its eigenvalues floored at ``min_eigenvalue``
    (a Levenberg-style safeguard where the density is not log-concave), and shortens steps longer
    than ``max_step`` (a trust region). A non-finite iterate stops the iteration where it was.

    Args:
        logdensity_fn: ``u (D,) -> scalar``.
        init: starting point, shape ``(D,)``.
        num_steps: Newton steps (0 gives the Laplace fit at ``init``).
        max_step: largest Euclidean length of one step.
        min_eigenvalue: floor on the eigenvalues of the negative Hessian.

    Returns:
        A :class:`LaplaceApproximation`.
    """
    grad_fn = jax.grad(logdensity_fn)
    hess_fn = jax.hessian(logdensity_fn)

    def step(u, _):
        g, h = grad_fn(u), hess_fn(u)
        eigvals, eigvecs = _precision(h, min_eigenvalue)
        delta = eigvecs @ ((eigvecs.T @ g) / eigvals)
        length = jnp.linalg.norm(delta)
        delta = delta * jnp.minimum(1.0, max_step / jnp.maximum(length, 1e-12))
        new = u + delta
        ok = jnp.all(jnp.isfinite(new))
        return jnp.where(ok, new, u), None

    loc, _ = jax.lax.scan(step, init, None, length=num_steps)
    g, h = grad_fn(loc), hess_fn(loc)
    eigvals, eigvecs = _precision(h, min_eigenvalue)
    cov = (eigvecs / eigvals) @ eigvecs.T
    cov = 0.5 * (cov + cov.T)
    scale_tril = jnp.linalg.cholesky(cov + 1e-9 * jnp.eye(cov.shape[0], dtype=cov.dtype))
    # A density that is not finite at the end gives no usable curvature: fall back to N(init, I)
    # and let the caller's network carry the whole posterior.
    finite = jnp.all(jnp.isfinite(scale_tril)) & jnp.all(jnp.isfinite(loc))
    eye = jnp.eye(loc.shape[0], dtype=loc.dtype)
    return LaplaceApproximation(
        jnp.where(finite, loc, init),
        jnp.where(finite, scale_tril, eye),
        jnp.where(finite, jnp.linalg.norm(g), jnp.inf),
    )
