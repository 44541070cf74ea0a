"""sbibm's ``slcp_distractors``: slcp's eight numbers hidden among 92 that carry no information.

``x`` is one row of 100 numbers: slcp's four draws (8 numbers, row order) and 92 distractors from
a fixed mixture of 20 equally weighted multivariate Student-t distributions (2 degrees of
freedom), the 100 then shuffled by a fixed permutation. The posterior is slcp's given the eight
informative numbers, so the reference is :func:`amortized_ppl.models.sbibm.slcp.reference` on
them.

The mixture and the permutation follow sbibm's recipe, from NumPy's legacy generator seeded 42:
means ``15 N(0, 1)`` (``(20, 92)``), per component a scale factor ``3 (tril(Z) + diag(exp(z)))``
with ``Z`` a ``92 x 92`` and ``z`` a 92-vector of standard normals, then a permutation of the 100
coordinates. A factor with a negative diagonal entry has that column's sign flipped: the Student-t
is symmetric, so the distribution is the same, and the factor becomes a valid Cholesky factor.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from amortized_ppl.models.sbibm import slcp
from amortized_ppl.models.sbibm.task import one_row, plate_size

__all__ = ["NUM_DISTRACTORS", "X_DIM", "distractors", "model", "permutation", "reference",
           "signal"]

NUM_DISTRACTORS = 92
NUM_COMPONENTS = 20
DEGREES_OF_FREEDOM = 2.0
SEED = 42
SIGNAL = slcp.NUM_DRAWS * slcp.X_DIM
X_DIM = SIGNAL + NUM_DISTRACTORS


@functools.cache
def _recipe():
    rng = np.random.RandomState(SEED)
    means = 15.0 * rng.randn(NUM_COMPONENTS, NUM_DISTRACTORS)
    factors = []
    for _ in range(NUM_COMPONENTS):
        factor = 3.0 * (np.tril(rng.randn(NUM_DISTRACTORS, NUM_DISTRACTORS))
                        + np.diag(np.exp(rng.randn(NUM_DISTRACTORS))))
        factors.append(factor * np.sign(np.diag(factor))[None, :])
    return means, np.stack(factors), rng.permutation(X_DIM)


def permutation() -> np.ndarray:
    """Position ``j`` of ``x`` holds coordinate ``permutation()[j]`` of (signal, distractors)."""
    return _recipe()[2]


def distractors() -> dist.Distribution:
    """The 92-d distractor distribution: the mixture of Student-t's."""
    means, factors, _ = _recipe()
    components = dist.MultivariateStudentT(DEGREES_OF_FREEDOM, jnp.asarray(means, jnp.float32),
                                           jnp.asarray(factors, jnp.float32))
    weights = jnp.full(NUM_COMPONENTS, 1.0 / NUM_COMPONENTS)
    return dist.MixtureSameFamily(dist.Categorical(probs=weights), components)


def signal(x) -> jax.Array:
    """slcp's observation ``(4, 2)`` inside one row ``x`` (``(1, 100)`` or ``(100,)``)."""
    x = jnp.asarray(x).reshape(-1)
    unshuffled = jnp.zeros(X_DIM).at[permutation()].set(x)
    return unshuffled[:SIGNAL].reshape(slcp.NUM_DRAWS, slcp.X_DIM)


class DistractedSLCP(dist.Distribution):
    """One row: slcp's four draws given ``theta`` and the distractors, shuffled (``(100,)``)."""

    arg_constraints = {"theta": constraints.real_vector}
    support = constraints.real_vector
    reparametrized_params = []

    def __init__(self, theta, *, validate_args=None):
        self.theta = jnp.asarray(theta)
        super().__init__(batch_shape=self.theta.shape[:-1], event_shape=(X_DIM,),
                         validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape
        signal_key, noise_key = jax.random.split(key)
        draws = slcp.gaussian(self.theta).sample(signal_key, (slcp.NUM_DRAWS,) + sample_shape)
        draws = jnp.moveaxis(draws, 0, -2).reshape(shape + (SIGNAL,))
        noise = distractors().sample(noise_key, shape)
        return jnp.concatenate([draws, noise], -1)[..., permutation()]

    def log_prob(self, value):
        unshuffled = jnp.zeros(value.shape).at[..., permutation()].set(value)
        rows = unshuffled[..., :SIGNAL].reshape(value.shape[:-1] + (slcp.NUM_DRAWS, slcp.X_DIM))
        signal_lp = jnp.sum(slcp.gaussian(self.theta[..., None, :]).log_prob(rows), -1)
        return signal_lp + distractors().log_prob(unshuffled[..., SIGNAL:])


def model(x=None, num_obs=1):
    """Latent ``theta`` (``(5,)``) uniform on ``[-3, 3]^5``; ``x``: ``(num_obs, 100)``."""
    n = plate_size("slcp_distractors", x, num_obs, X_DIM)
    theta = numpyro.sample("theta", dist.Uniform(-slcp.BOUND * jnp.ones(5), slcp.BOUND)
                           .to_event(1))
    with numpyro.plate("data", n):
        numpyro.sample("x", DistractedSLCP(theta), obs=x)


def reference(key: jax.Array, x, num_samples: int) -> jax.Array:
    """slcp's reference on the eight informative numbers of one row ``x`` (``(1, 100)``)."""
    return slcp.reference(key, signal(one_row("slcp_distractors", x, X_DIM)), num_samples)
