"""The demo and diagnose commands end to end at tiny sizes: they train, evaluate and write outputs.

The end-to-end runs take one to two minutes each (nearly all compilation), so they are in the slow
tier (``--runslow``); the command line's own checks are in ``test_cli.py``.
"""

import json

import pytest

from amortized_ppl.cli import main

NUM_TEST = 20
"""Held-out data sets the demo compares with the closed form (20 x 9 coordinates)."""


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "demo"
    code = main(
        [
            "demo",
            "--steps",
            "4",
            "--batch-size",
            "8",
            "--num-test",
            str(NUM_TEST),
            "--num-nuts",
            "1",
            "--newton-steps",
            "1",
            "--out",
            str(out),
            "--quiet",
            "--no-diagnose",
        ]
    )
    assert code == 0
    return out


@pytest.mark.slow
def test_demo_writes_results_plots_and_checkpoint(demo_run):
    out = demo_run
    results = json.loads((out / "results.json").read_text())
    assert results["train_steps"] == 4
    # Four training steps leave the network barely trained; one Newton step on the model's log
    # density (exact on this Gaussian posterior when it reaches the mode) does the work. The test's
    # settings with seeds 0-4 gave median |mean error| 0.034-0.047 posterior SDs, every SD ratio in
    # [0.8, 1.25], median SD ratios 0.992-1.019 and 90% coverage 0.889-0.939 (20 data sets x 9
    # coordinates; the Monte Carlo floor of the error with 1,000 draws is about 0.02). A guide
    # without Newton steps is several SDs off after this budget. The bounds leave room for the
    # seed-to-seed spread and fail on a broken Newton stage or posterior family.
    closed_form = results["vs_closed_form"]
    assert closed_form["median_mean_error"] < 0.1
    assert closed_form["fraction_sd_ratio_ok"] >= 0.9
    assert 0.95 <= closed_form["median_sd_ratio"] <= 1.05
    assert 0.8 <= closed_form["coverage"] <= 0.98
    # Against NUTS on one data set (4 x 1,000 draws): 0.010-0.060 with seeds 0-4.
    assert results["vs_nuts"]["median_mean_error"] < 0.2
    assert results["nuts_seconds_per_dataset"] > 0 and results["speedup_single"] > 0
    assert len(results["vs_nuts"]["per_dataset"]) == 1
    assert "trust" not in results  # --no-diagnose
    for name in (
        "calibration.png",
        "posterior_vs_nuts.png",
        "arviz_summary_amortized.txt",
        "arviz_summary_nuts.txt",
        "checkpoint/meta.json",
        "checkpoint/arrays.npz",
    ):
        assert (out / name).exists(), name


@pytest.mark.slow
def test_diagnose_reads_the_demo_checkpoint_and_writes_its_report(demo_run, tmp_path):
    out = tmp_path / "diagnose"
    code = main(
        [
            "diagnose",
            "--run",
            str(demo_run),
            "--out",
            str(out),
            "--num-sbc",
            "60",
            "--num-in",
            "4",
            "--num-ood",
            "3",
            "--num-reference",
            "0",
            "--num-ood-simulations",
            "600",
            "--quiet",
        ]
    )
    assert code == 0
    report = json.loads((out / "diagnostics.json").read_text())
    assert report["sbc"]["num_datasets"] == 60
    # Deliberately broken copies of the guide are rejected even with 60 data sets.
    assert all(v["rejects_at_1pct"] for v in report["sbc_broken"].values())
    assert set(report["groups"]) == {"in_distribution", "covariates_x10", "outliers"}
    scaled = report["groups"]["covariates_x10"]["summary"]
    assert scaled["num_datasets"] == 3 and scaled["fraction_ood_flagged"] == 1.0
    assert scaled["paths"]["nuts"] == 3
    for name in (
        "sbc_ecdf.png",
        "sbc_ranks.png",
        "coverage.png",
        "recovery.png",
        "khat.png",
    ):
        assert (out / name).stat().st_size > 0, name
    # Distances to NUTS are skipped with --num-reference 0 (compare_guide_to_reference has its
    # own tests); the default run writes them.
    assert "vs_nuts" not in report and not (out / "pairs_vs_nuts.png").exists()
