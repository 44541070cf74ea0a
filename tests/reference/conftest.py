"""Fixtures of the reference tests: trace-counting models and the short run's data."""

import jax
import pytest

from amortized_ppl.models.linear_regression import model, model_known_noise
from tests.reference.helpers import counting, simulate


@pytest.fixture(scope="session")
def counting_model():
    """The unknown-noise regression (sites ``w``, ``b``, ``sigma``), counting its traces."""
    return counting(model)


@pytest.fixture(scope="session")
def counting_known_noise():
    """The known-noise regression (sites ``w``, ``b``), counting its traces."""
    return counting(model_known_noise)


@pytest.fixture(scope="session")
def short_data():
    # Many observations make the posterior narrow compared with the initial spread of the
    # chains (uniform on [-2, 2] in unconstrained space), so 15 steps cannot mix.
    return simulate(jax.random.key(3), model, num_obs=200)
