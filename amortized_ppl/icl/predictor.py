"""The predictor protocol that prequential coding reads, and the exact Bayesian linear predictor.

A *predictor* is any callable

    ``log_predictive(context_x, context_y, context_mask, query_x, query_y) -> log_prob``

on one unbatched task: ``context_x (n, d)``, ``context_y (n,)``, ``context_mask (n,)`` bool
(False rows are padding and must be ignored), ``query_x (m, d)``, ``query_y (m,)``; it returns
``(m,)`` log densities ``log p(query_y[j] | query_x[j], context)``, each query predicted on its
own. It must be a pure JAX function so that ``jax.vmap`` maps it over tasks or over prefixes.

:func:`bayesian_linear_predictor` is the exact posterior predictive of Bayesian linear
regression with known noise (``y = [x, 1] @ w + sigma eps``, ``w ~ N(0, prior_scale^2 I)``):

    ``P = I / prior_scale^2 + Z^T M Z / sigma^2``, ``m = P^{-1} Z^T M y / sigma^2``,
    ``y_q | x_q, D ~ N(z_q @ m, sigma^2 + z_q^T P^{-1} z_q)``

with ``Z = [x, 1]`` and ``M`` the diagonal of the mask. Its prequential code length is the
negative log evidence exactly (the chain rule of probability).

References:
    Bishop, C. M. (2006). *Pattern Recognition and Machine Learning*, section 3.3.2 (the
    predictive distribution).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from amortized_ppl._checks import check_positive_float
from amortized_ppl.linalg import cho_solve, cholesky

__all__ = [
    "LOG_SCALE_MIN",
    "LogPredictiveFn",
    "as_log_predictive",
    "bayesian_linear_predictor",
    "check_task_inputs",
    "gaussian_head",
    "gaussian_log_density",
]

LogPredictiveFn = Callable[..., jax.Array]
"""``(context_x, context_y, context_mask, query_x, query_y) -> (m,)`` log densities."""

_EXACT = jax.lax.Precision.HIGHEST


def gaussian_log_density(y, mean, log_scale):
    """``log N(y; mean, exp(log_scale)^2)``, elementwise."""
    z = (y - mean) * jnp.exp(-log_scale)
    return -0.5 * z**2 - log_scale - 0.5 * jnp.log(2.0 * jnp.pi)


LOG_SCALE_MIN = -7.0
"""The learners' least predictive log-SD (a soft floor, so noise-free tasks cannot diverge)."""


def gaussian_head(raw):
    """Split a network's ``(..., 2)`` output into ``(mean, log_scale)``, ``log_scale`` softly
    bounded below by :data:`LOG_SCALE_MIN`."""
    return raw[..., 0], LOG_SCALE_MIN + jax.nn.softplus(raw[..., 1] - LOG_SCALE_MIN)


def check_task_inputs(x_dim: int, context_x, context_y, context_mask, query_x) -> None:
    """Raise ``ValueError`` unless the arrays are one unbatched task of input dimension ``x_dim``."""
    n = context_x.shape[0] if context_x.ndim == 2 else None
    if context_x.ndim != 2 or context_x.shape[1] != x_dim or n == 0:
        raise ValueError(
            f"context_x: expected shape (n >= 1, {x_dim}), got {context_x.shape}; use jax.vmap "
            f"for a batch of tasks."
        )
    if context_y.shape != (n,):
        raise ValueError(f"context_y: expected shape ({n},), got {context_y.shape}.")
    if context_mask.shape != (n,) or context_mask.dtype != jnp.bool_:
        raise ValueError(
            f"context_mask: expected a boolean array of shape ({n},), got {context_mask.dtype} "
            f"of shape {context_mask.shape}."
        )
    if query_x.ndim != 2 or query_x.shape[1] != x_dim:
        raise ValueError(f"query_x: expected shape (m, {x_dim}), got {query_x.shape}.")


def as_log_predictive(moments_fn) -> LogPredictiveFn:
    """The predictor of a Gaussian learner ``moments_fn(context_x, context_y, context_mask,
    query_x) -> (mean, log_scale)`` (every learner of this package is one)."""

    def log_predictive(context_x, context_y, context_mask, query_x, query_y):
        mean, log_scale = moments_fn(context_x, context_y, context_mask, query_x)
        return gaussian_log_density(query_y, mean, log_scale)

    return log_predictive


def _with_bias(x):
    return jnp.concatenate([x, jnp.ones(x.shape[:-1] + (1,), x.dtype)], axis=-1)


def bayesian_linear_predictor(
    noise_scale: float, *, prior_scale: float = 1.0, return_moments: bool = False
) -> LogPredictiveFn:
    """Build the exact posterior predictive of Bayesian linear regression with known noise.

    Args:
        noise_scale: the observation noise SD ``sigma`` (positive; use a small value such as
            1e-3 for the noise-free tasks, where the exact predictor is the limit).
        prior_scale: the prior SD of every coefficient (1 for
            :func:`amortized_ppl.icl.tasks.linear_regression`).
        return_moments: build ``moments(context_x, context_y, context_mask, query_x) ->
            (mean, log_scale)`` instead, each ``(m,)`` (the form the learners share).

    Returns:
        A predictor (see the module docstring), or the moments function.

    Examples:
        >>> predict = bayesian_linear_predictor(0.1)
        >>> x, y = jnp.zeros((5, 1)), jnp.zeros(5)
        >>> predict(x, y, jnp.ones(5, bool), x[:2], y[:2]).shape
        (2,)
    """
    sigma = check_positive_float(noise_scale, "noise_scale")
    prior = check_positive_float(prior_scale, "prior_scale")

    def moments(context_x, context_y, context_mask, query_x):
        if context_x.ndim != 2 or query_x.ndim != 2 or query_x.shape[1] != context_x.shape[1]:
            raise ValueError(
                f"context_x, query_x: expected (n, d) and (m, d) arrays, got shapes "
                f"{context_x.shape} and {query_x.shape}."
            )
        design = _with_bias(context_x) * context_mask[:, None]
        num_params = design.shape[1]
        precision = (
            jnp.matmul(design.T, design, precision=_EXACT) / sigma**2
            + jnp.eye(num_params, dtype=design.dtype) / prior**2
        )
        chol = cholesky(precision)
        rhs = jnp.matmul(design.T, jnp.where(context_mask, context_y, 0.0), precision=_EXACT)
        mean_w = cho_solve(chol, rhs / sigma**2)
        queries = _with_bias(query_x)
        mean = jnp.matmul(queries, mean_w, precision=_EXACT)
        spread = jax.vmap(lambda z: z @ cho_solve(chol, z))(queries)
        return mean, 0.5 * jnp.log(sigma**2 + spread)

    def log_predictive(context_x, context_y, context_mask, query_x, query_y):
        mean, log_scale = moments(context_x, context_y, context_mask, query_x)
        return gaussian_log_density(query_y, mean, log_scale)

    return moments if return_moments else log_predictive
