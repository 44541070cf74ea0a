"""A registry of test cases: a model, its design, the data-set sizes, and its exact posterior.

Each :class:`Case` is a small NumPyro model with a plate of observations; ``exact`` gives the
exact posterior where one exists in closed form (for accuracy tests), and ``ENGINES`` lists the
guide constructors every case is run through by ``tests/guides/test_contract.py``. The cases
cover what the adapter must handle: a linear-Gaussian model, a positive site, a simplex site
(whose transform mixes coordinates), a model with no covariates, and an ordered sequence read by
the sequence encoder.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from amortized_ppl import (
    AutoAmortizedFlow,
    AutoAmortizedMultivariateNormal,
    AutoAmortizedNormal,
    AutoIterativeAmortizedMultivariateNormal,
    Flow,
)
from amortized_ppl.models import gaussian_hmm
from amortized_ppl.models import linear_regression as lr


class Case(NamedTuple):
    """A model to test guides on.

    Attributes:
        name: an id for parametrized tests.
        model: the NumPyro model.
        design_fn: ``design_fn(key, num_obs) -> (args, kwargs)``.
        num_obs: the ``(low, high)`` training range.
        exact: ``exact(data) -> {site: (mean, sd)}`` of the exact posterior given one data set's
            keyword arguments, or None.
        encoder: ``"set"`` or ``"sequence"``.
        iterative: whether mini-batches of observations may be read (exchangeable observations).
    """

    name: str
    model: Callable
    design_fn: Callable
    num_obs: tuple[int, int]
    exact: Callable | None = None
    encoder: str = "set"
    iterative: bool = True


def linear_design(key, num_obs):
    return lr.design_fn(key, num_obs, num_features=2)


def _linear_exact(data):
    post = lr.exact_posterior(data["x"], data["y"])
    sd = jnp.sqrt(jnp.diag(post.cov))
    return {"w": (post.mean[:-1], sd[:-1]), "b": (post.mean[-1], sd[-1])}


def poisson_model(y=None, num_obs=None):
    """``rate ~ Gamma(2, 1)``, ``y_n ~ Poisson(rate)``: a positive site, no covariates."""
    rate = numpyro.sample("rate", dist.Gamma(2.0, 1.0))
    n = num_obs if y is None else y.shape[0]
    with numpyro.plate("data", n):
        numpyro.sample("y", dist.Poisson(rate), obs=y)


def no_covariates(key, num_obs):
    del key
    return (), {"num_obs": num_obs}


def _poisson_exact(data):
    shape = 2.0 + jnp.sum(data["y"])
    rate = 1.0 + data["y"].shape[0]
    return {"rate": (shape / rate, jnp.sqrt(shape) / rate)}


def categorical_model(y=None, num_obs=None):
    """``p ~ Dirichlet(1, 1, 1)``, ``y_n ~ Categorical(p)``: a simplex site."""
    p = numpyro.sample("p", dist.Dirichlet(jnp.ones(3)))
    n = num_obs if y is None else y.shape[0]
    with numpyro.plate("data", n):
        numpyro.sample("y", dist.Categorical(p), obs=y)


def _categorical_exact(data):
    alpha = 1.0 + jnp.bincount(data["y"], length=3)
    total = jnp.sum(alpha)
    mean = alpha / total
    return {"p": (mean, jnp.sqrt(mean * (1 - mean) / (total + 1)))}


def hmm_design(key, num_obs):
    return gaussian_hmm.design_fn(key, num_obs)


CASES = (
    Case("linear_gaussian", lr.model_known_noise, linear_design, (8, 24), _linear_exact),
    Case("positive_site", lr.model, linear_design, (8, 24)),
    Case("poisson", poisson_model, no_covariates, (5, 30), _poisson_exact),
    Case("simplex_site", categorical_model, no_covariates, (5, 30), _categorical_exact),
    Case("sequence", gaussian_hmm.model, hmm_design, (12, 16), encoder="sequence",
         iterative=False),
)
"""Every case, by name."""

TINY = dict(summary_size=8, hidden_size=8, num_heads=2, num_blocks=1, num_inducing=4,
            head_width=16, head_depth=1)
"""A network small enough that the tests are dominated by nothing but compilation."""


def one_shot_normal(case: Case):
    return AutoAmortizedNormal(case.model, encoder=case.encoder, **TINY)


def one_shot_laplace(case: Case):
    return AutoAmortizedMultivariateNormal(case.model, encoder=case.encoder, newton_steps=2,
                                           **TINY)


def one_shot_flow(case: Case):
    return AutoAmortizedFlow(case.model, encoder=case.encoder, newton_steps=2,
                             flow=Flow(num_layers=2, knots=4, width=8), **TINY)


def iterative(case: Case):
    return AutoIterativeAmortizedMultivariateNormal(
        case.model, batch_size=8, num_passes=1, min_steps=2, memory_size=4, summary_size=4,
        hidden_size=8, num_heads=2, num_inducing=4, head_width=8, head_depth=1, max_tokens=8)


ENGINES = {
    "one_shot_normal": one_shot_normal,
    "one_shot_laplace": one_shot_laplace,
    "one_shot_flow": one_shot_flow,
    "iterative": iterative,
}
"""Guide constructors, one per engine (and family stage) the adapter must serve."""


def combinations():
    """Every valid ``(case, engine name)``: iterative engines read mini-batches, so they take
    cases whose observations are exchangeable."""
    return [(case, engine) for case in CASES for engine in ENGINES
            if engine != "iterative" or case.iterative]


def simulate_dataset(key, guide, num_obs: int) -> dict:
    """The model's keyword arguments for one simulated data set of ``num_obs`` observations."""
    batch = guide.problem.simulator(num_obs=(num_obs, num_obs))(key, 1)
    return {k: v[0] if isinstance(v, jax.Array) else v for k, v in batch.arguments.items()}
