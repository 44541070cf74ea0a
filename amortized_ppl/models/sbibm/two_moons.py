"""sbibm's ``two_moons``: a 2-d parameter seen through a crescent, a posterior of two moons.

``theta ~ Uniform(-1, 1)^2``. The simulator draws an angle ``a ~ Uniform(-pi/2, pi/2)`` and a
radius ``r ~ Normal(0.1, 0.01)``, the point ``p = (r cos a + 0.25, r sin a)``, and returns
``x = p + (-|theta_0 + theta_1| / sqrt 2, (theta_1 - theta_0) / sqrt 2)``.

:class:`CrescentNoise` is ``p``'s distribution with a density (``r`` and ``a`` are polar
coordinates of ``p - (0.25, 0)``, so its log density is ``log N(r; 0.1, 0.01) - log(pi r)`` on the
right half-plane), which makes the task a NumPyro model with a likelihood. The posterior is exact
by inversion (as sbibm computes it): draw ``p``, solve ``x - p`` for ``theta`` on either branch of
the absolute value (each with probability 1/2: the map is linear with the same Jacobian on both),
keep the draws inside the prior's box.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from amortized_ppl.models.sbibm.task import one_row, plate_size, rejection

__all__ = ["CrescentNoise", "model", "reference"]

DIM = 2
RADIUS = (0.1, 0.01)
OFFSET = 0.25


class CrescentNoise(dist.Distribution):
    """The crescent ``p = (r cos a + 0.25, r sin a)`` shifted by ``loc`` (event ``(2,)``)."""

    arg_constraints = {"loc": constraints.real_vector}
    support = constraints.real_vector
    reparametrized_params = []

    def __init__(self, loc, *, validate_args=None):
        self.loc = jnp.asarray(loc)
        super().__init__(batch_shape=self.loc.shape[:-1], event_shape=(DIM,),
                         validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape
        angle_key, radius_key = jax.random.split(key)
        a = jax.random.uniform(angle_key, shape, minval=-math.pi / 2, maxval=math.pi / 2)
        r = RADIUS[0] + RADIUS[1] * jax.random.normal(radius_key, shape)
        p = jnp.stack([r * jnp.cos(a) + OFFSET, r * jnp.sin(a)], -1)
        return p + self.loc

    def log_prob(self, value):
        d = value - self.loc - jnp.array([OFFSET, 0.0])
        r = jnp.sqrt(jnp.sum(d ** 2, -1))
        log_radius = dist.Normal(*RADIUS).log_prob(r)
        inside = (d[..., 0] > 0) & (r > 0)
        return jnp.where(inside, log_radius - jnp.log(math.pi * jnp.where(inside, r, 1.0)),
                         -jnp.inf)


def _shift(theta):
    return jnp.stack([-jnp.abs(theta[..., 0] + theta[..., 1]) / math.sqrt(2.0),
                      (theta[..., 1] - theta[..., 0]) / math.sqrt(2.0)], -1)


def model(x=None, num_obs=1):
    """Latent ``theta`` (``(2,)``) uniform on ``[-1, 1]^2``; ``x``: ``(num_obs, 2)``."""
    n = plate_size("two_moons", x, num_obs, DIM)
    theta = numpyro.sample("theta", dist.Uniform(-jnp.ones(DIM), 1.0).to_event(1))
    with numpyro.plate("data", n):
        numpyro.sample("x", CrescentNoise(_shift(theta)), obs=x)


def reference(key: jax.Array, x, num_samples: int) -> jax.Array:
    """``num_samples`` exact posterior draws for one row ``x`` (``(1, 2)``), by inversion."""
    row = one_row("two_moons", x, DIM)

    def propose(k, shape):
        noise_key, branch_key = jax.random.split(k)
        q = row - CrescentNoise(jnp.zeros(DIM)).sample(noise_key, shape)
        total = -math.sqrt(2.0) * q[..., 0]  # |theta_0 + theta_1|, valid where q_0 <= 0
        total = jnp.where(jax.random.bernoulli(branch_key, 0.5, shape), total, -total)
        diff = math.sqrt(2.0) * q[..., 1]  # theta_1 - theta_0
        theta = jnp.stack([(total - diff) / 2, (total + diff) / 2], -1)
        return jnp.where((q[..., :1] <= 0), theta, jnp.inf)  # no preimage: rejected below

    return rejection(key, propose, lambda t: jnp.all(jnp.abs(t) <= 1.0, -1), num_samples,
                     "two_moons")
