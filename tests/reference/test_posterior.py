"""Tests of ``reference_posterior``, the cached entry point: exactness on a conjugate model,
diagnostics, reuse of the compiled program across data sets, warm starts, validation and
convergence warnings.

The default tier shares one short configuration (``SHORT``) on the unknown-noise regression; the
converged-accuracy checks (``CONVERGING``, ~20 s of compiling and sampling) are slow.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.models.linear_regression import exact_posterior, model, model_known_noise
from amortized_ppl.reference import (
    RHAT_THRESHOLD,
    Moments,
    ReferenceInfo,
    ReferenceResult,
    flatten_samples,
    get_reference_sampler,
    reference_moments,
    reference_posterior,
)
from tests.reference.helpers import CONVERGING, NUM_FEATURES, SHORT, simulate


def _assert_matches_exact(result, x, y):
    """Compare NUTS moments with the conjugate posterior.

    The Monte Carlo standard error of a posterior-mean estimate is sd / sqrt(ESS); four of them
    bound the error with probability > 0.9999 per coordinate (plus 1e-3 for float32 round-off).
    The relative error of an SD estimate is about 1 / sqrt(2 ESS), i.e. under 3% for
    ESS > 1000, so [0.9, 1.1] is a loose, stable bound.
    """
    exact = exact_posterior(x, y).marginals()
    moments = reference_moments(result.samples)
    for site in ("w", "b"):
        mcse = exact.sd[site] / np.sqrt(result.ess[site])
        error = np.abs(moments.mean[site] - exact.mean[site])
        assert np.all(error < 4 * mcse + 1e-3), (site, error, mcse)
        ratio = moments.sd[site] / exact.sd[site]
        assert np.all((ratio > 0.9) & (ratio < 1.1)), (site, ratio)
        assert np.all(result.rhat[site] < 1.05), (site, result.rhat[site])


def _short(key, counting_model, x, y, **kwargs):
    """A SHORT run, its (expected) convergence warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return reference_posterior(key, counting_model, x, y=y, **kwargs, **SHORT)


@pytest.fixture(scope="module")
def short_run(counting_model, short_data):
    x, y = short_data
    return _short(jax.random.key(5), counting_model, x, y)


# ---------------------------------------------------------------------------------------------
# Result layout (short run)
# ---------------------------------------------------------------------------------------------


def test_result_layout_of_a_short_run(short_run):
    chains, draws = SHORT["num_chains"], SHORT["num_samples"]
    result = short_run
    assert isinstance(result, ReferenceResult)
    assert set(result.samples) == {"w", "b", "sigma"}
    assert result.samples["w"].shape == (chains, draws, NUM_FEATURES)
    assert result.rhat["w"].shape == (NUM_FEATURES,) and result.rhat["b"].shape == ()
    assert result.ess["w"].shape == (NUM_FEATURES,) and result.ess["b"].shape == ()
    assert isinstance(result.num_divergent, int)

    info = result.info
    assert isinstance(info, ReferenceInfo)
    assert info.step_size.shape == (chains,)
    assert np.all(info.step_size > 0)
    for field in ("is_divergent", "acceptance_rate", "num_integration_steps", "tree_depth"):
        assert getattr(info, field).shape == (chains, draws), field
    assert info.logdensity.shape == (chains, draws)
    assert info.last_position["w"].shape == (chains, NUM_FEATURES)
    assert info.last_position["sigma"].shape == (chains,)

    idata = result.inference_data
    assert idata["posterior"]["w"].shape == (chains, draws, NUM_FEATURES)
    assert idata["posterior"]["b"].shape == (chains, draws)
    assert idata["sample_stats"]["diverging"].shape == (chains, draws)
    np.testing.assert_allclose(idata["posterior"]["w"].values, result.samples["w"], rtol=1e-6)


def test_unknown_noise_shapes_and_support(short_run):
    result = short_run
    chains, draws = SHORT["num_chains"], SHORT["num_samples"]
    assert set(result.samples) == {"w", "b", "sigma"}
    assert result.samples["w"].shape == (chains, draws, NUM_FEATURES)
    assert result.samples["b"].shape == (chains, draws)
    assert result.samples["sigma"].shape == (chains, draws)
    assert np.all(np.asarray(result.samples["sigma"]) > 0)
    assert result.rhat["sigma"].shape == ()
    # sigma lives on the log scale inside the sampler: 3 + 1 + 1 unconstrained coordinates.
    assert result.info.inverse_mass_matrix.shape == (chains, NUM_FEATURES + 2)


