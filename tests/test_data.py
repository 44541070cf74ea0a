"""Tests of amortized_ppl.data (keys, data specs, tokens, data-set validation) and of bad inputs
reaching an amortized guide.

The data-layer tests build the linear-regression data spec directly (no network); the guide-level
tests share one tiny guide, set up once per module, and check that bad inputs are refused before
anything is compiled, with messages that name the argument or site.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from amortized_ppl.data import (
    DataSpec,
    bind_arguments,
    build_data_spec,
    make_tokens,
    model_signature,
    validate_dataset,
)
from amortized_ppl.guides.amortized import AutoAmortizedMultivariateNormal
from amortized_ppl.models.linear_regression import design_fn, model_known_noise
from amortized_ppl.sites import inspect_model

NUM_OBS = 6
NUM_FEATURES = 3
NETWORK = dict(hidden_size=16, summary_size=16, head_width=32, num_blocks=1)
GUIDE_NUM_OBS = (5, 20)
GUIDE_FEATURES = 8  # design_fn's default


def _dataset(num_obs=NUM_OBS, num_features=NUM_FEATURES, seed=0):
    (x,), _ = design_fn(jax.random.key(seed), num_obs, num_features=num_features)
    y = x @ jnp.arange(1.0, num_features + 1.0) - 0.5
    return x, y


@pytest.fixture(scope="module")
def linreg():
    """Signature, sites and data spec of model_known_noise for a data set of NUM_OBS rows."""
    x, y = _dataset()
    signature = model_signature(model_known_noise)
    bound = bind_arguments(signature, (x,), {"y": y})
    sites = inspect_model(model_known_noise, (), bound)
    spec = build_data_spec(signature, bound, sites, {"y": "y"}, NUM_OBS)
    return signature, sites, spec


def _bound(linreg, x, y):
    signature, _, _ = linreg
    return bind_arguments(signature, (x,), {"y": y})


def _validate(linreg, x, y, **kwargs):
    _, sites, spec = linreg
    return validate_dataset(spec, sites, _bound(linreg, x, y), **kwargs)


# ---------------------------------------------------------------------------------------------
# Data spec and tokens
# ---------------------------------------------------------------------------------------------


def test_data_spec_for_linear_regression(linreg):
    _, _, spec = linreg
    assert isinstance(spec, DataSpec)
    assert spec.covariates == ("x",)  # `sigma` (a float keyword) is not a covariate
    assert spec.observed == {"y": "y"}
    assert spec.feature_shapes == {"x": (NUM_FEATURES,), "y": ()}
    assert spec.token_dim == NUM_FEATURES + 1
    assert spec.data_arguments == ("x", "y")
    description = spec.describe()
    assert json.loads(json.dumps(description)) == description


def test_make_tokens_linear_regression(linreg):
    _, sites, spec = linreg
    x, y = _dataset()
    tokens = make_tokens(spec, sites, _bound(linreg, x, y))
    assert tokens.shape == (NUM_OBS, NUM_FEATURES + 1)
    assert tokens.dtype == jnp.float32
    np.testing.assert_array_equal(tokens[:, :NUM_FEATURES], x)
    np.testing.assert_array_equal(tokens[:, NUM_FEATURES], y)


def test_make_tokens_casts_integer_data(linreg):
    _, sites, spec = linreg
    x = jnp.arange(NUM_OBS * NUM_FEATURES).reshape(NUM_OBS, NUM_FEATURES)
    y = jnp.arange(NUM_OBS)
    tokens = make_tokens(spec, sites, _bound(linreg, x, y))
    assert tokens.dtype == jnp.float32
    np.testing.assert_array_equal(tokens[:, -1], np.arange(NUM_OBS))


def test_build_data_spec_explicit_covariates(linreg):
    signature, sites, _ = linreg
    x, y = _dataset()
    bound = bind_arguments(signature, (x,), {"y": y})
    with pytest.raises(ValueError, match="'z' is not an argument"):
        build_data_spec(signature, bound, sites, {"y": "y"}, NUM_OBS, covariates=["z"])
    with pytest.raises(ValueError, match=r"covariate 'x': expected a leading axis of length 5"):
        build_data_spec(signature, bound, sites, {"y": "y"}, 5, covariates=["x"])


def test_bind_arguments_names_the_signature(linreg):
    signature, _, _ = linreg
    with pytest.raises(TypeError, match=r"signature \(x, y=None"):
        bind_arguments(signature, (), {"nope": 1})


# ---------------------------------------------------------------------------------------------
# validate_dataset
# ---------------------------------------------------------------------------------------------


def test_validate_dataset_accepts_one_and_a_batch(linreg):
    x, y = _dataset()
    assert _validate(linreg, x, y) == (0, NUM_OBS)
    xs, ys = jnp.stack([x, x]), jnp.stack([y, y])
    assert _validate(linreg, xs, ys) == (1, NUM_OBS)
    assert _validate(linreg, x, y, max_obs=NUM_OBS) == (0, NUM_OBS)


def test_validate_dataset_nan_in_x(linreg):
    x, y = _dataset()
    with pytest.raises(ValueError, match="argument 'x' contains 1 NaN or Inf"):
        _validate(linreg, x.at[2, 1].set(jnp.nan), y)


def test_validate_dataset_inf_in_y(linreg):
    x, y = _dataset()
    with pytest.raises(ValueError, match="argument 'y' contains 2 NaN or Inf"):
        _validate(linreg, x, y.at[0].set(jnp.inf).at[3].set(-jnp.inf))


def test_validate_dataset_wrong_feature_dim(linreg):
    x, y = _dataset(num_features=NUM_FEATURES + 1)
    with pytest.raises(ValueError, match="argument 'x'") as info:
        _validate(linreg, x, y)
    message = str(info.value)
    assert f"expected per-observation shape ({NUM_FEATURES},)" in message
    assert f"got ({NUM_FEATURES + 1},)" in message
    assert f"shape ({NUM_OBS}, {NUM_FEATURES + 1})" in message


def test_validate_dataset_empty(linreg):
    x, y = jnp.zeros((0, NUM_FEATURES)), jnp.zeros((0,))
    with pytest.raises(ValueError, match=r"Empty data set: arguments \('x', 'y'\)"):
        _validate(linreg, x, y)


def test_validate_dataset_too_many_observations(linreg):
    x, y = _dataset()
    with pytest.raises(ValueError, match=f"{NUM_OBS} observations, more than the 4 .*max_obs"):
        _validate(linreg, x, y, max_obs=4)


def test_validate_dataset_disagreeing_num_obs(linreg):
    x, y = _dataset()
    with pytest.raises(ValueError, match=rf"number of observations: \{{'x': {NUM_OBS}, 'y': 4\}}"):
        _validate(linreg, x, y[:4])


def test_validate_dataset_disagreeing_batch(linreg):
    x, y = _dataset()
    with pytest.raises(ValueError, match="number of data sets"):
        _validate(linreg, jnp.stack([x, x]), y)


def test_validate_dataset_missing_observations(linreg):
    x, _ = _dataset()
    with pytest.raises(ValueError, match="argument 'y' \\(observed site 'y'\\) is None"):
        _validate(linreg, x, None)


# ---------------------------------------------------------------------------------------------
# Bad inputs at the guide
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guide():
    guide = AutoAmortizedMultivariateNormal(model_known_noise, **NETWORK)
    return guide.setup(jax.random.key(0), design_fn, GUIDE_NUM_OBS)


@pytest.fixture(scope="module")
def guide_data():
    return _dataset(num_obs=10, num_features=GUIDE_FEATURES, seed=1)


def _sample(guide, x, y, key=None):
    key = jax.random.key(0) if key is None else key
    return guide.sample_posterior(key, guide.init_params(), x, y, sample_shape=(10,))


def test_guide_accepts_good_input(guide, guide_data):
    draws = _sample(guide, *guide_data)
    assert {k: v.shape for k, v in draws.items()} == {"w": (10, GUIDE_FEATURES), "b": (10,)}
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in draws.values())


@pytest.mark.parametrize("arg", ["x", "y"])
def test_guide_rejects_nan(guide, guide_data, arg):
    x, y = guide_data
    if arg == "x":
        x = x.at[0, 0].set(jnp.nan)
    else:
        y = y.at[-1].set(jnp.nan)
    with pytest.raises(ValueError, match=f"argument '{arg}' contains 1 NaN"):
        _sample(guide, x, y)


def test_guide_rejects_wrong_feature_size(guide):
    x, y = _dataset(num_obs=10, num_features=GUIDE_FEATURES - 1)
    with pytest.raises(
        ValueError, match=rf"'x': expected per-observation shape \({GUIDE_FEATURES},\)"
    ):
        _sample(guide, x, y)


def test_guide_rejects_too_many_observations(guide):
    x, y = _dataset(num_obs=GUIDE_NUM_OBS[1] + 1, num_features=GUIDE_FEATURES)
    with pytest.raises(ValueError, match="max_obs"):
        _sample(guide, x, y)


def test_guide_rejects_int_seed(guide, guide_data):
    with pytest.raises(TypeError, match=r"jax\.random\.key\(0\)"):
        _sample(guide, *guide_data, key=0)


def test_guide_setup_rejects_int_seed():
    guide = AutoAmortizedMultivariateNormal(model_known_noise, **NETWORK)
    with pytest.raises(TypeError, match=r"key: .*jax\.random\.key\(0\)"):
        guide.setup(0, design_fn, GUIDE_NUM_OBS)
    assert not guide.is_setup


def test_guide_not_set_up():
    guide = AutoAmortizedMultivariateNormal(model_known_noise, **NETWORK)
    with pytest.raises(RuntimeError, match=r"guide\.setup\("):
        guide.init_params()


def test_guide_unknown_observed_site():
    with pytest.raises(ValueError, match="'nope'"):
        AutoAmortizedMultivariateNormal(model_known_noise, observed=("nope",), **NETWORK)


def test_guide_observed_site_not_in_model():
    """An argument that exists but names no sample site: the check that does work today."""
    guide = AutoAmortizedMultivariateNormal(model_known_noise, observed={"obs": "y"}, **NETWORK)
    with pytest.raises(ValueError, match="no sample site 'obs'"):
        guide.setup(jax.random.key(0), design_fn, GUIDE_NUM_OBS)


def discrete_model(x, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    switch = numpyro.sample("switch", dist.Bernoulli(0.5))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ w + switch, 1.0), obs=y)


def test_guide_setup_rejects_discrete_latent():
    guide = AutoAmortizedMultivariateNormal(discrete_model, **NETWORK)
    with pytest.raises(ValueError, match="'switch' is discrete"):
        guide.setup(jax.random.key(0), design_fn, GUIDE_NUM_OBS)
    assert not guide.is_setup


def test_select_dataset_drops_padding_and_keeps_shared_values():
    import numpy as np

    from amortized_ppl.data import select_dataset

    arguments = {"x": jnp.arange(12.0).reshape(2, 3, 2), "y": jnp.arange(6.0).reshape(2, 3),
                 "prior": jnp.ones((2, 4)), "sigma": 0.5}
    mask = np.array([[True, True, True], [True, False, True]])
    one = select_dataset(arguments, mask, 1, ("x", "y"))
    np.testing.assert_array_equal(one["y"], [3.0, 5.0])
    assert one["x"].shape == (2, 2) and one["prior"].shape == (4,) and one["sigma"] == 0.5
