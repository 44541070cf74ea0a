"""sbibm's ``slcp``: a simple likelihood whose posterior is complex (four symmetric modes).

``theta ~ Uniform(-3, 3)^5``; the mean ``m = (theta_0, theta_1)``, the scales ``s_1 = theta_2^2``,
``s_2 = theta_3^2`` and the correlation ``rho = tanh(theta_4)`` make a 2-d Gaussian (covariance
``[[s_1^2, rho s_1 s_2], [rho s_1 s_2, s_2^2]] + 1e-6 I``), and ``x`` is
four independent draws from it (four rows of two; sbibm flattens them to 8 numbers in row order).

The likelihood reads ``theta_2`` and ``theta_3`` only through their squares and the prior's box is
symmetric, so flipping the sign of either leaves the posterior unchanged: four modes, one per sign
pattern, that NUTS chains started at random do not cross (the density vanishes at ``theta_2 = 0``).
The reference runs NUTS on the folded model (``theta_2, theta_3 > 0``, one mode) and gives each
draw independent random signs: exact symmetry completion, every mode with mass 1/4.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from amortized_ppl.models.sbibm.task import ReferenceCheckError, check_nuts, plate_size
from amortized_ppl.reference import reference_posterior

__all__ = ["BOUND", "NUM_DRAWS", "gaussian", "mode_fractions", "model", "reference"]

DIM = 5
X_DIM = 2
NUM_DRAWS = 4
BOUND = 3.0
JITTER = 1e-6  # sbibm adds it to the covariance


def gaussian(theta) -> dist.MultivariateNormal:
    """The 2-d Gaussian of ``x``'s rows given ``theta`` (``(..., 5)``)."""
    s1, s2 = theta[..., 2] ** 2, theta[..., 3] ** 2
    rho = jnp.tanh(theta[..., 4])
    cov = jnp.stack([jnp.stack([s1 ** 2, rho * s1 * s2], -1),
                     jnp.stack([rho * s1 * s2, s2 ** 2], -1)], -2)
    return dist.MultivariateNormal(theta[..., :2], covariance_matrix=cov + JITTER * jnp.eye(2))


def _likelihood(theta, x, n):
    with numpyro.plate("data", n):
        numpyro.sample("x", gaussian(theta), obs=x)


def model(x=None, num_obs=NUM_DRAWS):
    """Latent ``theta`` (``(5,)``) uniform on ``[-3, 3]^5``; ``x``: ``(num_obs, 2)``."""
    n = plate_size("slcp", x, num_obs, X_DIM)
    theta = numpyro.sample("theta", dist.Uniform(-BOUND * jnp.ones(DIM), BOUND).to_event(1))
    _likelihood(theta, x, n)


def folded_model(x=None, num_obs=NUM_DRAWS):
    """:func:`model` with ``theta_2, theta_3`` restricted to ``(0, 3)`` (one of the four modes)."""
    n = plate_size("slcp", x, num_obs, X_DIM)
    low = jnp.array([-BOUND, -BOUND, 0.0, 0.0, -BOUND])
    theta = numpyro.sample("theta", dist.Uniform(low, BOUND).to_event(1))
    _likelihood(theta, x, n)


def mode_fractions(theta) -> np.ndarray:
    """Fraction of draws in each sign pattern of ``(theta_2, theta_3)``: ``(++, +-, -+, --)``."""
    theta = np.asarray(theta)
    pos2, pos3 = theta[:, 2] > 0, theta[:, 3] > 0
    return np.array([np.mean(pos2 & pos3), np.mean(pos2 & ~pos3), np.mean(~pos2 & pos3),
                     np.mean(~pos2 & ~pos3)])


def reference(key: jax.Array, x, num_samples: int, *, model_fn=None,
              num_chains: int = 4, num_warmup: int = 1000) -> jax.Array:
    """``num_samples`` posterior draws for one observation ``x`` (``(4, 2)``): NUTS on the folded
    model (``num_chains`` chains at target acceptance 0.99, split R-hat <= 1.01 and at most
    0.1% divergent transitions, else
    :class:`ReferenceCheckError`), symmetry-completed, shuffled; every sign pattern must hold a
    quarter of the draws up to 5 binomial SDs."""
    chain_key, sign_key, order_key = jax.random.split(key, 3)
    per_chain = -(-num_samples // num_chains)
    result = reference_posterior(chain_key, folded_model if model_fn is None else model_fn,
                                 num_chains=num_chains, num_warmup=num_warmup,
                                 num_samples=per_chain, target_accept=0.99, x=jnp.asarray(x))
    check_nuts("slcp", result)
    theta = result.samples["theta"].reshape(-1, DIM)
    signs = jnp.where(jax.random.bernoulli(sign_key, 0.5, (theta.shape[0], 2)), 1.0, -1.0)
    theta = theta.at[:, 2:4].multiply(signs)
    theta = jax.random.permutation(order_key, theta)[:num_samples]
    fractions = mode_fractions(theta)
    # Each draw's signs are fair coins: a quarter per pattern up to binomial noise (5 SDs).
    band = 5.0 * np.sqrt(0.25 * 0.75 / theta.shape[0])
    if not np.all(np.abs(fractions - 0.25) <= band):
        raise ReferenceCheckError(f"slcp: the reference's four modes hold {fractions.round(3)} "
                                  "of its draws, not a quarter each.")
    return theta
