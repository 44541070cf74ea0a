"""Smoke tests of the benchmark scripts (latency, flows) in quick mode."""

import json
from pathlib import Path

import pytest

from tests.helpers import load_script

BENCH_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_latency.py"


def _load_bench():
    return load_script(BENCH_PATH)


# About 35 s on an idle 2-CPU machine (90 s when other jobs share it), nearly all of it compilation
# (guide set-up and training, NUTS, two shapes of the guide's sampler), so it is opt-in.
@pytest.mark.slow
def test_quick_benchmark_writes_positive_timings_and_ratios(tmp_path):
    bench = _load_bench()
    out = tmp_path / "latency.json"
    argv = ["--quick", "--train-steps", "5", "--num-warmup", "50", "--num-samples", "50",
            "--batch", "8", "--out", str(out)]

    returned = bench.main(argv)

    results = json.loads(out.read_text())
    assert results["cases"] == json.loads(json.dumps(returned["cases"]))
    assert results["environment"]["platform"]
    assert results["environment"]["cpu_count"] >= 1
    (case,) = results["cases"]
    assert case["num_obs"] == 50
    for part in ("amortized_single", "nuts", "amortized_batch"):
        assert case[part]["warm_median_s"] > 0, part
        assert case[part]["first_call_s"] > 0, part
        assert case[part]["compile_s"] >= 0, part
    assert case["amortized_batch"]["num_datasets"] == 8
    assert case["amortized_batch"]["per_dataset_s"] > 0
    assert set(case["ratios"]) == {"nuts_over_single", "nuts_over_batched_per_dataset"}
    assert all(ratio > 0 for ratio in case["ratios"].values())
    for name in ("amortized_single", "amortized_batch", "nuts"):
        assert 0 <= case["accuracy"][name] < float("inf"), name


@pytest.mark.slow  # trains two tiny guides for 20 steps each and runs SBC twice
def test_the_flow_benchmark_reports_its_methods_against_the_closed_form(tmp_path):
    bench = load_script(BENCH_PATH.parent / "bench_flows.py")
    out = tmp_path / "flows.json"
    # Two methods besides Laplace (a flow with Newton steps, a Gaussian network alone): each
    # further one only adds compilation; the library tests cover their guides.
    bench.main(["--models", "bernoulli_rate", "--quick", "--num-test", "8", "--methods",
                "flow_newton,gauss_alone", "--out", str(out)])
    results = json.loads(out.read_text())
    case = results["models"]["bernoulli_rate"]
    assert case["reference"] == "closed form"
    assert set(case["methods"]) == {"laplace", "flow_newton", "gauss_alone"}
    for name, entry in case["methods"].items():
        assert 0.0 <= entry["median_c2st"] <= 1.0, name
        assert entry["seconds_per_dataset"] > 0, name
        assert entry["non_finite_datasets"] == 0, name
    assert 0.0 <= case["methods"]["flow_newton"]["sbc_p_value"] <= 1.0
    assert 0.0 <= case["methods"]["flow_newton"]["sbc_p_value_sd_halved"] <= 1.0
    table = bench.markdown_table(results)
    assert "**bernoulli_rate**" in table and "| flow_newton |" in table


