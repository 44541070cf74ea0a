"""A rate in (0, 1) from few coin flips: a bounded, skewed posterior with a closed form.

``rate ~ Beta(2, 2)`` and, inside the ``"data"`` plate, ``y_n ~ Bernoulli(rate)``. With 5 to 50
flips the posterior ``Beta(2 + k, 2 + N - k)`` (``k`` successes) is skewed in the logit space a
guide works in, most where ``k`` is 0 or ``N``, so a Gaussian there (Laplace) is biased.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

__all__ = ["PRIOR", "design_fn", "exact_posterior", "model"]

PRIOR = (2.0, 2.0)
"""The Beta prior's concentrations."""


def model(y=None, num_obs=None):
    """Latent site ``rate`` (``()``, in (0, 1)); ``y``: ``(N,)`` 0/1 flips, or ``None`` with
    ``num_obs`` to simulate."""
    if y is None and num_obs is None:
        raise ValueError("bernoulli_rate.model: pass the flips y, or num_obs to simulate them.")
    rate = numpyro.sample("rate", dist.Beta(*PRIOR))
    with numpyro.plate("data", jnp.shape(y)[0] if y is not None else int(num_obs)):
        numpyro.sample("y", dist.Bernoulli(rate), obs=y)


def design_fn(key, num_obs: int) -> tuple[tuple, dict]:
    """No covariates: the data set's size only."""
    del key
    return (), {"num_obs": int(num_obs)}


def exact_posterior(y) -> dist.Beta:
    """``Beta(2 + k, 2 + N - k)`` for flips ``y`` of shape ``(..., N)`` (a batch of data sets
    gives a batch of posteriors)."""
    y = jnp.asarray(y, jnp.result_type(float))
    k = jnp.sum(y, axis=-1)
    return dist.Beta(PRIOR[0] + k, PRIOR[1] + y.shape[-1] - k)
