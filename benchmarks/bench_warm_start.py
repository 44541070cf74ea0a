"""How much does a warm start from a trained amortized guide shorten NUTS warm-up?

Model and guide: the demo's (``amortized-ppl demo``): Bayesian linear regression with known
noise (``d = 8`` covariates plus an intercept) and its trained
:class:`~amortized_ppl.AutoAmortizedMultivariateNormal`, loaded from ``--run``. The exact
(conjugate) posterior is the ground truth.

Data sets, all with the same number of observations ``--num-obs`` so each NUTS configuration
compiles once: ``--num-datasets`` from each of two groups of
:func:`amortized_ppl.diagnose.test_groups`: ``in_distribution`` (the training simulator) and
``covariates_x10`` (covariates scaled by 10, out of the guide's training distribution).

For every data set and every warm-up length, blackjax NUTS
(:func:`amortized_ppl.reference.build_reference_sampler`, ``--num-chains`` chains x
``--num-samples`` draws after warm-up) runs

- **cold**: ``init_to_uniform`` starts and Stan window adaptation (step size and diagonal
  inverse mass matrix) for ``--cold-warmup`` steps (the grid reaches down to the warm start's
  shortest lengths, so that a ratio of warm-up lengths is not an artefact of the grids);
- **warm**: starts at guide draws and the guide's covariance as a fixed dense inverse mass matrix
  (:func:`amortized_ppl.ladder.warm_start`), warm-up tuning only the step size for
  ``--warm-warmup`` steps.

Both use the same PRNG key for a given data set (whatever the method and warm-up length). Each
configuration is compiled by a throwaway run first; the timed runs then call the jitted program
(``sampler.draw``) and block on its outputs. The warm start's own cost (one guide call with
``--num-draws`` importance-weighted draws per data set, as in the trust ladder) is timed
separately and reported both apart and added to the warm NUTS time.

A setting is **accurate** for a group when on every data set of the group: the largest
``|posterior mean error| / exact SD`` over coordinates is <= 0.1, every ``NUTS SD / exact SD``
is in [0.9, 1.1], and the largest split R-hat is <= 1.01. Reported per group and method: the
smallest accurate warm-up, the ratio cold / warm of those warm-up lengths and the ratio of median
wall times per data set at those settings; and, since accuracy need not grow monotonically with
the warm-up length, the same for the smallest length that is accurate at every longer length
tried too. Wall time per data set is the fastest of ``--repeats`` identical runs (the same key),
the median over data sets. Usage::

    python benchmarks/bench_warm_start.py                  # uses ./demo_output
    python benchmarks/bench_warm_start.py --run /tmp/demo_full
    python benchmarks/bench_warm_start.py --help
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from amortized_ppl.convergence import RHAT_THRESHOLD, flatten_samples, summarize
from amortized_ppl.data import select_dataset
from amortized_ppl.diagnose import DiagnoseConfig, test_groups
from amortized_ppl.diagnostics.importance import importance_weights
from amortized_ppl.diagnostics.metrics import flatten_draws
from amortized_ppl.ladder import warm_start
from amortized_ppl.reference import build_reference_sampler
from amortized_ppl.results_file import run_environment

__all__ = ["main", "parse_args"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "warm_start.json"
GROUPS = ("in_distribution", "covariates_x10")
METHODS = ("cold", "warm")

MAX_MEAN_ERROR = 0.1
"""Largest allowed ``|NUTS mean - exact mean| / exact SD`` over coordinates."""
SD_RATIO_RANGE = (0.9, 1.1)
"""Allowed range of ``NUTS SD / exact SD`` for every coordinate."""


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("demo_output"),
                        help="the demo's output folder (with checkpoint/) [demo_output]")
    parser.add_argument("--num-datasets", type=int, default=8,
                        help="data sets per group [8]")
    parser.add_argument("--num-obs", type=int, default=100,
                        help="observations per data set (one size: NUTS compiles once) [100]")
    parser.add_argument("--cold-warmup", type=int, nargs="+",
                        default=[10, 25, 50, 100, 200, 500],
                        help="window-adaptation lengths of the cold start [10 25 50 100 200 500]")
    parser.add_argument("--warm-warmup", type=int, nargs="+", default=[10, 25, 50, 100],
                        help="step-size warm-up lengths of the warm start [10 25 50 100]")
    parser.add_argument("--num-chains", type=int, default=4, help="NUTS chains [4]")
    parser.add_argument("--num-samples", type=int, default=500,
                        help="NUTS draws per chain after warm-up [500]")
    parser.add_argument("--num-draws", type=int, default=1000,
                        help="guide draws per data set for the warm start, as in the ladder [1000]")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per data set and setting (same key); the fastest counts, "
                             "which damps other processes' load [3]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="JSON output [benchmarks/results/warm_start.json]")
    args = parser.parse_args(argv)
    for name in ("num_datasets", "num_obs", "num_chains", "num_samples", "num_draws", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if min(args.cold_warmup + args.warm_warmup) < 1:
        parser.error("warm-up lengths must be >= 1")
    args.cold_warmup = sorted(set(args.cold_warmup))
    args.warm_warmup = sorted(set(args.warm_warmup))
    return args


def load_run(run: Path):
    """``load_demo(run)``, or exit with a message saying how to make the checkpoint."""
    from amortized_ppl.demo import load_demo

    if not (run / "checkpoint").is_dir():
        sys.exit(
            f"error: no trained demo guide at {run}/checkpoint. Train one first with\n"
            f"    amortized-ppl demo --out {run}\n"
            "(a few minutes on 2 CPU cores), or pass --run with the folder of an earlier demo run."
        )
    guide, params, config, design, exact_fn = load_demo(run)
    if exact_fn is None:
        sys.exit(
            f"error: the demo run at {run} used noise={config.noise!r}; this benchmark needs the "
            "exact posterior of the known-noise model (`amortized-ppl demo --noise known`)."
        )
    return guide, params, config, design, exact_fn


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    return out, time.perf_counter() - start


def build_datasets(key, guide, design, args) -> dict[str, list[dict]]:
    """``--num-datasets`` data sets of ``--num-obs`` observations per group, with exact moments."""
    config = DiagnoseConfig(
        num_in=args.num_datasets, num_ood=args.num_datasets, ood_num_obs=args.num_obs,
        progress=False,
    )
    groups = test_groups(key, guide, design, (args.num_obs, args.num_obs), config)
    out = {}
    for name in GROUPS:
        group = groups[name]
        out[name] = [
            select_dataset(group["arguments"], group["mask"], i, guide.problem.data_arguments)
            for i in range(args.num_datasets)
        ]
    return out


def guide_starts(key, guide, params, datasets, args) -> tuple[dict, dict]:
    """Warm-start inputs per data set (one guide call each; the fastest of ``--repeats``)."""
    first = datasets[GROUPS[0]][0]
    _, compile_s = _timed(
        lambda: importance_weights(key, guide, params, num_draws=args.num_draws, **first).draws
    )
    starts, info = {}, {"compile_s": compile_s}
    for g, name in enumerate(GROUPS):
        starts[name], info[name] = [], []
        for i, data in enumerate(datasets[name]):
            draw_key = jax.random.fold_in(jax.random.fold_in(key, g), i)
            times = []
            for _ in range(args.repeats):  # the same key: the same start, only the time varies
                start = time.perf_counter()
                weights = importance_weights(
                    draw_key, guide, params, num_draws=args.num_draws, **data
                )
                jax.block_until_ready(weights.draws)
                init, metric = warm_start(
                    guide.problem.sites, weights.draws[0], weights.cov[0],
                    weights.log_weights[0], args.num_chains,
                )
                if init is not None:
                    init, metric = jax.block_until_ready((init, metric))
                times.append(time.perf_counter() - start)
            starts[name].append((init, metric))
            info[name].append({"seconds": min(times), "seconds_all": times,
                               "khat": float(weights.khat[0]), "usable": init is not None})
    return starts, info


def _evaluate(samples, info, names, exact) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # judged below, not warned
        result = summarize(samples, info)
    flat = np.asarray(flatten_draws(flatten_samples(result.samples), names), dtype=np.float64)
    mean, sd = exact
    errors = np.abs(flat.mean(0) - mean) / sd
    ratios = flat.std(0, ddof=1) / sd
    rhat = max(float(np.nanmax(v)) if np.isfinite(v).any() else np.inf
               for v in result.rhat.values())
    ess = min(float(np.nanmin(v)) for v in result.ess.values())
    return {
        "max_mean_error": float(np.max(errors)),
        "sd_ratio_min": float(np.min(ratios)),
        "sd_ratio_max": float(np.max(ratios)),
        "max_rhat": rhat,
        "min_ess": ess,
        "num_divergent": int(result.num_divergent),
        "mean_leapfrog_steps": float(np.mean(np.asarray(info.num_integration_steps))),
        "mean_step_size": float(np.mean(np.asarray(info.step_size))),
    }


def _failures(row: dict) -> list[str]:
    """Which accuracy criteria a run misses (empty: accurate)."""
    failed = []
    if not row.get("ran", True):
        return ["no warm start"]
    if not row["max_mean_error"] <= MAX_MEAN_ERROR:
        failed.append("mean")
    if not SD_RATIO_RANGE[0] <= row["sd_ratio_min"] <= row["sd_ratio_max"] <= SD_RATIO_RANGE[1]:
        failed.append("sd")
    if not row["max_rhat"] <= RHAT_THRESHOLD:
        failed.append("rhat")
    return failed


def run_setting(key, guide, method, num_warmup, datasets, exact, starts, args) -> dict[str, Any]:
    """One method and warm-up length on every data set: compile call, then timed runs."""
    sampler = build_reference_sampler(
        guide.model, num_chains=args.num_chains, num_warmup=num_warmup,
        num_samples=args.num_samples,
    )
    names = list(guide.problem.sites.names)

    def start_of(group, i):
        if method == "cold":
            return {}
        init, metric = starts[group][i]
        return None if init is None else {"init_params": init, "inverse_mass_matrix": metric}

    # Throwaway run on the first data set with another key: compiles this configuration.
    compile_start = next(
        (g, i) for g in GROUPS for i in range(len(datasets[g])) if start_of(g, i) is not None
    )
    g0, i0 = compile_start
    _, compile_s = _timed(sampler.draw, jax.random.fold_in(key, 10**6),
                          **start_of(g0, i0), **datasets[g0][i0])
    out: dict[str, Any] = {"method": method, "num_warmup": num_warmup,
                           "first_call_s": compile_s, "groups": {}}
    for g, group in enumerate(GROUPS):
        rows = []
        for i, data in enumerate(datasets[group]):
            run_key = jax.random.fold_in(jax.random.fold_in(key, g), i)  # same for every setting
            extra = start_of(group, i)
            if extra is None:
                rows.append({"ran": False, "failed": ["no warm start"]})
                continue
            times = []
            for _ in range(args.repeats):  # the same key: the same draws, only the time varies
                (samples, info), seconds = _timed(sampler.draw, run_key, **extra, **data)
                times.append(seconds)
            row = {"ran": True, "seconds": min(times), "seconds_all": times,
                   **_evaluate(samples, info, names, exact[group][i])}
            row["failed"] = _failures(row)
            rows.append(row)
        out["groups"][group] = {"per_dataset": rows, **_aggregate(rows)}
    return out


def _aggregate(rows: list[dict]) -> dict[str, Any]:
    ran = [r for r in rows if r["ran"]]
    get = lambda k: [r[k] for r in ran]  # noqa: E731
    return {
        "accurate": all(not r["failed"] for r in rows),
        "num_accurate": sum(not r["failed"] for r in rows),
        "num_datasets": len(rows),
        "failures": {c: sum(c in r["failed"] for r in rows)
                     for c in ("mean", "sd", "rhat", "no warm start")},
        "median_seconds": statistics.median(get("seconds")) if ran else None,
        "worst_max_mean_error": max(get("max_mean_error")) if ran else None,
        "sd_ratio_range": [min(get("sd_ratio_min")), max(get("sd_ratio_max"))] if ran else None,
        "worst_max_rhat": max(get("max_rhat")) if ran else None,
        "total_divergent": sum(get("num_divergent")),
        "median_leapfrog_steps": statistics.median(get("mean_leapfrog_steps")) if ran else None,
    }


def headline(settings: list[dict], guide_info: dict) -> dict[str, Any]:
    """Per group: smallest accurate warm-up per method and the cold / warm ratios there."""
    out = {}
    for group in GROUPS:
        best, stable = {}, {}
        for method in METHODS:
            tried = sorted((s for s in settings if s["method"] == method),
                           key=lambda s: s["num_warmup"])
            ok = [s["groups"][group]["accurate"] for s in tried]
            best[method] = next((s for s, good in zip(tried, ok) if good), None)
            # Accurate here and at every longer length tried (accuracy need not be monotone).
            stable[method] = next(
                (s for j, s in enumerate(tried) if all(ok[j:])), None
            )
        guide_s = statistics.median(r["seconds"] for r in guide_info[group])
        entry: dict[str, Any] = {"guide_seconds_median": guide_s}
        for method in METHODS:
            s = best[method]
            shortest = min(t["num_warmup"] for t in settings if t["method"] == method)
            entry[method] = None if s is None else {
                "num_warmup": s["num_warmup"],
                "median_seconds": s["groups"][group]["median_seconds"],
                # The shortest length tried is accurate: the true minimum may be shorter still.
                "at_shortest_tried": s["num_warmup"] == shortest,
            }
        for method in METHODS:
            entry[method + "_stable_num_warmup"] = (
                None if stable[method] is None else stable[method]["num_warmup"]
            )
        if stable["cold"] is not None and stable["warm"] is not None:
            cold_s = stable["cold"]["groups"][group]["median_seconds"]
            warm_s = stable["warm"]["groups"][group]["median_seconds"]
            entry["stable_warmup_ratio_cold_over_warm"] = (
                stable["cold"]["num_warmup"] / stable["warm"]["num_warmup"]
            )
            entry["stable_wall_ratio_cold_over_warm"] = cold_s / warm_s
            entry["stable_wall_ratio_cold_over_warm_with_guide"] = cold_s / (warm_s + guide_s)
        if best["cold"] is not None and best["warm"] is not None:
            cold_s = best["cold"]["groups"][group]["median_seconds"]
            warm_s = best["warm"]["groups"][group]["median_seconds"]
            entry["warmup_ratio_cold_over_warm"] = best["cold"]["num_warmup"] / best["warm"]["num_warmup"]
            entry["wall_ratio_cold_over_warm"] = cold_s / warm_s
            entry["wall_ratio_cold_over_warm_with_guide"] = cold_s / (warm_s + guide_s)
        else:
            missing = [m for m in METHODS if best[m] is None]
            entry["note"] = ("no accurate setting among those tried for: " + ", ".join(missing))
        out[group] = entry
    return out


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_table(results: dict[str, Any]) -> str:
    lines = []
    for group in GROUPS:
        n = results["config"]["num_datasets"]
        lines += [
            f"\n{group} ({n} data sets, N = {results['config']['num_obs']})",
            "| method | warm-up | accurate | worst mean err (SD) | SD ratio range | worst R-hat "
            "| divergences | leapfrog/draw | median s/data set | misses (mean/sd/rhat) |",
            "|" + "---|" * 10,
        ]
        for s in results["settings"]:
            a = s["groups"][group]
            sd = a["sd_ratio_range"]
            f = a["failures"]
            misses = f"{f['mean']}/{f['sd']}/{f['rhat']}"
            if f["no warm start"]:
                misses += f" (+{f['no warm start']} no start)"
            lines.append(
                f"| {s['method']} | {s['num_warmup']} "
                f"| {'yes' if a['accurate'] else 'no'} ({a['num_accurate']}/{a['num_datasets']}) "
                f"| {_fmt(a['worst_max_mean_error'], '.3f')} "
                f"| {'n/a' if sd is None else f'{sd[0]:.3f}-{sd[1]:.3f}'} "
                f"| {_fmt(a['worst_max_rhat'], '.4f')} | {a['total_divergent']} "
                f"| {_fmt(a['median_leapfrog_steps'], '.1f')} "
                f"| {_fmt(a['median_seconds'], '.3f')} | {misses} |"
            )
        h = results["headline"][group]
        cold, warm = h["cold"], h["warm"]
        def best(entry):
            if entry is None:
                return "none"
            return f"{entry['num_warmup']}" + (" (shortest tried)" if entry["at_shortest_tried"]
                                                else "")

        lines.append(
            f"smallest accurate warm-up: cold {best(cold)}, warm {best(warm)}; guide call "
            f"{h['guide_seconds_median']:.3f} s/data set"
        )
        if "warmup_ratio_cold_over_warm" in h:
            lines.append(
                f"cold/warm: warm-up {h['warmup_ratio_cold_over_warm']:.1f}x, wall time "
                f"{h['wall_ratio_cold_over_warm']:.2f}x (NUTS only), "
                f"{h['wall_ratio_cold_over_warm_with_guide']:.2f}x (warm incl. guide call)"
            )
        else:
            lines.append(h["note"])
        if "stable_warmup_ratio_cold_over_warm" in h and (
            h["cold_stable_num_warmup"] != (cold or {}).get("num_warmup")
            or h["warm_stable_num_warmup"] != (warm or {}).get("num_warmup")
        ):
            lines.append(
                f"accurate at every longer length too: cold {h['cold_stable_num_warmup']}, warm "
                f"{h['warm_stable_num_warmup']}; cold/warm: warm-up "
                f"{h['stable_warmup_ratio_cold_over_warm']:.1f}x, wall time "
                f"{h['stable_wall_ratio_cold_over_warm']:.2f}x (NUTS only), "
                f"{h['stable_wall_ratio_cold_over_warm_with_guide']:.2f}x (warm incl. guide call)"
            )
    env = results["environment"]
    lines.append(
        f"\n{env['platform']} ({env['device_kind']}), {env['cpu_count']} CPUs, "
        f"load {env['load_average']}; jax {env['jax']}, blackjax {env['blackjax']}. "
        f"Total {results['total_seconds']:.0f} s."
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv_used = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv_used)
    total_start = time.perf_counter()
    load_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    guide, params, demo_config, design, exact_fn = load_run(args.run)

    key = jax.random.key(args.seed)
    data_key, guide_key, nuts_key = jax.random.split(key, 3)
    datasets = build_datasets(data_key, guide, design, args)
    exact = {
        g: [tuple(np.asarray(v, dtype=np.float64) for v in exact_fn(d)) for d in datasets[g]]
        for g in GROUPS
    }
    starts, guide_info = guide_starts(guide_key, guide, params, datasets, args)
    print(f"guide warm starts ready ({time.perf_counter() - total_start:.0f} s)",
          file=sys.stderr, flush=True)

    settings = []
    for method, lengths in (("cold", args.cold_warmup), ("warm", args.warm_warmup)):
        for num_warmup in lengths:
            settings.append(
                run_setting(nuts_key, guide, method, num_warmup, datasets, exact, starts, args)
            )
            print(f"done {method} warm-up {num_warmup} "
                  f"({time.perf_counter() - total_start:.0f} s)", file=sys.stderr, flush=True)

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results = dict(
        benchmark="NUTS warm-up: warm start from the amortized guide vs cold start, at equal "
                  "accuracy (linear regression, known noise, d=8)",
        command=" ".join(["python benchmarks/bench_warm_start.py", *argv_used]),
        environment=dict(run_environment(), load_average_at_start=load_at_start),
        config=config,
        demo_config=demo_config._asdict(),
        criterion=dict(max_mean_error=MAX_MEAN_ERROR, sd_ratio_range=list(SD_RATIO_RANGE),
                       max_rhat=RHAT_THRESHOLD, over="every data set of the group"),
        guide=guide_info,
        headline=headline(settings, guide_info),
        settings=settings,
        total_seconds=time.perf_counter() - total_start,
    )
    print(format_table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nWrote {args.out}")
    return results


if __name__ == "__main__":
    main()
