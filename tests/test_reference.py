"""Tests of the NUTS reference posterior: exactness on a conjugate model, diagnostics, reuse of
the compiled program across data sets, warm starts, validation and convergence warnings.

Compilation dominates (several seconds per model and configuration), so the tests share two
configurations: a converging run of the known-noise regression (4 chains, 300 warm-up steps,
500 samples) and a deliberately short run of the unknown-noise regression.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer import Predictive

from amortized_ppl.models.linear_regression import (
    NOISE_SCALE,
    design_fn,
    exact_posterior,
    model,
    model_known_noise,
)
from amortized_ppl.reference import (
    RHAT_THRESHOLD,
    Moments,
    ReferenceInfo,
    ReferenceResult,
    flatten_samples,
    reference_moments,
    reference_posterior,
)

NUM_OBS = 50
NUM_FEATURES = 3
CONVERGING = dict(num_chains=4, num_warmup=300, num_samples=500)
TOO_SHORT = dict(num_chains=4, num_warmup=5, num_samples=10)

# Every trace of the model appends here: a second data set of the same shape must not retrace.
_MODEL_CALLS = []


def counting_model(x, y=None, *, sigma=NOISE_SCALE):
    """``model_known_noise``, counting its traces."""
    _MODEL_CALLS.append(None)
    return model_known_noise(x, y, sigma=sigma)


def _simulate(key, prior_model, num_obs=NUM_OBS):
    key_design, key_sim = jax.random.split(key)
    (x,), _ = design_fn(key_design, num_obs, num_features=NUM_FEATURES)
    y = Predictive(prior_model, num_samples=1)(key_sim, x)["y"][0]
    return x, y


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


@pytest.fixture(scope="module")
def known_noise():
    x, y = _simulate(jax.random.key(1), model_known_noise)
    result = reference_posterior(jax.random.key(2), counting_model, x, y=y, **CONVERGING)
    return x, y, result


@pytest.fixture(scope="module")
def unknown_noise_data():
    # Many observations make the posterior narrow compared with the initial spread of the
    # chains (uniform on [-2, 2] in unconstrained space), so 15 steps cannot mix.
    return _simulate(jax.random.key(3), model, num_obs=200)


# ---------------------------------------------------------------------------------------------
# Exactness and result layout
# ---------------------------------------------------------------------------------------------


def test_matches_exact_posterior(known_noise):
    x, y, result = known_noise
    _assert_matches_exact(result, x, y)
    assert result.num_divergent == 0


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


def test_flatten_and_moments(known_noise):
    _, _, result = known_noise
    flat = flatten_samples(result.samples)
    total = CONVERGING["num_chains"] * CONVERGING["num_samples"]
    assert flat["w"].shape == (total, NUM_FEATURES)
    assert flat["b"].shape == (total,)
    np.testing.assert_array_equal(flat["w"][: CONVERGING["num_samples"]], result.samples["w"][0])
    moments = reference_moments(result.samples)
    assert isinstance(moments, Moments)
    np.testing.assert_allclose(moments.mean["w"], np.mean(flat["w"], axis=0), rtol=1e-5)
    np.testing.assert_allclose(moments.sd["b"], np.std(flat["b"], ddof=1), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# One compiled program per model and data shape; warm starts
# ---------------------------------------------------------------------------------------------


def test_new_data_same_shape_reuses_compiled_program(known_noise):
    _, _, first = known_noise
    calls = len(_MODEL_CALLS)
    assert calls > 0
    x, y = _simulate(jax.random.key(11), model_known_noise)
    result = reference_posterior(jax.random.key(12), counting_model, x, y=y, **CONVERGING)
    assert len(_MODEL_CALLS) == calls, "a data set of the same shape retraced the model"
    _assert_matches_exact(result, x, y)
    assert not np.allclose(result.samples["b"], first.samples["b"])


def test_warm_start_from_last_position(known_noise):
    x, y, first = known_noise
    calls = len(_MODEL_CALLS)
    result = reference_posterior(
        jax.random.key(13),
        counting_model,
        x,
        y=y,
        init_params=first.info.last_position,
        **CONVERGING,
    )
    # Warm and cold starts share the compiled sampler: initialization is a separate program.
    assert len(_MODEL_CALLS) == calls
    _assert_matches_exact(result, x, y)


def test_init_params_are_validated(known_noise):
    x, y, first = known_noise
    start = first.info.last_position
    with pytest.raises(ValueError, match=r"init_params\['w'\] must have shape \(4, 3\)"):
        reference_posterior(
            jax.random.key(0), counting_model, x, y=y,
            init_params={"w": start["w"][:2], "b": start["b"][:2]}, **CONVERGING,
        )
    with pytest.raises(ValueError, match="keyed by the latent sites"):
        reference_posterior(
            jax.random.key(0), counting_model, x, y=y, init_params={"w": start["w"]},
            **CONVERGING,
        )
    with pytest.raises(ValueError, match="init_params must be a dict"):
        reference_posterior(
            jax.random.key(0), counting_model, x, y=y, init_params=start["w"], **CONVERGING
        )
    with pytest.raises(ValueError, match="'init_params'"):
        reference_posterior(
            jax.random.key(0), counting_model, x, y=y,
            init_params={"w": start["w"].at[0, 0].set(jnp.nan), "b": start["b"]},
            **CONVERGING,
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
# Unknown noise; convergence warnings
# ---------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:NUTS had:RuntimeWarning")
def test_warns_when_rhat_is_high(unknown_noise_data):
    x, y = unknown_noise_data
    with pytest.warns(RuntimeWarning, match=r"Split R-hat of site '\w+' is \d+\.\d+ > 1\.01"):
        result = reference_posterior(jax.random.key(4), model, x, y=y, **TOO_SHORT)
    worst = max(float(np.max(value)) for value in result.rhat.values())
    assert worst > RHAT_THRESHOLD


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the run is too short on purpose
def test_unknown_noise_shapes_and_support(unknown_noise_data):
    x, y = unknown_noise_data
    result = reference_posterior(jax.random.key(5), model, x, y=y, **TOO_SHORT)
    chains, draws = TOO_SHORT["num_chains"], TOO_SHORT["num_samples"]
    assert set(result.samples) == {"w", "b", "sigma"}
    assert result.samples["w"].shape == (chains, draws, NUM_FEATURES)
    assert result.samples["b"].shape == (chains, draws)
    assert result.samples["sigma"].shape == (chains, draws)
    assert np.all(np.asarray(result.samples["sigma"]) > 0)
    assert result.rhat["sigma"].shape == ()
    # sigma lives on the log scale inside the sampler: 3 + 1 + 1 unconstrained coordinates.
    assert result.info.inverse_mass_matrix.shape == (chains, NUM_FEATURES + 2)
