"""The shared set-up of the iterative tests: an untrained guide on the known-noise regression."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl.guides import (
    AutoIterativeAmortizedMultivariateNormal,
    AutoIterativeAmortizedNormal,
)
from amortized_ppl.models.linear_regression import exact_posterior, model_known_noise
from tests.helpers import small_design


@functools.lru_cache(maxsize=None)
def linear_guide(full_rank=True):
    """An untrained iterative guide (its network outputs zeros: the base update) for the
    known-noise regression, whose Gaussian posterior the base update reaches in one pass."""
    cls = AutoIterativeAmortizedMultivariateNormal if full_rank else AutoIterativeAmortizedNormal
    guide = cls(model_known_noise, batch_size=64, num_passes=1, min_steps=2)
    guide.setup(jax.random.key(0), small_design, (16, 64))
    return guide, guide.init_params()


def data(num_obs, seed=0):
    (x,), _ = small_design(jax.random.key(seed), num_obs)
    w = jnp.array([0.5, -1.0, 0.3])
    noise = 0.5 * jax.random.normal(jax.random.key(seed + 1), (num_obs,))
    return x, x @ w + 0.2 + noise


def errors(loc, scale_tril, x, y):
    exact = exact_posterior(x, y)
    sd = jnp.sqrt(jnp.diag(exact.cov))
    mean_error = float(jnp.max(jnp.abs(loc - exact.mean) / sd))
    ratio = np.asarray(jnp.sqrt(jnp.sum(scale_tril**2, axis=-1)) / sd)
    return mean_error, ratio
