"""Robust regression with unknown scale and degrees of freedom: a heavy-tailed likelihood.

``w ~ Normal(0, 1)^d``, ``b ~ Normal(0, 1)``, ``sigma ~ HalfNormal(1)``, ``nu ~ Gamma(2, 0.1)``
(the prior of Juarez & Steel, 2010, mean 20) and, inside the ``"data"`` plate,
``y_n ~ StudentT(nu, x_n @ w + b, sigma)``. With tens of observations ``nu`` is barely identified
(its posterior is wide and skewed in log space) and ``sigma`` and ``nu`` are correlated, which a
Gaussian approximation misses. NUTS is the reference.
"""

from __future__ import annotations

import jax
import numpyro
import numpyro.distributions as dist

from amortized_ppl.models.checks import check_design_shape

__all__ = ["design_fn", "model"]


def model(x, y=None):
    """Latent sites ``w`` (``(d,)``), ``b``, ``sigma`` and ``nu`` (``()``); ``x``: ``(N, d)``."""
    check_design_shape(x, y)
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    nu = numpyro.sample("nu", dist.Gamma(2.0, 0.1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.StudentT(nu, x @ w + b, sigma), obs=y)


def design_fn(key, num_obs: int, num_features: int = 2) -> tuple[tuple, dict]:
    """Covariates ``x ~ Normal(0, I)`` of shape ``(num_obs, num_features)``."""
    return (jax.random.normal(key, (int(num_obs), int(num_features))),), {}
