"""Configurations, data and trace-counting models shared by the reference tests.

Compilation dominates (several seconds per model and configuration), so the default tier shares
one configuration, ``SHORT`` (4 chains, 5 warm-up steps, 10 samples), on the unknown-noise
regression with 200 observations: too short to mix, so its runs also exercise the R-hat warning.
Converged-accuracy checks use ``CONVERGING`` on the known-noise regression and are slow.
"""

import functools

import jax
from numpyro.infer import Predictive

from amortized_ppl.models.linear_regression import design_fn

NUM_OBS = 50
NUM_FEATURES = 3
# reference_posterior passes these to get_reference_sampler in this order: keep it, so that the
# sampler (and its compiled programs) is shared by every test that uses SHORT.
SHORT = dict(num_chains=4, num_warmup=5, num_samples=10)
CONVERGING = dict(num_chains=4, num_warmup=300, num_samples=500)


def simulate(key, prior_model, num_obs=NUM_OBS):
    """Covariates ``(num_obs, 3)`` and observations ``(num_obs,)`` drawn from ``prior_model``."""
    key_design, key_sim = jax.random.split(key)
    (x,), _ = design_fn(key_design, num_obs, num_features=NUM_FEATURES)
    y = Predictive(prior_model, num_samples=1)(key_sim, x)["y"][0]
    return x, y


def counting(inner):
    """``inner`` with the same signature, counting its traces in ``.calls`` (a list).

    A data set of an already-compiled shape must not retrace the model. Each call makes a new
    function, so ``get_reference_sampler`` caches one sampler per counting model.
    """

    @functools.wraps(inner)
    def counted(*args, **kwargs):
        counted.calls.append(None)
        return inner(*args, **kwargs)

    counted.calls = []
    return counted
