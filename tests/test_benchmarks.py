"""Smoke test of the latency benchmark script (benchmarks/bench_latency.py) in quick mode."""

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
