"""Hierarchical models: SBC of the corrected posterior on every zoo model, and a broken copy.

Issue 18's calibration target ("SBC passes on every model; a broken copy is rejected"). Per model
of ``bench_hierarchical.CASES``, :func:`hierarchical_sbc` simulates ``--num-datasets`` data sets
from the prior at the model's largest layout (12 schools; 200 groups of 2-50 observations for the
regressions), runs the product's corrected pipeline on each (Laplace-marginal Newton, defensive
mixture, per-group Newton conditionals, PSIS resampling: ``bench_hierarchical``'s ``amortized``
method with the network off, so no training is needed and the figure is the density pipeline's),
and ranks the true globals, two random groups' locals and the joint log density among 99 draws.
The same draws with every spread halved (:func:`shrink_draws`) must be rejected. A third run
is the product as a user gets it: :func:`hierarchical_trust_ladder` (resampled network draws,
else the corrected pipeline, else NUTS when k-hat stays above 0.7), with the rungs reached.

    .venv/bin/python benchmarks/bench_hierarchical_sbc.py    # results/hierarchical_sbc.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np
import numpyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_hierarchical import CASES, NEWTON_STEPS  # noqa: E402

from amortized_ppl.hierarchy import (  # noqa: E402
    HierarchicalNetwork,
    fit_marginal,
    hierarchical_sbc,
    hierarchical_trust_ladder,
    inspect_hierarchical_problem,
    sample_hierarchical,
    shrink_draws,
)
from amortized_ppl.results_file import write_results  # noqa: E402


def run_case(key, case: dict, *, num_datasets: int, num_draws: int) -> dict:
    problem_key, net_key, sbc_key = jax.random.split(key, 3)
    problem = inspect_hierarchical_problem(problem_key, case["model"], case["design"],
                                           num_groups=case["num_groups"],
                                           group_sizes=case["group_sizes"])
    network = HierarchicalNetwork(net_key, problem).network_off()
    khats, paths = [], []

    def corrected(k, data):
        fit = fit_marginal(problem, network, data)
        draws = sample_hierarchical(k, problem, network, data, num_draws=num_draws,
                                    newton_steps=NEWTON_STEPS, marginal=fit)
        khats.append(float(draws.khat))
        return draws

    def ladder(k, data):
        result = hierarchical_trust_ladder(k, problem, network, data, num_draws=num_draws,
                                           newton_steps=NEWTON_STEPS)
        paths.append(result.path)
        return result.draws

    good = hierarchical_sbc(sbc_key, problem, corrected, num_datasets=num_datasets,
                            progress=True)
    bad = hierarchical_sbc(sbc_key, problem, lambda k, d: shrink_draws(corrected(k, d), 0.5),
                           num_datasets=num_datasets, progress=True)
    climbed = hierarchical_sbc(sbc_key, problem, ladder, num_datasets=num_datasets,
                               progress=True)
    khat = np.asarray(khats[:num_datasets])
    return {"num_groups": problem.setup.num_groups[1],
            "group_sizes": list(problem.setup.group_sizes),
            "corrected": good.to_dict(), "shrunk_half": bad.to_dict(),
            "ladder": climbed.to_dict(),
            "corrected_khat": {"median": float(np.median(khat)),
                               "fraction_above_0.7": float(np.mean(khat > 0.7)),
                               "max": float(np.max(khat))},
            "ladder_paths": {p: paths.count(p) for p in ("amortized", "corrected", "nuts")}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CASES))
    parser.add_argument("--num-datasets", type=int, default=200,
                        help="simulated data sets per model [200]")
    parser.add_argument("--num-draws", type=int, default=1000,
                        help="proposal draws per data set (99 are ranked) [1000]")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                             "hierarchical_sbc.json"))
    args = parser.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in CASES]
    if unknown:
        parser.error(f"unknown models {unknown}; known: {sorted(CASES)}")
    command = "python benchmarks/bench_hierarchical_sbc.py " + " ".join(argv or sys.argv[1:])
    results = {"command": command, "device": str(jax.devices()[0]),
               "environment": {"python": platform.python_version(), "jax": jax.__version__,
                               "numpyro": numpyro.__version__, "cpu_count": os.cpu_count()},
               "pipeline": "network off, fit_marginal + sample_hierarchical "
                           f"(newton_steps={NEWTON_STEPS}, PSIS resampled)",
               "num_draws": args.num_draws, "models": {}}
    start = time.perf_counter()
    for name in names:
        results["models"][name] = run_case(jax.random.key(list(CASES).index(name)),
                                           CASES[name], num_datasets=args.num_datasets,
                                           num_draws=args.num_draws)
        good = results["models"][name]["corrected"]
        bad = results["models"][name]["shrunk_half"]
        ladder = results["models"][name]["ladder"]
        print(f"[{name}] corrected p = {good['p_value']:.3f}, shrunk p = {bad['p_value']:.4f}, "
              f"ladder p = {ladder['p_value']:.3f}", flush=True)
        results["seconds"] = time.perf_counter() - start
        write_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
