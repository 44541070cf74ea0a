"""A posterior with two modes: a mean seen only through its absolute value.

``theta ~ Normal(0, 3)`` and, inside the ``"data"`` plate, ``y_n ~ Normal(|theta|, 1)``. The data
cannot tell ``theta`` from ``-theta``, so the posterior is symmetric with two modes of weight 1/2
each near ``+-mean(y)``. Closed form: on ``theta > 0`` the posterior is the conjugate Normal
``N(m, v)`` with ``v = 1 / (1/9 + N)``, ``m = v sum(y)``, and it is mirrored on ``theta < 0``:
``p(theta | y) = N(|theta|; m, v) / (2 Phi(m / sqrt(v)))``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import log_ndtr

__all__ = ["PRIOR_SCALE", "FoldedPosterior", "design_fn", "exact_posterior", "model"]

PRIOR_SCALE = 3.0


def model(y=None, num_obs=None):
    """Latent site ``theta`` (``()``); ``y``: ``(N,)``, or ``None`` with ``num_obs``."""
    if y is None and num_obs is None:
        raise ValueError("folded_mean.model: pass the observations y, or num_obs to simulate.")
    theta = numpyro.sample("theta", dist.Normal(0.0, PRIOR_SCALE))
    with numpyro.plate("data", jnp.shape(y)[0] if y is not None else int(num_obs)):
        numpyro.sample("y", dist.Normal(jnp.abs(theta), 1.0), obs=y)


def design_fn(key, num_obs: int) -> tuple[tuple, dict]:
    """No covariates: the data set's size only."""
    del key
    return (), {"num_obs": int(num_obs)}


class FoldedPosterior:
    """The exact posterior: ``N(|theta|; m, v) / (2 Phi(m / sqrt v))`` (batched over data sets).

    Attributes:
        loc, scale: ``m`` and ``sqrt(v)`` of the positive half, shape ``(...)``.
    """

    def __init__(self, loc, scale):
        self.loc, self.scale = loc, scale

    def log_prob(self, theta):
        half = dist.Normal(self.loc, self.scale).log_prob(jnp.abs(theta))
        return half - jnp.log(2.0) - log_ndtr(self.loc / self.scale)

    def sample(self, key, sample_shape=()):
        """Exact draws: the positive half's truncated Normal, then a fair sign."""
        magnitude_key, sign_key = jax.random.split(key)
        shape = tuple(sample_shape) + jnp.shape(self.loc)
        low = (0.0 - self.loc) / self.scale
        z = jax.random.truncated_normal(magnitude_key, low, jnp.inf, shape)
        sign = jnp.where(jax.random.bernoulli(sign_key, 0.5, shape), 1.0, -1.0)
        return sign * (self.loc + self.scale * z)

    @property
    def positive_weight(self):
        """The weight of the mode at ``theta > 0``: 1/2 by symmetry."""
        return jnp.full(jnp.shape(self.loc), 0.5)


def exact_posterior(y) -> FoldedPosterior:
    """The posterior of ``theta`` for observations ``y`` of shape ``(..., N)``."""
    y = jnp.asarray(y, jnp.result_type(float))
    v = 1.0 / (1.0 / PRIOR_SCALE**2 + y.shape[-1])
    return FoldedPosterior(v * jnp.sum(y, axis=-1), jnp.sqrt(v) * jnp.ones(y.shape[:-1]))
