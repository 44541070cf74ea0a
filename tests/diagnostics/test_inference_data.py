"""Complete ArviZ objects from a guide and from a NUTS reference."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.diagnostics.inference_data import (
    guide_inference_data,
    reference_inference_data,
)
from amortized_ppl.models.linear_regression import model_known_noise
from amortized_ppl.reference import reference_posterior
from tests.helpers import exact_linear_guide, small_design

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az


@pytest.fixture(scope="module")
def data():
    (x,), _ = small_design(jax.random.key(1), 30)
    return x, x @ jnp.array([1.0, -0.5, 0.2]) + 0.5 * jax.random.normal(jax.random.key(2), (30,))


def test_guide_object_has_every_group(data):
    x, y = data
    guide, params = exact_linear_guide(newton_steps=4)
    idata = guide_inference_data(
        jax.random.key(0), guide, params, x, y=y, num_draws=200, num_prior=50
    )
    for group in (
        "posterior",
        "posterior_predictive",
        "prior",
        "prior_predictive",
        "observed_data",
        "sample_stats",
    ):
        assert group in idata.groups(), group
    assert idata.posterior["w"].shape == (1, 200, 3)
    assert idata.posterior_predictive["y"].dims[-1] == "data"  # named after the model's plate
    assert idata.posterior_predictive["y"].shape == (1, 200, 30)
    assert idata.prior["w"].shape == (1, 50, 3)
    np.testing.assert_allclose(idata.observed_data["y"], y)
    assert np.all(np.isfinite(idata.sample_stats["log_weight"]))
    summary = az.summary(idata, kind="stats")
    assert {"w[0]", "b"} <= set(summary.index)
    # Posterior predictive means track the data far better than prior predictive ones.
    post_err = np.abs(idata.posterior_predictive["y"].mean(("chain", "draw")) - y).mean()
    prior_err = np.abs(idata.prior_predictive["y"].mean(("chain", "draw")) - y).mean()
    assert post_err < 0.5 * prior_err


@pytest.mark.slow  # a second batch shape through the predictive groups
def test_batch_gives_one_object_per_data_set(data):
    x, y = data
    guide, params = exact_linear_guide(newton_steps=4)
    mask = np.ones((2, 30), bool)
    mask[1, 20:] = False
    objects = guide_inference_data(
        jax.random.key(0),
        guide,
        params,
        jnp.stack([x, x]),
        y=jnp.stack([y, y]),
        data_mask=mask,
        num_draws=100,
        num_prior=0,
    )
    assert len(objects) == 2
    assert objects[1].observed_data["y"].shape == (20,)  # padded rows dropped
    assert "prior" not in objects[0].groups()


@pytest.mark.slow
def test_reference_object(data):
    """Runs NUTS (opt in with --runslow)."""
    x, y = data
    ref = reference_posterior(
        jax.random.key(3), model_known_noise, x, y=y, num_warmup=100, num_samples=100
    )
    idata = reference_inference_data(
        jax.random.key(4), ref, model_known_noise, x, y=y, num_prior=20
    )
    assert idata.posterior["w"].shape == (4, 100, 3)
    assert idata.posterior_predictive["y"].shape == (4, 100, 30)
    assert "diverging" in idata.sample_stats and "y" in idata.observed_data
    assert idata.prior["b"].shape == (1, 20)
