"""Streaming over groups: every group's posterior at 10^3 to 10^5 groups in bounded memory.

Issue 18's streaming targets, on the varying-slopes regression (groups of 10 observations):
:func:`amortized_ppl.hierarchy.stream_posterior` (damped Newton on the globals' Laplace marginal,
then each group's Gaussian, over chunks of ``--chunk-size`` groups) at each number of groups, with

- its compiled program's working memory (XLA's ``memory_analysis``: temporaries, beyond the
  arguments and outputs), and its warm seconds (the first call compiles);
- the reference: NUTS on :func:`~amortized_ppl.models.hierarchical.varying_slopes_collapsed`
  (every group's locals integrated in closed form: the globals' exact posterior, by code that
  shares nothing with the Laplace steps), 4 chains x 1,000 after 500 warm-up; and every group's
  exact posterior moments by averaging its closed-form conditional Gaussian over 200 of those
  draws (Rao-Blackwellized).

Scores: median over coordinates of |mean error| / reference SD and of SD ratio, for globals and
locals.

    .venv/bin/python benchmarks/bench_hierarchical_streaming.py  # results/hierarchical_streaming.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amortized_ppl.hierarchy import inspect_hierarchical_problem, stream_posterior  # noqa: E402
from amortized_ppl.hierarchy.layout import simulate  # noqa: E402
from amortized_ppl.models import hierarchical as h  # noqa: E402
from amortized_ppl.reference import reference_posterior  # noqa: E402
from amortized_ppl.results_file import write_results  # noqa: E402

GROUP_SIZE = 10
GLOBALS = ("mu_a", "mu_b", "sigma_a", "sigma_b", "sigma_y")


def _data(key, problem, num_groups):
    mask = jnp.ones((num_groups, GROUP_SIZE), bool)
    design = dict(h.regression_design(jax.random.fold_in(key, 0), mask), mask=mask)
    data, g, _ = simulate(jax.random.fold_in(key, 1), h.varying_slopes, problem.structure, design)
    return data, g


def _exact_locals(samples, data, num_draws):
    """Per-group posterior means and SDs of (a_j, b_j): closed-form conditionals averaged over
    ``num_draws`` draws of the globals."""
    x, y = (np.asarray(data[k], np.float64) for k in ("x", "y"))
    n, sx, sxx = x.shape[1], x.sum(1), (x * x).sum(1)
    sy, sxy = y.sum(1), (x * y).sum(1)
    pick = np.linspace(0, len(samples["mu_a"]) - 1, num_draws).astype(int)
    first, second = 0.0, 0.0
    for i in pick:
        ma, mb, sa, sb, sy_ = (float(samples[k][i]) for k in GLOBALS)
        noise = sy_ ** 2
        a00, a01, a11 = 1 / sa ** 2 + n / noise, sx / noise, 1 / sb ** 2 + sxx / noise
        det = a00 * a11 - a01 ** 2
        r0, r1 = ma / sa ** 2 + sy / noise, mb / sb ** 2 + sxy / noise
        mean = np.stack([(a11 * r0 - a01 * r1) / det, (a00 * r1 - a01 * r0) / det], 1)
        var = np.stack([a11 / det, a00 / det], 1)
        first = first + mean
        second = second + var + mean ** 2
    first, second = first / len(pick), second / len(pick)
    return first, np.sqrt(np.maximum(second - first ** 2, 0.0))


def run_size(key, problem, num_groups, chunk_size, num_samples):
    data, truth = _data(key, problem, num_groups)
    run = jax.jit(lambda d: stream_posterior(problem, d, problem.global_loc,
                                             chunk_size=chunk_size))
    compiled = run.lower(data).compile()
    memory = compiled.memory_analysis()
    start = time.perf_counter()
    out = jax.block_until_ready(run(data))
    first = time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(run(data))
    warm = time.perf_counter() - start
    start = time.perf_counter()
    ref = reference_posterior(jax.random.fold_in(key, 2), h.varying_slopes_collapsed,
                              num_chains=4, num_warmup=500, num_samples=num_samples, **data)
    nuts_seconds = time.perf_counter() - start
    samples = {k: np.asarray(ref.samples[k]).reshape(-1) for k in GLOBALS}
    unconstrained = np.stack(
        [samples["mu_a"], samples["mu_b"]]
        + [np.log(samples[k]) for k in ("sigma_a", "sigma_b", "sigma_y")], 1)
    ref_mean, ref_sd = unconstrained.mean(0), unconstrained.std(0)
    mode = np.asarray(out.globals.mode)
    tril = np.asarray(out.globals.scale_tril, np.float64)
    sd = np.sqrt(np.diag(tril @ tril.T))
    local_mean, local_sd = _exact_locals(samples, data, 200)
    ours_mean = np.asarray(out.local_mean)
    ours_sd = np.sqrt(np.diagonal(np.asarray(out.local_cov), 0, 1, 2))
    return {
        "num_groups": num_groups,
        "seconds": warm, "first_seconds": first, "seconds_per_1000_groups": 1000 * warm /
        num_groups,
        "newton_steps": int(out.globals.num_steps), "converged": bool(out.globals.converged),
        "temp_bytes": int(memory.temp_size_in_bytes),
        "argument_bytes": int(memory.argument_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
        "global_error": [float(v) for v in np.abs(mode - ref_mean) / ref_sd],
        "global_sd_ratio": [float(v) for v in sd / ref_sd],
        "median_global_error": float(np.median(np.abs(mode - ref_mean) / ref_sd)),
        "max_global_error": float(np.max(np.abs(mode - ref_mean) / ref_sd)),
        "local_error_median": float(np.median(np.abs(ours_mean - local_mean) / local_sd)),
        "local_error_q90": float(np.quantile(np.abs(ours_mean - local_mean) / local_sd, 0.9)),
        "local_sd_ratio_median": float(np.median(ours_sd / local_sd)),
        "local_sd_ratio_q05_q95": [float(np.quantile(ours_sd / local_sd, q)) for q in (0.05,
                                                                                      0.95)],
        "nuts_seconds": nuts_seconds,
        "nuts_rhat_max": max(float(np.max(v)) for v in ref.rhat.values()),
        "nuts_divergent": int(ref.num_divergent),
        "true_globals": [float(v) for v in np.asarray(truth)],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", default="1000,10000,100000",
                        help="numbers of groups, comma-separated [1000,10000,100000]")
    parser.add_argument("--chunk-size", type=int, default=1000, help="groups per chunk [1000]")
    parser.add_argument("--num-samples", type=int, default=1000,
                        help="NUTS draws per chain [1000]")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                             "hierarchical_streaming.json"))
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.groups.split(",") if s]
    problem = inspect_hierarchical_problem(jax.random.key(0), h.varying_slopes,
                                           h.regression_design, num_groups=(10, 100),
                                           group_sizes=(GROUP_SIZE, GROUP_SIZE))
    results = {"command": "python benchmarks/bench_hierarchical_streaming.py "
                          + " ".join(argv or sys.argv[1:]),
               "device": str(jax.devices()[0]),
               "environment": {"python": platform.python_version(), "jax": jax.__version__,
                               "cpu_count": os.cpu_count(),
                               "load_average_at_start": list(os.getloadavg())},
               "group_size": GROUP_SIZE, "chunk_size": args.chunk_size, "sizes": []}
    for i, size in enumerate(sizes):
        row = run_size(jax.random.key(100 + i), problem, size, args.chunk_size,
                       args.num_samples)
        results["sizes"].append(row)
        print(f"{size} groups: {row['seconds']:.2f} s warm, temp {row['temp_bytes'] / 1e6:.1f} MB,"
              f" global error {row['median_global_error']:.3f} SD (max "
              f"{row['max_global_error']:.3f}), local error {row['local_error_median']:.3f}, "
              f"NUTS {row['nuts_seconds']:.0f} s", flush=True)
        results["environment"]["load_average_at_end"] = list(os.getloadavg())
        write_results(args.out, results)
    base = results["sizes"][0]
    for row in results["sizes"]:
        row["temp_over_smallest"] = row["temp_bytes"] / base["temp_bytes"]
        row["seconds_over_smallest_per_group"] = (row["seconds"] / row["num_groups"]) / (
            base["seconds"] / base["num_groups"])
    write_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
