"""sbibm's ``bernoulli_glm``: a spiking neuron's filter, seen through its summary statistics.

``theta = (beta_0, beta_1..beta_9)``: an offset and a 9-tap temporal filter, with prior
``Normal(0, 2)`` on the offset and, on the filter, a smoothness prior of precision ``F^T F`` where
``F = D D + diag(sqrt(i / 9))``, ``D`` the first-difference matrix (``1`` on the diagonal,
``-1`` below it), ``i = 0..8``. Over ``T = 100`` time bins a white-noise stimulus gives the design
matrix ``V`` (``(100, 10)``: a column of ones, then the stimulus lagged by 0..8 bins, zero before
the start), spikes ``y_t ~ Bernoulli(sigmoid(V_t theta))``, and ``x = V^T y`` (10 numbers: the
spike count and the spike-triggered sums).

The stimulus follows sbibm's recipe (NumPy's legacy generator, seed 42, 100 standard normals).
``x`` is sufficient: ``log p(y | theta) = theta . x - sum_t softplus(V_t theta)``, so
:class:`SpikeSummary`'s log density is that expression, exact in ``theta`` and missing only
``log`` of the number of spike trains with summary ``x`` (constant in ``theta``: posteriors are
exact, evidences are not). The reference is NUTS (the posterior is log-concave).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from amortized_ppl.models.sbibm.task import check_nuts, plate_size
from amortized_ppl.reference import reference_posterior

__all__ = ["NUM_BINS", "STIMULUS_SEED", "SpikeSummary", "design_matrix", "model",
           "prior_precision", "reference"]

DIM = 10
NUM_BINS = 100
NUM_TAPS = 9
STIMULUS_SEED = 42


def prior_precision() -> jax.Array:
    """The prior's ``(10, 10)`` precision: ``1/2`` for the offset, ``F^T F`` for the filter."""
    d = jnp.eye(NUM_TAPS) - jnp.eye(NUM_TAPS, k=-1)
    f = d @ d + jnp.diag(jnp.sqrt(jnp.arange(NUM_TAPS) / NUM_TAPS))
    return jnp.zeros((DIM, DIM)).at[0, 0].set(0.5).at[1:, 1:].set(f.T @ f)


def design_matrix() -> jax.Array:
    """``V`` (``(100, 10)``): ones, then the white-noise stimulus lagged by 0..8 bins."""
    stimulus = jnp.asarray(np.random.RandomState(STIMULUS_SEED).randn(NUM_BINS), jnp.float32)
    padded = jnp.concatenate([jnp.zeros(NUM_TAPS - 1), stimulus])
    lags = jnp.stack([padded[NUM_TAPS - 1 - k:NUM_TAPS - 1 - k + NUM_BINS]
                      for k in range(NUM_TAPS)], -1)
    return jnp.concatenate([jnp.ones((NUM_BINS, 1)), lags], -1)


class SpikeSummary(dist.Distribution):
    """``x = V^T y`` with ``y_t ~ Bernoulli(sigmoid(V_t theta))`` (event ``(10,)``)."""

    arg_constraints = {"theta": constraints.real_vector}
    support = constraints.real_vector
    reparametrized_params = []

    def __init__(self, theta, *, validate_args=None):
        self.theta = jnp.asarray(theta)
        super().__init__(batch_shape=self.theta.shape[:-1], event_shape=(DIM,),
                         validate_args=validate_args)

    def _logits(self):
        return self.theta @ design_matrix().T  # (..., T)

    def sample(self, key, sample_shape=()):
        logits = jnp.broadcast_to(self._logits(), sample_shape + self.batch_shape + (NUM_BINS,))
        spikes = jax.random.bernoulli(key, jax.nn.sigmoid(logits)).astype(float)
        return spikes @ design_matrix()

    def log_prob(self, value):
        return jnp.sum(self.theta * value, -1) - jnp.sum(jax.nn.softplus(self._logits()), -1)


def model(x=None, num_obs=1):
    """Latent ``theta`` (``(10,)``) with the smoothness prior; ``x``: ``(num_obs, 10)``."""
    n = plate_size("bernoulli_glm", x, num_obs, DIM)
    theta = numpyro.sample("theta", dist.MultivariateNormal(
        jnp.zeros(DIM), precision_matrix=prior_precision()))
    with numpyro.plate("data", n):
        numpyro.sample("x", SpikeSummary(theta), obs=x)


def reference(key: jax.Array, x, num_samples: int, *, num_chains: int = 4,
              num_warmup: int = 1000) -> jax.Array:
    """``num_samples`` NUTS draws (split R-hat <= 1.01, at most 0.1% divergent transitions, else
    :class:`~amortized_ppl.models.sbibm.task.ReferenceCheckError`)."""
    chain_key, order_key = jax.random.split(key)
    result = reference_posterior(chain_key, model, num_chains=num_chains, num_warmup=num_warmup,
                                 num_samples=-(-num_samples // num_chains), x=jnp.asarray(x))
    check_nuts("bernoulli_glm", result)
    theta = result.samples["theta"].reshape(-1, DIM)
    return jax.random.permutation(order_key, theta)[:num_samples]
