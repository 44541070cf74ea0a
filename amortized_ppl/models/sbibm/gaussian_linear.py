"""sbibm's ``gaussian_linear`` and ``gaussian_linear_uniform``: a 10-d mean seen in Gaussian noise.

``theta ~ Normal(0, 0.1 I)`` (``gaussian_linear``) or ``Uniform(-1, 1)^10``
(``gaussian_linear_uniform``); ``x | theta ~ Normal(theta, 0.1 I)`` (variances 0.1), one row per
data set as sbibm defines it (more rows are allowed: the same model, a larger data set). Both
posteriors are closed form: with ``n`` rows of mean ``xbar``, ``Normal(n xbar / (n + 1), 0.1 / (n +
1))`` per coordinate under the Gaussian prior, and ``Normal(xbar, 0.1 / n)`` truncated to
``[-1, 1]`` per coordinate under the uniform one.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from amortized_ppl.models.sbibm.task import plate_size

__all__ = ["DIM", "VARIANCE", "model", "model_uniform", "posterior", "posterior_uniform",
           "reference", "reference_uniform"]

DIM = 10
VARIANCE = 0.1


def _likelihood(theta, x, n):
    with numpyro.plate("data", n):
        numpyro.sample("x", dist.Normal(theta, math.sqrt(VARIANCE)).to_event(1), obs=x)


def model(x=None, num_obs=1):
    """Latent ``theta`` (``(10,)``) with prior ``Normal(0, 0.1 I)``; ``x``: ``(num_obs, 10)``."""
    n = plate_size("gaussian_linear", x, num_obs, DIM)
    theta = numpyro.sample("theta", dist.Normal(jnp.zeros(DIM), math.sqrt(VARIANCE)).to_event(1))
    _likelihood(theta, x, n)


def model_uniform(x=None, num_obs=1):
    """Latent ``theta`` (``(10,)``) with prior ``Uniform(-1, 1)^10``; ``x``: ``(num_obs, 10)``."""
    n = plate_size("gaussian_linear_uniform", x, num_obs, DIM)
    theta = numpyro.sample("theta", dist.Uniform(-jnp.ones(DIM), 1.0).to_event(1))
    _likelihood(theta, x, n)


def posterior(x) -> dist.Distribution:
    """The exact posterior of :func:`model` given ``x`` (``(n, 10)``)."""
    x = jnp.asarray(x)
    n = x.shape[0]
    return dist.Normal(jnp.sum(x, 0) / (n + 1), math.sqrt(VARIANCE / (n + 1))).to_event(1)


def posterior_uniform(x) -> dist.Distribution:
    """The exact posterior of :func:`model_uniform` given ``x`` (``(n, 10)``)."""
    x = jnp.asarray(x)
    n = x.shape[0]
    return dist.TruncatedNormal(jnp.mean(x, 0), math.sqrt(VARIANCE / n), low=-1.0,
                                high=1.0).to_event(1)


def reference(key: jax.Array, x, num_samples: int) -> jax.Array:
    """``num_samples`` exact posterior draws of :func:`model`."""
    return posterior(x).sample(key, (num_samples,))


def reference_uniform(key: jax.Array, x, num_samples: int) -> jax.Array:
    """``num_samples`` exact posterior draws of :func:`model_uniform`."""
    return posterior_uniform(x).sample(key, (num_samples,))