@pytest.mark.slow  # two tiny guides, 30 steps each, scored on 10 held-out data sets
def test_the_network_alone_benchmark_scores_each_variant_against_the_closed_form(tmp_path):
    bench = load_script(BENCH_PATH.parent / "bench_network_alone.py")
    out = tmp_path / "alone.json"
    bench.main(["--quick", "--num-test", "10", "--variants", "mvn,flow_batch_128,factors",
                "--out", str(out)])
    results = json.loads(out.read_text())
    assert set(results["variants"]) == {"mvn", "flow_batch_128", "factors"}
    assert results["variants"]["flow_batch_128"]["batch_size"] == 128
    for name, entry in results["variants"].items():
        assert entry["steps"] == 30, name
        for scores in (entry, entry["untrained"]):
            assert 0 < scores["median_mean_error_sd"] <= scores["worst_mean_error_sd"], name
            assert 0 <= scores["coverage_90"] <= 1 and 0 <= scores["sd_ok"] <= 1, name
    # Laplace is exact for this model: its row is the Monte Carlo floor of 2,000 draws
    # (standard error of a mean 1/sqrt(2000) = 0.022 SD; the median |error| about 0.67 of it)
    assert results["laplace"]["median_mean_error_sd"] < 0.05
    assert 0.95 < results["laplace"]["median_sd_ratio"] < 1.05
    table = bench.markdown_table([str(out)])
    assert "| flow_batch_128 |" in table and "| factors, untrained |" in table
    assert "| Laplace per data set (model density) |" in table


@pytest.mark.slow  # NUTS references and SVI at two pass counts (about 25 s)
def test_the_svi_convergence_benchmark_counts_evaluations_and_matches(tmp_path):
    bench = load_script(BENCH_PATH.parent / "bench_svi_convergence.py")
    out = tmp_path / "svi.json"
    bench.main(["--quick", "--out", str(out)])
    size = json.loads(out.read_text())["sizes"][0]
    assert size["num_obs"] == 2000 and size["batches_per_pass"] == 2
    per_pass = size["gradient_evaluations_per_pass"]
    assert per_pass == 2 * 2 * 6  # two mini-batches, 2 D cubature points, D = 6
    for table in (size["base"], size["base_laplace_start"], size["svi"]):
        for passes, entry in table.items():
            assert entry["gradient_evaluations"] == int(passes) * per_pass
            assert 0 <= entry["median_error"] <= entry["max_error"]
    # a second base pass re-linearizes where the first ended: it must not be worse
    assert size["base"]["2"]["median_error"] <= size["base"]["1"]["median_error"]
    # from the Laplace fit of one mini-batch, one pass starts near the posterior (measured at
    # N = 2,000: 0.034 SD against 1.16 from the prior)
    assert (size["base_laplace_start"]["1"]["median_error"]
            < 0.5 * size["base"]["1"]["median_error"])
    assert set(size["svi_to_match_base"]) == {"1", "2"}
    assert size["laplace"]["median_error"] < 0.2  # Laplace is close to NUTS at N = 2,000


@pytest.mark.slow  # trains for 2 steps, NUTS and SVI on one small data set (about 90 s)
def test_the_learned_iterative_benchmark_scores_every_method_in_one_run(tmp_path):
    bench = load_script(BENCH_PATH.parent / "bench_iterative_learned.py")
    out = tmp_path / "learned.json"
    bench.main(["--quick", "--dims", "2", "--sizes", "200", "--num-datasets", "1",
                "--train-steps", "2", "--out", str(out)])
    (model,) = json.loads(out.read_text())["models"]
    assert model["dim"] == 2 and model["train_steps"] == 2
    (size,) = model["sizes"]
    assert size["num_obs"] == 200 and size["batch_size"] == 20 and size["batches_per_pass"] == 10
    assert size["gradient_evaluations_per_pass"] == 10 * 2 * 3  # P x 2 D, D = 3
    methods = size["methods"]
    for name in ("base", "learned"):
        for p in bench.PASSES:
            entry = methods[f"{name}_{p}"]
            assert entry["gradient_evaluations"] == p * size["gradient_evaluations_per_pass"]
            assert 0 <= entry["median_error_vi"] <= entry["max_error_vi"]
            assert 0 <= entry["median_error_nuts"] <= entry["max_error_nuts"]
            assert entry["seconds_per_dataset"] > 0
    # the base's own passes head for the converged base (its 16th pass)
    assert methods["base_4"]["median_error_vi"] < methods["base_1"]["median_error_vi"]
    assert 0 < size["nuts_mc_error"] < 0.1 and "laplace" in methods
    assert set(size["matches"]) == {"1", "2", "4"} and set(size["svi"]) == {"1", "4"}
    table = bench.markdown_table(out)
    assert "| 200 (10) | 1 |" in table and "NUTS Monte Carlo error" in table


