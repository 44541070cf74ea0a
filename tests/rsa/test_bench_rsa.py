"""Smoke test of benchmarks/bench_rsa.py in quick mode (opt-in: about 5 s)."""

import json
from pathlib import Path

import pytest

from tests.helpers import load_script

BENCH_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_rsa.py"


@pytest.mark.slow
def test_quick_benchmark_writes_every_configuration_and_the_figure(tmp_path):
    bench = load_script(BENCH_PATH)
    out = tmp_path / "rsa.json"
    returned = bench.main(["--quick", "--num-problems", "8", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["command"].endswith("--out " + str(out))
    assert results["environment"]["jax"] and results["environment"]["cpu_count"] >= 1
    pairs = [(r["population_size"], r["subset_size"]) for r in results["configurations"]]
    assert pairs == [(4, 1), (4, 4), (16, 1), (16, 4)]
    for row in results["configurations"]:
        for name in ("mean_score", "pass_at_n", "majority_score", "diversity", "step_accuracy"):
            assert len(row[name]["mean"]) == len(row[name]["sem"]) == 4, name
            assert all(0.0 <= v <= 1.0 for v in row[name]["mean"]), name
    assert (tmp_path / "rsa.png").stat().st_size > 0
    assert returned["configurations"] == results["configurations"]