def test_flatten_and_moments(short_run):
    result = short_run
    flat = flatten_samples(result.samples)
    total = SHORT["num_chains"] * SHORT["num_samples"]
    assert flat["w"].shape == (total, NUM_FEATURES)
    assert flat["b"].shape == (total,)
    np.testing.assert_array_equal(flat["w"][: SHORT["num_samples"]], result.samples["w"][0])
    moments = reference_moments(result.samples)
    assert isinstance(moments, Moments)
    np.testing.assert_allclose(moments.mean["w"], np.mean(flat["w"], axis=0), rtol=1e-5)
    np.testing.assert_allclose(moments.sd["b"], np.std(flat["b"], ddof=1), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# One compiled program per model and data shape; warm starts; determinism (short run)
# ---------------------------------------------------------------------------------------------


def test_new_data_same_shape_reuses_compiled_program(short_run, counting_model):
    calls = len(counting_model.calls)
    assert calls > 0
    x, y = simulate(jax.random.key(11), model, num_obs=200)
    result = _short(jax.random.key(12), counting_model, x, y)
    assert len(counting_model.calls) == calls, "a data set of the same shape retraced the model"
    assert not np.allclose(result.samples["b"], short_run.samples["b"])


def test_warm_start_from_last_position(short_run, counting_model, short_data):
    x, y = short_data
    calls = len(counting_model.calls)
    result = _short(
        jax.random.key(13), counting_model, x, y, init_params=short_run.info.last_position
    )
    # Warm and cold starts share the compiled sampler: initialization is a separate program.
    assert len(counting_model.calls) == calls
    assert result.samples["w"].shape == short_run.samples["w"].shape


def test_same_key_same_draws(short_run, counting_model, short_data):
    x, y = short_data
    again = _short(jax.random.key(5), counting_model, x, y)
    for site, value in short_run.samples.items():
        np.testing.assert_array_equal(again.samples[site], value)
    np.testing.assert_array_equal(again.info.step_size, short_run.info.step_size)


def test_get_reference_sampler_caches_per_model_and_configuration():
    config = dict(SHORT, target_accept=0.8, progress=False)
    sampler = get_reference_sampler(model, **config)
    assert get_reference_sampler(model, **config) is sampler
    assert get_reference_sampler(model, **dict(config, num_samples=11)) is not sampler


def test_get_reference_sampler_builds_unhashable_models_without_caching():
    class Unhashable:
        __hash__ = None

        def __call__(self, x, y=None):
            return model(x, y)

    unhashable = Unhashable()
    first = get_reference_sampler(unhashable, **SHORT)
    assert get_reference_sampler(unhashable, **SHORT) is not first


def test_init_params_are_validated(short_run, counting_model, short_data):
    x, y = short_data
    start = short_run.info.last_position
    with pytest.raises(ValueError, match=r"init_params\['w'\] must have shape \(4, 3\)"):
        reference_posterior(
            jax.random.key(0), counting_model, x, y=y,
            init_params={k: v[:2] for k, v in start.items()}, **SHORT,
        )
    with pytest.raises(ValueError, match="keyed by the latent sites"):
        reference_posterior(
            jax.random.key(0), counting_model, x, y=y, init_params={"w": start["w"]}, **SHORT
        )
    with pytest.raises(ValueError, match="init_params must be a dict"):
        reference_posterior(
            jax.random.key(0), counting_model, x, y=y, init_params=start["w"], **SHORT
        )
    with pytest.raises(ValueError, match="'init_params'"):
        reference_posterior(
            jax.random.key(0), counting_model, x, y=y,
            init_params=dict(start, w=start["w"].at[0, 0].set(jnp.nan)), **SHORT,
        )


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, name",
    [
        (dict(num_chains=1), "num_chains"),
        (dict(num_samples=5), "num_samples"),
        (dict(num_warmup=0), "num_warmup"),
        (dict(target_accept=1.0), "target_accept"),
    ],
)
def test_rejects_bad_configuration(bad, name):
    x, y = jnp.ones((5, 2)), jnp.ones(5)
    with pytest.raises(ValueError, match=name):
        reference_posterior(jax.random.key(0), model_known_noise, x, y=y, **(CONVERGING | bad))


