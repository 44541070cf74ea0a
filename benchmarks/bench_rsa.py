"""Recursive Self-Aggregation on the synthetic reasoning testbed: the paper's curves, simulated.

For each population size ``N`` in {4, 16, 64} and subset size ``K`` in {1, 2, 4, 8} (``K <= N``),
``--num-problems`` independent problems of :class:`amortized_ppl.rsa.SyntheticReasoning` (default
parameters: one hard step with a trap answer, see its docstring) each run RSA for ``T = 1..10``
rounds (:func:`amortized_ppl.rsa.rsa`, vmapped over problems: one compiled program per
``(N, K)``). Every configuration sees the same problems and keys (common random numbers), so
differences between configurations are paired. Reported per round, as the mean over problems
and its standard error (SD / sqrt(problems)):

- ``mean_score``: Pass@1, the probability that one candidate is fully correct;
- ``pass_at_n``: some candidate is correct; ``majority_score``: the majority-vote answer is;
- ``diversity``: mean pairwise fraction of differing steps; ``distinct_fraction``: distinct
  candidates over ``N``; ``step_accuracy``: mean fraction of correct steps.

XLA's code optimization is turned down (LLVM -O0, the loop emitters; the test suite's
``FAST_COMPILE_XLA_FLAGS``) unless ``XLA_FLAGS`` already sets it or
``AMORTIZED_PPL_BENCH_OPTIMIZED_XLA=1``: the programs are tiny and compiling them is nearly all
the time (measured on 2 shared CPUs, ``N = 64``, ``K = 8``, 256 problems: compile 10.5 s -> 0.8 s,
run 1.3 s -> 1.8 s). The flags in force are recorded.

Usage::

    .venv/bin/python benchmarks/bench_rsa.py            # full: 11 configurations, 26 s of CPU
    .venv/bin/python benchmarks/bench_rsa.py --quick    # smoke run, seconds

Results go to ``benchmarks/results/rsa_testbed.json`` and the figure beside it
(``rsa_testbed.png``: one column per ``N``, rows Pass@1, Pass@N, majority vote and diversity
against ``T``, one line per ``K``, bands of +-1 standard error).
"""

from __future__ import annotations

import os
import sys

# Only where this process starts JAX (not when a test imports the script, JAX already running).
from amortized_ppl.xla_flags import use_fast_compile  # noqa: E402  (imports no JAX)

use_fast_compile(opt_out_variable="AMORTIZED_PPL_BENCH_OPTIMIZED_XLA")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from amortized_ppl.results_file import run_environment, write_results  # noqa: E402
from amortized_ppl.rsa import SyntheticReasoning  # noqa: E402

__all__ = ["main", "parse_args", "plot", "run_configuration"]

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "rsa_testbed.json"
METRICS = (
    "mean_score",
    "best_score",
    "pass_at_n",
    "majority_score",
    "diversity",
    "distinct_fraction",
)
PRESETS: dict[str, dict[str, Any]] = {
    "full": dict(
        num_problems=512, num_rounds=10, population_sizes=[4, 16, 64], subset_sizes=[1, 2, 4, 8]
    ),
    "quick": dict(num_problems=32, num_rounds=4, population_sizes=[4, 16], subset_sizes=[1, 4]),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; unset options come from the ``full`` or ``quick`` preset."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    full = PRESETS["full"]
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes for a smoke run (explicit options still win)",
    )
    parser.add_argument(
        "--num-problems",
        type=int,
        help=f"independent problems per configuration [{full['num_problems']}]",
    )
    parser.add_argument(
        "--num-rounds",
        type=int,
        help=f"T, rounds counting the first generation [{full['num_rounds']}]",
    )
    parser.add_argument(
        "--population-sizes", type=int, nargs="+", help=f"N values [{full['population_sizes']}]"
    )
    parser.add_argument(
        "--subset-sizes",
        type=int,
        nargs="+",
        help=f"K values, those <= N run [{full['subset_sizes']}]",
    )
    parser.add_argument("--seed", type=int, default=0, help="root PRNG seed [0]")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="JSON results file [benchmarks/results/rsa_testbed.json]",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the figure")
    parser.add_argument("--table", type=Path, default=None,
                        help="print the table of a results file and exit (runs nothing)")
    args = parser.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "full"]
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("num_problems", "num_rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}.")
    for name in ("population_sizes", "subset_sizes"):
        if min(getattr(args, name)) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}.")
    if args.num_problems < 2:
        parser.error(f"--num-problems must be >= 2 (a standard error); got {args.num_problems}.")
    return args


def _summary(values: np.ndarray) -> dict[str, list[float]]:
    """Mean over problems and its standard error, per round (``values``: ``(S, T)``)."""
    values = np.asarray(values, float)
    sem = values.std(axis=0, ddof=1) / np.sqrt(values.shape[0])
    return {
        "mean": [round(float(v), 5) for v in values.mean(axis=0)],
        "sem": [round(float(v), 5) for v in sem],
    }


