"""``amortized-ppl`` end to end on a model of the user's: ``train`` a guide of a Poisson rate
model defined in a file, ``sample`` it for a data set in a CSV file, then time it against NUTS
and run the trust suite on it (slow tier: each command compiles its programs)."""

import json

import numpy as np
import pytest

from amortized_ppl.cli import main

MODEL = """\
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist


def model(exposure, y=None):
    rate = numpyro.sample("rate", dist.Gamma(2.0, 1.0))
    with numpyro.plate("data", exposure.shape[0]):
        numpyro.sample("y", dist.Poisson(rate * exposure), obs=y)


def design(key, num_obs):
    return (jnp.ones(num_obs),), {}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run folder of `amortized-ppl train` on the Poisson model (a few steps)."""
    folder = tmp_path_factory.mktemp("cli_e2e")
    (folder / "poisson.py").write_text(MODEL)
    run = folder / "run"
    code = main(
        [
            "train",
            "--model",
            f"{folder / 'poisson.py'}:model",
            "--design",
            f"{folder / 'poisson.py'}:design",
            "--num-obs",
            "5,20",
            "--guide",
            "normal",
            "--steps",
            "20",
            "--batch-size",
            "16",
            "--out",
            str(run),
            "--quiet",
        ]
    )
    assert code == 0
    return folder, run


@pytest.mark.slow
def test_train_then_sample_from_a_csv_file(trained, capsys):
    folder, run = trained
    settings = json.loads((run / "train.json").read_text())
    assert settings["model"] == f"{folder / 'poisson.py'}:model"
    assert settings["num_obs"] == [5, 20] and settings["steps_done"] == 20
    data = folder / "counts.csv"
    data.write_text("exposure,y\n1.0,3\n1.0,5\n2.0,7\n1.0,2\n1.0,4\n1.5,6\n")
    out = folder / "draws.npz"
    assert (
        main(
            [
                "sample",
                "--run",
                str(run),
                "--data",
                str(data),
                "--num-samples",
                "500",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "Wrote 500 posterior draws of rate for 6 observations" in capsys.readouterr().out
    with np.load(out) as draws:
        assert set(draws.files) == {"rate"}
        rate = draws["rate"]
    assert rate.shape == (500,) and np.all(np.isfinite(rate)) and np.all(rate > 0)
    netcdf = folder / "draws.nc"
    assert (
        main(
            [
                "sample",
                "--run",
                str(run),
                "--data",
                str(data),
                "--num-samples",
                "500",
                "--out",
                str(netcdf),
            ]
        )
        == 0
    )
    import arviz as az

    idata = az.from_netcdf(netcdf)
    assert idata.posterior["rate"].shape == (1, 500)
    np.testing.assert_array_equal(idata.observed_data["y"].values, [3, 5, 7, 2, 4, 6])


@pytest.mark.slow
def test_benchmark_times_a_trained_run_against_nuts(trained, capsys):
    _, run = trained
    assert (
        main(
            [
                "benchmark",
                "--run",
                str(run),
                "--num-datasets",
                "2",
                "--num-samples",
                "100",
                "--num-warmup",
                "50",
                "--num-chains",
                "2",
                "--num-obs",
                "10",
            ]
        )
        == 0
    )
    report = json.loads((run / "benchmark.json").read_text())
    assert len(report["per_dataset"]) == 2 and report["num_obs"] == 10
    assert all(
        row["nuts_seconds"] > 0 and row["amortized_seconds"] > 0 for row in report["per_dataset"]
    )
    assert "median speed-up" in capsys.readouterr().out


@pytest.mark.slow
def test_diagnose_takes_a_trained_run_of_any_model(trained):
    _, run = trained
    assert (
        main(
            [
                "diagnose",
                "--run",
                str(run),
                "--num-sbc",
                "50",
                "--num-in",
                "2",
                "--num-ood",
                "1",
                "--num-reference",
                "0",
                "--num-ood-simulations",
                "400",
                "--quiet",
            ]
        )
        == 0
    )
    report = json.loads((run / "diagnose" / "diagnostics.json").read_text())
    assert set(report["groups"]) >= {"in_distribution", "outliers"}
    assert report["config"]["ood_num_obs"] == 20  # capped at the largest training size


NEW_USER = """
import sys
import arviz as az
import jax
import jax.numpy as jnp
import matplotlib
matplotlib.use("Agg")
from amortized_ppl import guide_inference_data, load_guide
sys.path.insert(0, sys.argv[1])
from poisson import model
guide, params = load_guide(sys.argv[2], model)  # one call: nothing to set up
exposure, y = jnp.array([1.0, 1.0, 2.0, 1.0, 1.0, 1.5]), jnp.array([3, 5, 7, 2, 4, 6])
idata = guide_inference_data(jax.random.key(0), guide, params, exposure, y, num_draws=400,
                             num_prior=100)
loo = az.loo(idata)
ranked = az.compare({"poisson": idata, "again": idata})
az.plot_ppc(idata)
print("LOO", float(loo.elpd_loo), len(ranked))
"""


@pytest.mark.slow
def test_a_new_user_loads_the_run_in_a_fresh_process_and_compares_with_arviz(trained):
    # The "done when": trained from the command line, loaded in a fresh Python process
    # with one call, then az.loo, az.compare and a posterior predictive plot on its output.
    import subprocess
    import sys

    folder, run = trained
    done = subprocess.run([sys.executable, "-c", NEW_USER, str(folder), str(run / "checkpoint")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("LOO ") and line.endswith(" 2")
    assert np.isfinite(float(line.split()[1]))