def test_rejects_non_finite_data():
    x, y = jnp.ones((5, 2)), jnp.ones(5)
    with pytest.raises(ValueError, match="Argument 'x' contains NaN or Inf"):
        reference_posterior(jax.random.key(0), model_known_noise, x.at[1, 1].set(jnp.nan), y=y)
    with pytest.raises(ValueError, match="Argument 'y' contains NaN or Inf"):
        reference_posterior(jax.random.key(0), model_known_noise, x, y.at[0].set(jnp.inf))
    with pytest.raises(ValueError, match="Argument 'sigma' contains NaN or Inf"):
        reference_posterior(jax.random.key(0), model_known_noise, x, y=y, sigma=float("nan"))


# ---------------------------------------------------------------------------------------------
# Convergence warnings
# ---------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:NUTS had:RuntimeWarning")
def test_warns_when_rhat_is_high(counting_model, short_data):
    x, y = short_data
    with pytest.warns(RuntimeWarning,
                      match=r"R-hat \(rank-normalized\) of site '\w+' is \d+\.\d+ > 1\.01"):
        result = reference_posterior(jax.random.key(4), counting_model, x, y=y, **SHORT)
    worst = max(float(np.max(value)) for value in result.rhat.values())
    assert worst > RHAT_THRESHOLD


# ---------------------------------------------------------------------------------------------
# Converged runs: exactness on the conjugate model (slow)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def known_noise(counting_known_noise):
    x, y = simulate(jax.random.key(1), model_known_noise)
    result = reference_posterior(jax.random.key(2), counting_known_noise, x, y=y, **CONVERGING)
    return x, y, result


@pytest.mark.slow
def test_matches_exact_posterior(known_noise):
    x, y, result = known_noise
    _assert_matches_exact(result, x, y)
    assert result.num_divergent == 0


@pytest.mark.slow
def test_result_layout(known_noise):
    _, _, result = known_noise
    chains, draws = CONVERGING["num_chains"], CONVERGING["num_samples"]
    assert isinstance(result, ReferenceResult)
    assert set(result.samples) == {"w", "b"}
    assert result.samples["w"].shape == (chains, draws, NUM_FEATURES)
    assert result.samples["b"].shape == (chains, draws)
    assert result.rhat["w"].shape == (NUM_FEATURES,) and result.rhat["b"].shape == ()
    assert result.ess["w"].shape == (NUM_FEATURES,) and result.ess["b"].shape == ()
    assert isinstance(result.num_divergent, int)

    info = result.info
    assert isinstance(info, ReferenceInfo)
    assert info.step_size.shape == (chains,)
    assert np.all(info.step_size > 0)
    assert info.inverse_mass_matrix.shape == (chains, NUM_FEATURES + 1)
    for field in ("is_divergent", "acceptance_rate", "num_integration_steps", "tree_depth"):
        assert getattr(info, field).shape == (chains, draws), field
    assert info.logdensity.shape == (chains, draws)
    assert info.last_position["w"].shape == (chains, NUM_FEATURES)
    # Adaptation targets 0.8; the realized mean acceptance lands near it.
    assert 0.6 < float(jnp.mean(info.acceptance_rate)) < 0.98

    idata = result.inference_data
    assert idata["posterior"]["w"].shape == (chains, draws, NUM_FEATURES)
    assert idata["posterior"]["b"].shape == (chains, draws)
    assert idata["sample_stats"]["diverging"].shape == (chains, draws)
    np.testing.assert_allclose(idata["posterior"]["w"].values, result.samples["w"], rtol=1e-6)


@pytest.mark.slow
def test_converged_run_on_new_data_reuses_compiled_program(known_noise, counting_known_noise):
    _, _, first = known_noise
    calls = len(counting_known_noise.calls)
    assert calls > 0
    x, y = simulate(jax.random.key(11), model_known_noise)
    result = reference_posterior(jax.random.key(12), counting_known_noise, x, y=y, **CONVERGING)
    assert len(counting_known_noise.calls) == calls, "a data set of the same shape retraced"
    _assert_matches_exact(result, x, y)
    assert not np.allclose(result.samples["b"], first.samples["b"])


@pytest.mark.slow
def test_converged_warm_start_from_last_position(known_noise, counting_known_noise):
    x, y, first = known_noise
    calls = len(counting_known_noise.calls)
    result = reference_posterior(
        jax.random.key(13),
        counting_known_noise,
        x,
        y=y,
        init_params=first.info.last_position,
        **CONVERGING,
    )
    # Warm and cold starts share the compiled sampler: initialization is a separate program.
    assert len(counting_known_noise.calls) == calls
    _assert_matches_exact(result, x, y)
