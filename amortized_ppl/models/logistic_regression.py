"""Bayesian logistic regression: a model without a closed-form posterior.

``w ~ Normal(0, 1)^d``, ``b ~ Normal(0, 1)`` and, inside the ``"data"`` plate,
``y_n ~ Bernoulli(sigmoid(x_n @ w + b))`` with standard-normal covariates. With few observations
(tens) the posterior is visibly skewed, so a Gaussian (Laplace) approximation is biased; with
thousands it is close to Gaussian (Bernstein-von Mises). NUTS is the reference.

:func:`laplace_posterior` is the per-data-set baseline: damped Newton steps on the log joint from
the prior mean and the Gaussian at the mode, vectorized over data sets with ``jax.vmap``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from amortized_ppl.laplace import newton_laplace
from amortized_ppl.models.checks import check_design_shape

__all__ = [
    "PRIOR_SCALE",
    "LaplacePosterior",
    "design_fn",
    "laplace_posterior",
    "log_joint",
    "model",
]

PRIOR_SCALE = 1.0
"""Prior SD of every coefficient."""


def model(x, y=None):
    """Bayesian logistic regression; latent sites ``w`` (``(d,)``) and ``b`` (``()``).

    Args:
        x: Covariates, shape ``(N, d)``.
        y: Binary observations (0/1, any numeric dtype), shape ``(N,)``, or ``None`` to simulate.
    """
    check_design_shape(x, y)
    w = numpyro.sample("w", dist.Normal(0.0, PRIOR_SCALE).expand([x.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, PRIOR_SCALE))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=x @ w + b), obs=y)


def design_fn(key, num_obs: int, num_features: int = 5) -> tuple[tuple, dict]:
    """Covariates of one data set, ``x ~ Normal(0, I)`` of shape ``(num_obs, num_features)``."""
    if int(num_obs) < 1 or int(num_features) < 1:
        raise ValueError(
            f"num_obs and num_features must be >= 1; got {num_obs} and {num_features}."
        )
    return (jax.random.normal(key, (int(num_obs), int(num_features))),), {}


def log_joint(theta: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    """``log p(w, b, y | x)`` for ``theta = [w, b]`` of shape ``(d + 1,)``; a scalar."""
    w, b = theta[:-1], theta[-1]
    logits = x @ w + b
    log_lik = jnp.sum(y * jax.nn.log_sigmoid(logits) + (1.0 - y) * jax.nn.log_sigmoid(-logits))
    log_prior = jnp.sum(dist.Normal(0.0, PRIOR_SCALE).log_prob(theta))
    return log_lik + log_prior


class LaplacePosterior(NamedTuple):
    """Gaussian approximation ``N(mean, cov)`` over ``[w, b]`` (``(d + 1,)``, ``(d + 1, d + 1)``)."""

    mean: jax.Array
    cov: jax.Array


def laplace_posterior(x, y, *, num_steps: int = 20) -> LaplacePosterior:
    """Laplace approximation of the posterior of one data set (vmap it over data sets).

    Args:
        x: Covariates, shape ``(N, d)``.
        y: Binary observations, shape ``(N,)``.
        num_steps: damped Newton steps from the prior mean (the log joint is concave, so they
            converge; 20 is ample).

    Returns:
        A :class:`LaplacePosterior` ordered ``[w_1, ..., w_d, b]``.
    """
    check_design_shape(x, y)
    y = jnp.asarray(y, x.dtype)
    init = jnp.zeros(x.shape[1] + 1, x.dtype)
    fit = newton_laplace(lambda t: log_joint(t, x, y), init, num_steps=num_steps)
    return LaplacePosterior(fit.loc, fit.scale_tril @ fit.scale_tril.T)
