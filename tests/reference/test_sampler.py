"""``build_reference_sampler`` directly: ``draw`` is ``sample`` without the summary, the runtime
check of the starts, warm starts with a given metric and the progress bar."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.models.linear_regression import model
from amortized_ppl.reference import (
    ReferenceInfo,
    ReferenceSampler,
    build_reference_sampler,
    get_reference_sampler,
)
from tests.reference.helpers import NUM_FEATURES, SHORT, simulate

DIM = NUM_FEATURES + 2  # w, b and log(sigma)


@pytest.fixture(scope="module")
def sampler(counting_model):
    # The configuration reference_posterior(..., **SHORT) caches: its programs are shared.
    return get_reference_sampler(counting_model, **SHORT, target_accept=0.8, progress=False)


def _quiet_sample(sampler, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # SHORT runs cannot converge
        return sampler.sample(*args, **kwargs)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_draw_is_sample_without_the_summary(sampler, short_data):
    x, y = short_data
    assert isinstance(sampler, ReferenceSampler)
    samples, info = sampler.draw(jax.random.key(7), x, y=y)
    assert isinstance(info, ReferenceInfo)
    result = _quiet_sample(sampler, jax.random.key(7), x, y=y)
    for site in ("w", "b", "sigma"):
        np.testing.assert_array_equal(samples[site], result.samples[site])
    np.testing.assert_array_equal(info.step_size, result.info.step_size)


@pytest.mark.slow  # compiles for 3-5 s: the default tier stays under 3 minutes
def test_a_start_with_non_finite_log_density_is_refused(sampler, counting_model, short_data):
    x, y = short_data
    _quiet_sample(sampler, jax.random.key(0), x, y=y)  # compiled (shared with other tests)
    calls = len(counting_model.calls)
    start = {
        # Finite, but x @ w overflows. jnp.full(..., 1e30) is weakly typed: it must still share
        # the program compiled for the init strategy's starts.
        "w": jnp.full((SHORT["num_chains"], NUM_FEATURES), 1e30),
        "b": jnp.zeros(SHORT["num_chains"]),
        "sigma": jnp.zeros(SHORT["num_chains"]),
    }
    with pytest.raises(eqx.EquinoxRuntimeError, match="non-finite log density"):
        jax.block_until_ready(sampler.draw(jax.random.key(0), x, y=y, init_params=start))
    assert len(counting_model.calls) == calls, "weakly typed init_params recompiled the sampler"


def test_inverse_mass_matrix_is_validated(sampler, short_data):
    x, y = short_data
    with pytest.raises(ValueError, match=r"inverse_mass_matrix: expected shape \(5,\) or \(5, 5\)"):
        sampler.draw(jax.random.key(0), x, y=y, inverse_mass_matrix=jnp.ones(4))
    with pytest.raises(ValueError, match="'inverse_mass_matrix'"):
        sampler.sample(
            jax.random.key(0), x, y=y, inverse_mass_matrix=jnp.ones(DIM).at[0].set(jnp.inf)
        )


@pytest.mark.slow
def test_warm_start_with_a_metric_tunes_only_the_step_size(sampler, counting_model, short_data):
    x, y = short_data
    start = _quiet_sample(sampler, jax.random.key(0), x, y=y).info.last_position
    metric = 0.01 * jnp.eye(DIM)
    result = _quiet_sample(
        sampler, jax.random.key(1), x, y=y, init_params=start, inverse_mass_matrix=metric
    )
    chains = SHORT["num_chains"]
    assert result.info.step_size.shape == (chains,)
    np.testing.assert_array_equal(result.info.inverse_mass_matrix, jnp.stack([metric] * chains))
    # A second data set of the same shape, warm-started too, reuses the program.
    calls = len(counting_model.calls)
    x2, y2 = simulate(jax.random.key(2), model, num_obs=200)
    _quiet_sample(sampler, jax.random.key(3), x2, y=y2, init_params=start,
                  inverse_mass_matrix=metric)
    assert len(counting_model.calls) == calls + 1  # the metric's shape check traces once


@pytest.mark.slow
def test_progress_bar(capsys, short_data):
    x, y = short_data
    progress_sampler = build_reference_sampler(model, **SHORT, progress=True)
    _quiet_sample(progress_sampler, jax.random.key(0), x, y=y)
    jax.effects_barrier()
    err = capsys.readouterr().err
    assert "NUTS reference" in err and "15/15" in err
