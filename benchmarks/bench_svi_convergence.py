"""SVI run to convergence against the iterative update's base, in gradient evaluations (issue 17).

``bench_iterative.py`` gave SVI (Adam on the same Gaussian) the iterative update's own budget,
1 to 100 steps, which proves nothing about what the natural-gradient update buys. Here SVI runs
until it converges: on logistic regression (d = 5 plus an intercept) at ``N`` observations, with
the same mini-batches (``max(1000, N / 100)`` rows, likelihood scaled to the data set) and the
same ``2 D`` cubature points per step, from the same start (the prior's moments), for
1, 4, 16, 64 and 256 passes at each of five learning rates; the best rate per pass count is
chosen on the data sets it is scored on (which favours SVI). Beside it, in the same run: the
iterative update's base (the network off: its untrained, all-zero outputs) at 1, 2, 4 and 8
passes, from the prior and, as ``refine`` runs it, from the Laplace fit of one mini-batch
(8 damped Newton steps, then the passes), and Laplace on the full log joint (8 Newton steps). Truth: cold blackjax NUTS,
4 x 1,000 draws after 500 warm-up steps.

Reported per method and budget: the median and worst |mean error| in true SDs, the range of SD
ratios, and the gradient evaluations of the mini-batch log joint (steps x ``2 D`` points; the
base and SVI cost the same per step). ``svi_to_match_base`` gives, for each base pass count, the
fewest SVI evaluations whose median error is at most the base's, and the ratio.

    python benchmarks/bench_svi_convergence.py [--sizes 10000] [--num-datasets 5] [--quick]
        [--out benchmarks/results/svi_convergence.json]
    python benchmarks/bench_svi_convergence.py --table benchmarks/results/svi_convergence.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_iterative as bi  # noqa: E402

from amortized_ppl.guides import AutoIterativeAmortizedMultivariateNormal  # noqa: E402
from amortized_ppl.iterative.passes import run_passes  # noqa: E402
from amortized_ppl.models import logistic_regression as lg  # noqa: E402
from amortized_ppl.results_file import write_results  # noqa: E402

BASE_PASSES = (1, 2, 4, 8)
SVI_PASSES = (1, 4, 16, 64, 256)
SVI_RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def _summary(errors, ratios) -> dict:
    out = bi.summarize(errors, ratios, [0.0])
    del out["seconds_per_dataset"]  # this benchmark counts gradient evaluations, not seconds
    return out


@eqx.filter_jit
def _laplace_started(key, problem, engine, arguments, mask, batch_size, num_passes):
    """The base as ``refine`` runs it: from the Laplace fit (8 Newton steps) of one mini-batch
    (the first ``batch_size`` rows; the rows are exchangeable), then ``num_passes`` passes."""
    per_pass = -(-mask.shape[0] // batch_size)
    rows = jnp.arange(batch_size)
    state = engine.start(problem, engine.init_state(problem), problem.take(arguments, rows),
                         mask[rows], per_pass)
    step = engine.kernel(problem)[1]
    state, _ = run_passes(key, step, engine.network, state, arguments, mask, problem.take,
                          batch_size=batch_size, num_passes=num_passes)
    return state.loc, jnp.sqrt(jnp.sum(state.scale_tril**2, -1))


def run_size(key, guide, n: int, num_datasets: int, base_passes, svi_passes, rates) -> dict:
    batch = max(1000, n // 100)
    per_pass = -(-n // batch)
    dim = guide.problem.latent_dim
    evaluations_per_pass = per_pass * 2 * dim
    base_params = guide.init_params()
    base = {p: ([], []) for p in base_passes}
    started = {p: ([], []) for p in base_passes}
    svi = {(p, r): ([], []) for p in svi_passes for r in rates}
    laplace = ([], [])
    for i in range(num_datasets):
        data_key = jax.random.fold_in(key, 1000 * n + i)
        x, y = bi.simulate("logistic", data_key, n)
        mean, sd = bi.truth("logistic", jax.random.fold_in(data_key, 9), x, y)
        arguments = None
        for p in base_passes:
            _, loc, est_sd, _, (arguments, mask) = bi.iterative_fit(
                guide, base_params, jax.random.fold_in(data_key, 3), x, y, batch, p)
            for lst, v in zip(base[p], bi.score(loc, est_sd, mean, sd)):
                lst.append(v)
        engine = guide.engine(base_params)
        for p in base_passes:
            loc, est_sd = _laplace_started(jax.random.fold_in(data_key, 3), guide.problem,
                                           engine, arguments, mask, batch, p)
            for lst, v in zip(started[p], bi.score(loc, est_sd, mean, sd)):
                lst.append(v)
        for p in svi_passes:
            for r in rates:
                _, loc, est_sd = bi.svi_fit(guide, jax.random.fold_in(data_key, 4), arguments,
                                            mask, batch, p, jnp.asarray(r))
                for lst, v in zip(svi[(p, r)], bi.score(loc, est_sd, mean, sd)):
                    lst.append(v)
        loc, est_sd = bi._laplace(guide.problem, arguments, mask, guide.problem.prior_loc, 8)
        for lst, v in zip(laplace, bi.score(loc, est_sd, mean, sd)):
            lst.append(v)
        print(f"N={n} data set {i + 1}/{num_datasets}", flush=True)
    out = {
        "num_obs": n,
        "batch_size": batch,
        "batches_per_pass": per_pass,
        "gradient_evaluations_per_pass": evaluations_per_pass,
        "laplace": _summary(*laplace),
        "base": {str(p): dict(_summary(*base[p]), passes=p,
                              gradient_evaluations=p * evaluations_per_pass)
                 for p in base_passes},
        "base_laplace_start": {str(p): dict(_summary(*started[p]), passes=p,
                                            gradient_evaluations=p * evaluations_per_pass,
                                            start_newton_steps=8)
                               for p in base_passes},
        "svi": {},
    }
    for p in svi_passes:
        per_rate = {r: _summary(*svi[(p, r)]) for r in rates}
        best = min(rates, key=lambda r: per_rate[r]["median_error"])
        out["svi"][str(p)] = dict(per_rate[best], passes=p, best_learning_rate=best,
                                  gradient_evaluations=p * evaluations_per_pass,
                                  median_error_by_rate={str(r): per_rate[r]["median_error"]
                                                        for r in rates})
    matches = {}
    for p in base_passes:
        target = out["base"][str(p)]["median_error"]
        reached = [q for q in svi_passes if out["svi"][str(q)]["median_error"] <= target]
        matches[str(p)] = ({"svi_passes": reached[0], "ratio": reached[0] / p} if reached else
                           {"svi_passes": None,
                            "ratio_at_least": max(svi_passes) / p})
    out["svi_to_match_base"] = matches
    return out


def markdown_table(path) -> str:
    """A results file as one markdown table: base, SVI (best rate) and Laplace per size."""
    rows = ["| N | method | passes | gradient evaluations | median err (SD) | worst err | "
            "SD ratios |", "|---" * 7 + "|"]
    for size in json.loads(Path(path).read_text())["sizes"]:
        n = f"{size['num_obs']:,}"
        entries = [("base (network off)", e) for e in size["base"].values()]
        entries += [("base from a one-batch Laplace start (as refine runs it)", e)
                    for e in size.get("base_laplace_start", {}).values()]
        entries += [(f"SVI, Adam {e['best_learning_rate']:g}", e) for e in size["svi"].values()]
        for name, e in entries:
            rows.append(f"| {n} | {name} | {e['passes']} | {e['gradient_evaluations']:,} | "
                        f"{e['median_error']:.3f} | {e['max_error']:.2f} | "
                        f"{e['sd_ratio_min']:.2f}-{e['sd_ratio_max']:.2f} |")
        e = size["laplace"]
        rows.append(f"| {n} | Laplace, 8 Newton steps, full data | - | - | "
                    f"{e['median_error']:.3f} | {e['max_error']:.2f} | "
                    f"{e['sd_ratio_min']:.2f}-{e['sd_ratio_max']:.2f} |")
    return "\n".join(rows) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000")
    parser.add_argument("--num-datasets", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help="N = 2,000, 2 data sets, fewer passes and rates (a smoke test)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                             "svi_convergence.json"))
    parser.add_argument("--table", metavar="RESULTS_JSON",
                        help="print a results file as a markdown table and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(args.table), end="")
        return {}
    sizes = [2000] if args.quick else [int(s) for s in args.sizes.split(",")]
    if min(sizes) < 2000:
        # below two mini-batches of 1,000 rows a pass is the full data (nothing to compare), and
        # the Laplace start's first mini-batch would run past the data set's rows
        parser.error(f"--sizes: every N must be at least 2000, got {sizes}.")
    num_datasets = 2 if args.quick else args.num_datasets
    base_passes = (1, 2) if args.quick else BASE_PASSES
    svi_passes = (1, 4) if args.quick else SVI_PASSES
    rates = (1e-2, 1e-1) if args.quick else SVI_RATES
    guide = AutoIterativeAmortizedMultivariateNormal(lg.model, batch_size=1000)
    guide.setup(jax.random.key(0), lg.design_fn, (20, 200))
    results = {
        "command": "python benchmarks/bench_svi_convergence.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "device": str(jax.devices()[0]),
        "environment": {"python": platform.python_version(), "jax": jax.__version__},
        "model": "logistic regression, d = 5 plus an intercept",
        "truth": "cold blackjax NUTS, 4 chains x 1,000 after 500 warm-up",
        "sizes": [],
    }
    start = time.perf_counter()
    for n in sizes:
        results["sizes"].append(run_size(jax.random.key(17), guide, n, num_datasets,
                                         base_passes, svi_passes, rates))
        results["seconds"] = time.perf_counter() - start
        write_results(args.out, results)  # after every size: a run that dies keeps its work
        print(json.dumps(results["sizes"][-1]["svi_to_match_base"]), flush=True)
    return results


if __name__ == "__main__":
    main()
