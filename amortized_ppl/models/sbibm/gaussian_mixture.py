"""sbibm's ``gaussian_mixture``: a 2-d location seen through a broad and a narrow Gaussian.

``theta ~ Uniform(-10, 10)^2``; ``x | theta ~ 0.5 Normal(theta, I) + 0.5 Normal(theta, 0.01 I)``
(scales 1 and 0.1), one row. The likelihood is symmetric in ``x - theta``, so for one row the
posterior is the same mixture centred at ``x``, truncated to the prior's box: drawn exactly by
rejection.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from amortized_ppl.models.sbibm.task import one_row, plate_size, rejection

__all__ = ["BOUND", "DIM", "SCALES", "model", "reference"]

DIM = 2
BOUND = 10.0
SCALES = (1.0, 0.1)


def _mixture(center) -> dist.Distribution:
    scales = jnp.asarray(SCALES)[:, None] * jnp.ones(DIM)
    components = dist.Normal(jnp.broadcast_to(center[..., None, :], center.shape[:-1] + (2, DIM)),
                             scales).to_event(1)
    return dist.MixtureSameFamily(dist.Categorical(probs=jnp.array([0.5, 0.5])), components)


def model(x=None, num_obs=1):
    """Latent ``theta`` (``(2,)``) uniform on ``[-10, 10]^2``; ``x``: ``(num_obs, 2)``."""
    n = plate_size("gaussian_mixture", x, num_obs, DIM)
    theta = numpyro.sample("theta", dist.Uniform(-BOUND * jnp.ones(DIM), BOUND).to_event(1))
    with numpyro.plate("data", n):
        numpyro.sample("x", _mixture(theta), obs=x)


def reference(key: jax.Array, x, num_samples: int) -> jax.Array:
    """``num_samples`` exact posterior draws for one row ``x`` (``(1, 2)``), by rejection."""
    row = one_row("gaussian_mixture", x, DIM)
    return rejection(key, _mixture(row).sample, lambda d: jnp.all(jnp.abs(d) <= BOUND, -1),
                     num_samples, "gaussian_mixture")
