"""Tests of the ArviZ conversion: layouts, data-set axis, dims from the model, validation.

Means are checked on draws standardized to an exact sample mean and SD, so ``az.summary`` must
reproduce them up to its rounding (0.x rounds to 3 significant decimals here; 1e-2 is loose).
"""

import warnings

import jax.numpy as jnp
import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from amortized_ppl.diagnostics import model_dims, summary, to_inference_data  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # ArviZ 0.2x announces its 1.0 refactor
    import arviz as az  # noqa: E402

NUM_DRAWS = 200
NUM_OBS = 6
NUM_FEATURES = 3


def _exact_normal(rng, shape, mean, sd, axis):
    """Draws whose sample mean and SD (ddof=1) along ``axis`` are exactly ``mean`` and ``sd``."""
    z = rng.normal(size=shape)
    z = (z - z.mean(axis=axis, keepdims=True)) / z.std(axis=axis, ddof=1, keepdims=True)
    return mean + sd * z


def _model(x, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    with numpyro.plate("groups", 2, dim=-2):
        numpyro.sample("g", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ w + b, 1.0), obs=y)


def _data():
    x = jnp.linspace(-1.0, 1.0, NUM_OBS * NUM_FEATURES).reshape(NUM_OBS, NUM_FEATURES)
    return x, jnp.arange(NUM_OBS, dtype=jnp.float32)


def _summary_means(idata):
    summary = az.summary(idata, kind="stats")
    return dict(zip(summary.index, summary["mean"])), dict(zip(summary.index, summary["sd"]))


def test_summary_recovers_means_of_guide_draws():
    rng = np.random.default_rng(0)
    samples = {
        "w": _exact_normal(rng, (NUM_DRAWS, 2), np.array([1.5, -2.0]), np.array([0.5, 2.0]), 0),
        "b": _exact_normal(rng, (NUM_DRAWS,), 3.0, 0.25, 0),
    }
    idata = to_inference_data(samples)
    assert idata.posterior["w"].shape == (1, NUM_DRAWS, 2)
    means, sds = _summary_means(idata)
    np.testing.assert_allclose(
        [means["w[0]"], means["w[1]"], means["b"]], [1.5, -2.0, 3.0], atol=1e-2
    )
    np.testing.assert_allclose([sds["w[0]"], sds["w[1]"], sds["b"]], [0.5, 2.0, 0.25], atol=1e-2)


def test_guide_draws_are_marked_independent_and_summarized_without_mcmc_diagnostics():
    # Issue 15: az.summary on guide draws warned (one chain) and gave NaN r_hat.
    rng = np.random.default_rng(2)
    idata = to_inference_data({"b": _exact_normal(rng, (NUM_DRAWS,), 3.0, 0.25, 0)})
    assert idata.posterior.attrs["sampling"] == "independent draws"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = summary(idata)
    assert "r_hat" not in table.columns and "ess_bulk" not in table.columns
    assert abs(table.loc["b", "mean"] - 3.0) < 1e-2
    with pytest.raises(ValueError, match="not MCMC chains; R-hat and ESS do not apply"):
        summary(idata, kind="diagnostics")
    chains = to_inference_data({"b": rng.normal(size=(4, 50))}, layout="chains")
    assert "sampling" not in chains.posterior.attrs and "r_hat" in summary(chains).columns


