"""The demo command end to end at tiny sizes: it trains, evaluates and writes its outputs."""

import json

from amortized_ppl.cli import main


def test_demo_writes_results_plots_and_checkpoint(tmp_path):
    out = tmp_path / "demo"
    code = main([
        "demo", "--steps", "4", "--batch-size", "8", "--num-test", "4", "--num-nuts", "1",
        "--newton-steps", "1", "--out", str(out), "--quiet",
    ])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["train_steps"] == 4
    closed_form = results["vs_closed_form"]
    assert 0.0 <= closed_form["coverage"] <= 1.0
    assert closed_form["median_mean_error"] >= 0.0
    assert results["nuts_seconds_per_dataset"] > 0 and results["speedup_single"] > 0
    assert len(results["vs_nuts"]["per_dataset"]) == 1
    for name in ("calibration.png", "posterior_vs_nuts.png", "arviz_summary_amortized.txt",
                 "arviz_summary_nuts.txt", "checkpoint/meta.json", "checkpoint/arrays.npz"):
        assert (out / name).exists(), name