@pytest.mark.slow  # 20 training steps, NUTS on two data sets, two refinement steps (about 2 min)
def test_the_flow_state_benchmark_scores_every_method_in_one_run(tmp_path):
    bench = load_script(BENCH_PATH.parent / "bench_iterative_flow.py")
    out = tmp_path / "flow.json"
    bench.main(["--quick", "--models", "logistic_regression", "--sizes", "40",
                "--num-test", "2", "--steps", "2", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["complete"] and results["steps"] == [2]
    size = results["models"]["logistic_regression"]["sizes"]["40"]
    assert size["passes"] == {"2": 1}  # two mini-batches of 20 per pass
    methods = size["methods"]
    assert set(methods) == {"laplace", "gauss_base", "amortized_flow", "gauss_svi_2",
                            "flow_off_2", "flow_learned_2"}
    for name, entry in methods.items():
        assert 0 <= entry["median_mean_error_sd"] <= entry["worst_mean_error_sd"], name
        assert 0.3 < entry["median_c2st"] <= 1.0 and entry["seconds_per_dataset"] > 0, name
    assert methods["flow_off_2"]["gradient_evaluations"] == 2 * results["draws_per_step"]
    assert methods["laplace"]["gradient_evaluations"] == 0
    assert "| logistic_regression (40) | 2 |" in bench.markdown_table(results)


@pytest.mark.slow  # training and NUTS-free references, about half a minute
def test_the_sbibm_benchmark_scores_every_variant_against_the_reference(tmp_path):
    bench = load_script(BENCH_PATH.parent / "bench_sbibm.py")
    out = tmp_path / "sbibm.json"
    argv = ["--tasks", "two_moons", "--budgets", "400", "--num-observations", "1",
            "--num-draws", "500", "--psis-proposals", "2000", "--epochs", "60",
            "--batch-size", "100",
            "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    bench.main(argv)
    results = json.loads(out.read_text())
    row = results["tasks"]["two_moons"]["400"]
    assert row["training"]["steps"] == 180 and row["training"]["batch_size"] == 100
    for variant in bench.VARIANTS:
        assert 0.4 < row[variant]["c2st_mean"] <= 1.0 and row[variant]["all_finite"], variant
    for variant in ("psis", "untrained_psis", "laplace_psis"):
        assert 0 < row[variant]["ess_median"] <= 2000, variant
    # The trained network is closer to the reference than the untrained one.
    assert row["amortized"]["c2st_mean"] < row["untrained"]["c2st_mean"]
    assert list((tmp_path / "cache").glob("two_moons_0_500.npy"))
    assert "| two_moons | 400 |" in bench.markdown_table(results)
    with pytest.raises(SystemExit):
        bench.main(["--tasks", "two_moon", "--out", str(out)])
    with pytest.raises(SystemExit):
        bench.main(["--variants", "amortized,laplce", "--out", str(out)])


def test_an_observation_whose_reference_fails_its_checks_is_left_out_by_name():
    from amortized_ppl.models.sbibm import ReferenceCheckError, get_task

    bench = load_script(BENCH_PATH.parent / "bench_sbibm.py")
    task = get_task("two_moons")

    def score(i):
        if i == 1:
            raise ReferenceCheckError("slcp: the NUTS reference did not converge")
        return {"c2st": 0.5 + i}

    rows, failures = bench.each_observation(task, 3, score)
    assert rows == [{"c2st": 0.5}, {"c2st": 2.5}]
    assert failures["observations"] == [0, 2]
    assert failures["reference_failures"] == [
        {"observation": 1, "error": "slcp: the NUTS reference did not converge"}]
    with pytest.raises(ReferenceCheckError, match="no observation has a reference"):
        bench.each_observation(task, 2, lambda i: score(1))