def test_chains_layout_keeps_chains():
    rng = np.random.default_rng(1)
    samples = {"b": _exact_normal(rng, (4, NUM_DRAWS // 4), -1.0, 1.0, None)}
    idata = to_inference_data(samples, layout="chains", sample_stats={"lp": np.zeros((4, 50))})
    assert idata.posterior["b"].shape == (4, NUM_DRAWS // 4)
    assert idata.sample_stats["lp"].shape == (4, NUM_DRAWS // 4)
    means, _ = _summary_means(idata)
    assert means["b"] == pytest.approx(-1.0, abs=1e-2)


# ArviZ 0.23 calls a matplotlib 3.11 API deprecated for its own internal use; not ours to fix.
@pytest.mark.filterwarnings("ignore::matplotlib.MatplotlibDeprecationWarning")
def test_plot_posterior_runs():
    rng = np.random.default_rng(2)
    idata = to_inference_data({"w": rng.normal(size=(100, 2)), "b": rng.normal(size=100)})
    if hasattr(az, "plot_posterior"):  # ArviZ 0.x
        axes = az.plot_posterior(idata)
        assert np.size(axes) == 3
    else:  # ArviZ 1.x renamed it plot_dist
        az.plot_dist(idata, backend="matplotlib")
    assert plt.get_fignums()
    plt.close("all")


def test_dataset_axis_gives_one_object_per_data_set():
    rng = np.random.default_rng(3)
    num_datasets = 3
    means = np.array([-1.0, 0.0, 2.0])
    samples = {"b": _exact_normal(rng, (num_datasets, NUM_DRAWS), means[:, None], 1.0, 1)}
    observed = {"y": rng.normal(size=(num_datasets, NUM_OBS))}
    idatas = to_inference_data(samples, observed_data=observed, dataset_axis=True)
    assert isinstance(idatas, list) and len(idatas) == num_datasets
    for index, idata in enumerate(idatas):
        assert idata.posterior["b"].shape == (1, NUM_DRAWS)
        np.testing.assert_array_equal(idata.observed_data["y"].values, observed["y"][index])
        assert _summary_means(idata)[0]["b"] == pytest.approx(means[index], abs=1e-2)


def test_model_dims_names_plates():
    x, y = _data()
    dims = model_dims(_model, x, y)
    assert dims == {"w": ["w_dim_0"], "b": [], "g": ["groups", "g_dim_1"], "y": ["data"]}


def test_model_dims_used_for_observed_data_and_predictive():
    rng = np.random.default_rng(4)
    x, y = _data()
    samples = {
        "w": rng.normal(size=(50, NUM_FEATURES)),
        "b": rng.normal(size=50),
        "g": rng.normal(size=(50, 2, 1)),
    }
    idata = to_inference_data(
        samples,
        observed_data={"y": y},
        posterior_predictive={"y": rng.normal(size=(50, NUM_OBS))},
        dims={**model_dims(_model, x, y), "w": ["feature"]},
        coords={"feature": ["a", "b", "c"]},
    )
    assert idata.observed_data["y"].dims == ("data",)
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "data")
    assert idata.posterior["w"].dims == ("chain", "draw", "feature")
    assert list(idata.posterior["feature"].values) == ["a", "b", "c"]
    assert idata.posterior["g"].dims == ("chain", "draw", "groups", "g_dim_1")


def test_jax_arrays_accepted():
    idata = to_inference_data({"b": jnp.zeros(10)}, prior={"b": jnp.ones(20)})
    assert idata.prior["b"].shape == (1, 20)


@pytest.mark.parametrize("samples", [[1.0, 2.0], np.zeros((10, 2)), None])
def test_non_dict_samples_rejected(samples):
    with pytest.raises(TypeError, match="samples must be a dict"):
        to_inference_data(samples)


def test_nan_warns_naming_site():
    value = np.zeros((10, 2))
    value[3, 1] = np.nan
    with pytest.warns(RuntimeWarning, match="'w'.*1 NaN"):
        to_inference_data({"w": value, "b": np.zeros(10)})


def test_mismatched_draws_rejected_naming_sites():
    with pytest.raises(ValueError, match="'w'.*'b'"):
        to_inference_data({"w": np.zeros((10, 2)), "b": np.zeros(12)})


def test_mismatched_chains_rejected():
    with pytest.raises(ValueError, match="chain, draw"):
        to_inference_data({"w": np.zeros((2, 10)), "b": np.zeros((4, 5))}, layout="chains")


def test_too_few_axes_rejected():
    with pytest.raises(ValueError, match="'b'.*at least 2 leading axes"):
        to_inference_data({"b": np.zeros(10)}, layout="chains")


def test_unknown_layout_rejected():
    with pytest.raises(ValueError, match="layout must be one of"):
        to_inference_data({"b": np.zeros(10)}, layout="chain")


def test_dataset_counts_must_agree():
    with pytest.raises(ValueError, match="number of data sets"):
        to_inference_data(
            {"b": np.zeros((3, 10))}, observed_data={"y": np.zeros((2, 5))}, dataset_axis=True
        )


def test_too_many_dim_names_rejected():
    with pytest.raises(ValueError, match=r"dims\['w'\].*1 non-sample"):
        to_inference_data({"w": np.zeros((10, 2))}, dims={"w": ["a", "b"]})


def test_log_likelihood_and_constant_data_groups():
    # An observed site with an event axis: its log-likelihood has none, and ArviZ drops the
    # event axis' name there (no warning, no error for "more dims than axes").
    rng = np.random.default_rng(5)
    x, _ = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        idata = to_inference_data(
            {"b": rng.normal(size=50)},
            observed_data={"y": rng.normal(size=(NUM_OBS, 2))},
            posterior_predictive={"y": rng.normal(size=(50, NUM_OBS, 2))},
            log_likelihood={"y": rng.normal(size=(50, NUM_OBS))},
            constant_data={"x": np.asarray(x)},
            dims={"y": ["data", "y_dim_1"], "x": ["data", "feature"]},
        )
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "data")
    assert idata.log_likelihood.attrs["sampling"] == "independent draws"
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "data", "y_dim_1")
    assert idata.constant_data["x"].dims == ("data", "feature")
    np.testing.assert_array_equal(idata.constant_data["x"].values, np.asarray(x))
    chains = to_inference_data(
        {"b": rng.normal(size=(2, 25))},
        layout="chains",
        log_likelihood={"y": rng.normal(size=(2, 25, NUM_OBS))},
    )
    assert chains.log_likelihood["y"].shape == (2, 25, NUM_OBS)
    with pytest.raises(ValueError, match="log_likelihood: site 'y' needs at least 2 leading"):
        to_inference_data({"b": np.zeros((2, 5))}, layout="chains", log_likelihood={"y": [1.0]})


def test_constant_data_with_dataset_axis():
    idatas = to_inference_data(
        {"b": np.zeros((2, 10))},
        constant_data={"x": np.arange(6.0).reshape(2, 3)},
        dataset_axis=True,
    )
    np.testing.assert_array_equal(idatas[1].constant_data["x"].values, [3.0, 4.0, 5.0])
    with pytest.raises(ValueError, match="number of data sets"):
        to_inference_data(
            {"b": np.zeros((2, 10))}, constant_data={"x": np.zeros((3, 4))}, dataset_axis=True
        )