def run_configuration(
    testbed: SyntheticReasoning,
    keys: jax.Array,
    *,
    population_size: int,
    subset_size: int,
    num_rounds: int,
) -> dict[str, Any]:
    """Run RSA on one problem per key (vmapped) and summarize every metric per round."""

    def one(key):
        return testbed.run(
            key, population_size=population_size, subset_size=subset_size, num_rounds=num_rounds
        ).info

    start = time.perf_counter()
    compiled = jax.jit(jax.vmap(one)).lower(keys).compile()
    compiled_at = time.perf_counter()
    info = jax.block_until_ready(compiled(keys))
    done = time.perf_counter()
    row: dict[str, Any] = {"population_size": population_size, "subset_size": subset_size}
    for name in METRICS:
        row[name] = _summary(getattr(info, name))
    row["step_accuracy"] = _summary(info.diagnostic)
    row["compile_s"] = round(compiled_at - start, 3)
    row["run_s"] = round(done - compiled_at, 3)
    return row


def plot(results: dict[str, Any], path: str | Path) -> Path:
    """Pass@1, Pass@N, majority and diversity against T: a column per N, a line per K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["configurations"]
    sizes = sorted({row["population_size"] for row in rows})
    panels = (
        ("mean_score", "Pass@1 (mean score)"),
        ("pass_at_n", "Pass@N"),
        ("majority_score", "majority vote"),
        ("diversity", "diversity"),
    )
    subset_sizes = sorted({row["subset_size"] for row in rows})
    colours = dict(zip(subset_sizes, plt.cm.viridis(np.linspace(0.0, 0.85, len(subset_sizes)))))
    fig, axes = plt.subplots(
        len(panels), len(sizes), figsize=(3.6 * len(sizes), 2.6 * 4), squeeze=False, sharex=True
    )
    for column, size in enumerate(sizes):
        for row in (r for r in rows if r["population_size"] == size):
            k = row["subset_size"]
            for line, (name, _) in enumerate(panels):
                mean, sem = np.array(row[name]["mean"]), np.array(row[name]["sem"])
                rounds = np.arange(1, len(mean) + 1)
                ax = axes[line, column]
                ax.plot(rounds, mean, marker="o", ms=3, color=colours[k], label=f"K = {k}")
                ax.fill_between(rounds, mean - sem, mean + sem, color=colours[k], alpha=0.25)
        axes[0, column].set_title(f"N = {size}")
        axes[-1, column].set_xlabel("T (rounds, first generation included)")
    for line, (name, label) in enumerate(panels):
        axes[line, 0].set_ylabel(label)
        for ax in axes[line]:
            ax.set_ylim(-0.02, 1.02 if name != "diversity" else None)
            ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=8, loc="lower right")
    fig.suptitle(
        f"RSA on the synthetic reasoning testbed ({results['settings']['num_problems']} "
        "problems; mean +- 1 s.e.)",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["   N   K   Pass@1 T=1 -> T=last   Pass@N   majority   diversity"]
    for row in rows:
        p1 = row["mean_score"]["mean"]
        lines.append(
            f"{row['population_size']:4d} {row['subset_size']:3d}   {p1[0]:.3f} -> {p1[-1]:.3f} "
            f"(+-{row['mean_score']['sem'][-1]:.3f})   {row['pass_at_n']['mean'][-1]:.3f}    "
            f"{row['majority_score']['mean'][-1]:.3f}      {row['diversity']['mean'][-1]:.3f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every configuration, write the JSON (and the figure), print a table; return the
    results."""
    argv_used = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv_used)
    if args.table is not None:
        import json

        results = json.loads(args.table.read_text())
        print(_table(results["configurations"]))
        return results
    testbed = SyntheticReasoning()
    keys = jax.random.split(jax.random.key(args.seed), args.num_problems)
    results: dict[str, Any] = {
        "benchmark": "RSA on the synthetic reasoning testbed: Pass@1, Pass@N, majority vote and "
        "diversity against T for each (N, K)",
        "command": " ".join([".venv/bin/python benchmarks/bench_rsa.py", *argv_used]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "testbed": dataclasses.asdict(testbed),
        "summary": "mean over problems per round (index 0 is T = 1) and its standard error",
        "environment": dict(run_environment(), xla_flags=os.environ.get("XLA_FLAGS", "")),
        "configurations": [],
    }
    start = time.perf_counter()
    for n in args.population_sizes:
        for k in (k for k in args.subset_sizes if k <= n):
            row = run_configuration(
                testbed, keys, population_size=n, subset_size=k, num_rounds=args.num_rounds
            )
            results["configurations"].append(row)
            print(
                f"N = {n:3d}, K = {k}: Pass@1 {row['mean_score']['mean'][0]:.3f} -> "
                f"{row['mean_score']['mean'][-1]:.3f} (compile {row['compile_s']:.1f} s, "
                f"run {row['run_s']:.2f} s)",
                flush=True,
            )
    results["total_seconds"] = round(time.perf_counter() - start, 2)
    results["environment"]["load_average_at_end"] = (
        list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    )
    if not args.no_plot:
        results["figure"] = plot(results, args.out.with_suffix(".png")).name
    write_results(args.out, results)
    print(_table(results["configurations"]))
    print(f"Wrote {args.out} in {results['total_seconds']:.1f} s")
    return results


if __name__ == "__main__":
    main()
