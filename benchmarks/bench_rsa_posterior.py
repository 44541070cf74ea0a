"""RSA over posterior candidates on hard data sets: worst-case moment errors against NUTS.

Candidates are the states of an untrained iterative guide
(:class:`~amortized_ppl.AutoIterativeAmortizedMultivariateNormal`, its base natural-gradient
update) after ``--num-passes`` shuffled pass(es) of mini-batches of ``--batch-size``, one key
(mini-batch order) per candidate: visibly off on these data sets, and different from key to key.
RSA runs with ``N = 16``, ``K = 4``, ``T = 5`` (:func:`amortized_ppl.rsa.rsa`) and two
aggregators: the base (network off: importance-weighted moments of the subset's mixture under the
full-data density, :func:`amortized_ppl.rsa.base_aggregate`, ``S = --num-draws`` draws per
aggregation) and the learned :class:`~amortized_ppl.rsa.SetAggregator` trained
aggregation-aware (:func:`amortized_ppl.rsa.fit_aggregator`) on simulated training data sets of
the ``separable`` and ``misspecified`` kinds (disjoint seeds), by forward KL to their NUTS
posteriors. The ``far_ood`` kind is held out of that training.

Kinds (``--num-datasets`` each, ``n = 40`` observations):

- ``separable``: logistic regression (5 covariates and an intercept, ``D = 6``), true
  coefficients drawn with SD 4 against the model's prior SD 1: nearly separable data, skewed
  posteriors;
- ``misspecified``: Bayesian linear regression with unknown noise (3 covariates, ``D = 5``)
  fitted to data with Student-t (1.5 degrees of freedom) noise: outliers;
- ``far_ood``: logistic regression with covariates scaled by 5 (out of the guide's and the
  aggregator's training distribution).

Methods, on each data set, from the same first generation (one key):

- ``best_single_score``: the first generation's candidate with the best ELBO estimate;
- ``best_single_oracle``: the one with the smallest worst-case error against NUTS (an oracle);
- ``averaging``: the moment-matched mixture of the ``N`` candidates;
- ``pooled_importance``: PSIS-weighted moments of draws from the mixture of all ``N``
  candidates, with as many density evaluations as RSA's aggregations, ``(T - 1) N S``;
- ``laplace``: 20 damped Newton steps on the full data, Gaussian at the mode;
- ``rsa_base`` and ``rsa_learned``: the final population's moment-matched mixture after RSA
  with the untrained (network off, exactly the base) or the trained aggregator.

Metrics on the flat unconstrained latents, against blackjax NUTS (4 chains x 1,000 draws after
500 warm-up steps; the largest split R-hat is recorded): the worst-case (over coordinates) mean
error in NUTS SDs and the worst SD-ratio deviation ``max |sd / sd_NUTS - 1|``; per kind the
worst and the median over data sets, and overall the worst. Times are per data set, compiled
(median over the kind's data sets after the first, which compiles), on the shared CPU.
Also kept: every round's :class:`~amortized_ppl.rsa.RSAInfo` for both aggregators (ELBO scores,
and as ``diagnostic`` the population's mean worst-case errors against NUTS).

XLA's code optimization is turned down as in ``bench_rsa.py`` (compiling dominates here) unless
``AMORTIZED_PPL_BENCH_OPTIMIZED_XLA=1``.

Usage::

    .venv/bin/python benchmarks/bench_rsa_posterior.py           # 7 min (422 s) on 2 busy cores
    .venv/bin/python benchmarks/bench_rsa_posterior.py --quick   # smoke run, about 30 s

(Measured at a load average of 3.5 on 2 cores: 74 s for the 96 training data sets' NUTS runs and
first generations, 298 s of aggregator training, 40 s for the 15 test data sets. ``--quick``
runs the ``separable`` kind only, one data set, 4 training sets, 4 steps and short NUTS chains:
a smoke run, not a measurement.)

Results go to ``benchmarks/results/rsa_posterior.json`` and ``rsa_posterior.png`` beside it
(``rsa_posterior_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import os
import sys

# Only where this process starts JAX (not when a test imports the script, JAX already running).
from amortized_ppl.xla_flags import use_fast_compile  # noqa: E402  (imports no JAX)

use_fast_compile(opt_out_variable="AMORTIZED_PPL_BENCH_OPTIMIZED_XLA")

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from amortized_ppl.guides import AutoIterativeAmortizedMultivariateNormal  # noqa: E402
from amortized_ppl.models import linear_regression as lr  # noqa: E402
from amortized_ppl.models import logistic_regression as lg  # noqa: E402
from amortized_ppl.reference import build_reference_sampler  # noqa: E402
from amortized_ppl.results_file import run_environment, write_results  # noqa: E402
from amortized_ppl.rsa import (  # noqa: E402
    GaussianCandidate,
    SetAggregator,
    TrainingSets,
    best_by_score,
    build_aggregate_fn,
    build_score_fn,
    fit_aggregator,
    iterative_generator,
    laplace_candidate,
    mixture_moments,
    moment_errors,
    pooled_importance,
    rsa,
)

__all__ = ["main", "parse_args", "plot"]

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "rsa_posterior.json"
KINDS = ("separable", "misspecified", "far_ood")
MODEL_OF_KIND = {"separable": "logistic", "misspecified": "linear", "far_ood": "logistic"}
TRAIN_KINDS = ("separable", "misspecified")
METHODS = ("best_single_score", "best_single_oracle", "averaging", "pooled_importance",
           "laplace", "rsa_base", "rsa_learned")
NUM_OBS = 40
PRESETS: dict[str, dict[str, Any]] = {
    "full": dict(kinds=list(KINDS), num_datasets=5, num_train=48, train_steps=6000,
                 train_seconds=300.0, nuts_warmup=500, nuts_samples=1000, num_pilot=1024),
    "quick": dict(kinds=["separable"], num_datasets=1, num_train=4, train_steps=4,
                  train_seconds=5.0, nuts_warmup=60, nuts_samples=60, num_pilot=64),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; unset options come from the ``full`` or ``quick`` preset."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    full = PRESETS["full"]
    parser.add_argument("--quick", action="store_true", help="smoke run (explicit options win)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, help=f"data set kinds [{KINDS}]")
    parser.add_argument("--num-datasets", type=int,
                        help=f"test data sets per kind [{full['num_datasets']}]")
    parser.add_argument("--num-train", type=int,
                        help=f"training data sets per training kind [{full['num_train']}]")
    parser.add_argument("--train-steps", type=int,
                        help=f"aggregator training steps, at most [{full['train_steps']}]")
    parser.add_argument("--train-seconds", type=float,
                        help=f"aggregator training budget [{full['train_seconds']}]")
    parser.add_argument("--nuts-warmup", type=int, help=f"[{full['nuts_warmup']}]")
    parser.add_argument("--nuts-samples", type=int, help=f"per chain [{full['nuts_samples']}]")
    parser.add_argument("--num-pilot", type=int, help="guide set-up simulations")
    parser.add_argument("--population-size", type=int, default=16, help="N [16]")
    parser.add_argument("--subset-size", type=int, default=4, help="K [4]")
    parser.add_argument("--num-rounds", type=int, default=5, help="T [5]")
    parser.add_argument("--num-draws", type=int, default=128, help="S per aggregation [128]")
    parser.add_argument("--num-passes", type=int, default=1, help="candidate passes [1]")
    parser.add_argument("--batch-size", type=int, default=10, help="candidate mini-batch [10]")
    parser.add_argument("--seed", type=int, default=0, help="root seed [0]")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON results file [benchmarks/results/rsa_posterior.json; "
                             "rsa_posterior_quick.json with --quick]")
    parser.add_argument("--no-plot", action="store_true", help="skip the figure")
    args = parser.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "full"]
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.out is None:  # a smoke run never overwrites the full run's results
        args.out = DEFAULT_OUT.with_name("rsa_posterior_quick.json") if args.quick else DEFAULT_OUT
    return args


# ---------------------------------------------------------------------------------- data
def simulate(kind: str, key: jax.Array) -> dict[str, jax.Array]:
    """One data set of a kind: the model's arguments ``{"x", "y"}`` (see the module)."""
    x_key, theta_key, noise_key = jax.random.split(key, 3)
    if kind in ("separable", "far_ood"):
        w_scale, x_scale = (4.0, 1.0) if kind == "separable" else (1.0, 5.0)
        x = x_scale * jax.random.normal(x_key, (NUM_OBS, 5))
        theta = w_scale * jax.random.normal(theta_key, (6,))
        p = jax.nn.sigmoid(x @ theta[:-1] + theta[-1])
        return {"x": x, "y": jax.random.bernoulli(noise_key, p).astype(jnp.float32)}
    x = jax.random.normal(x_key, (NUM_OBS, 3))
    theta = jax.random.normal(theta_key, (4,))
    noise = 0.5 * jax.random.t(noise_key, 1.5, (NUM_OBS,))
    return {"x": x, "y": x @ theta[:-1] + theta[-1] + noise}


def _linear_design(key, num_obs):
    return lr.design_fn(key, num_obs, num_features=3)


def build_guides(num_pilot: int, names: Sequence[str]) -> dict[str, Any]:
    """The untrained iterative guides (their base update) of the models named."""
    guides = {}
    models = {"logistic": (lg.model, lg.design_fn), "linear": (lr.model, _linear_design)}
    for name in names:
        model, design = models[name]
        guide = AutoIterativeAmortizedMultivariateNormal(model, batch_size=10, num_passes=1,
                                                         min_steps=1)
        guide.setup(jax.random.key(0), design, (20, 60), num_pilot=num_pilot)
        guides[name] = guide
    return guides


def nuts_reference(sampler, guide, key, data) -> dict[str, Any]:
    """Mean, SD, covariance factor of the flat unconstrained latents under NUTS, and R-hat."""
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = sampler.sample(key, data["x"], y=data["y"])
    seconds = time.perf_counter() - start
    sites = guide.problem.sites
    samples = {n: jnp.asarray(result.samples[n]).reshape((-1,) + result.samples[n].shape[2:])
               for n in sites.names}
    flat = np.asarray(jax.jit(jax.vmap(sites.unconstrain))(samples), np.float64)
    cov = np.cov(flat, rowvar=False)
    return dict(mean=flat.mean(0), sd=flat.std(0), cov_tril=np.linalg.cholesky(cov),
                rhat=max(float(np.max(v)) for v in result.rhat.values()), seconds=seconds,
                num_divergent=int(result.num_divergent), warnings=[str(w.message)[:200]
                                                                    for w in caught])


# ------------------------------------------------------------------------------ methods
class ModelFns:
    """The compiled programs of one model (one per data shape): built once, reused across
    data sets, so only a kind's first data set pays for compiling."""

    def __init__(self, guide, args):
        self.guide, self.params, self.problem = guide, guide.init_params(), guide.problem
        n, k, t, s = args.population_size, args.subset_size, args.num_rounds, args.num_draws
        dim = self.problem.latent_dim
        problem, params = self.problem, self.params

        def pieces(data):
            def log_density(u):
                return problem.log_density(u, data)

            generate = iterative_generator(guide, params, data, batch_size=args.batch_size,
                                           num_passes=args.num_passes)
            return log_density, generate, build_score_fn(jax.random.key(0), log_density, dim)

        def first_generation(key, data):
            _, generate, score_fn = pieces(data)
            key_init, _ = jax.random.split(key)  # as rsa() splits it: the same first generation
            population = jax.vmap(generate)(jax.random.split(key_init, n))
            return population, jax.vmap(score_fn)(population)

        def averaging(population):
            return mixture_moments(population)

        def pooled(key, data, population):
            log_density, _, _ = pieces(data)
            return pooled_importance(key, log_density, population,
                                     num_draws=(t - 1) * n * s).candidate

        def laplace(data):
            log_density, _, _ = pieces(data)
            return laplace_candidate(log_density, problem.prior_loc, num_steps=20)

        def run_rsa(key, data, aggregator, reference):
            log_density, generate, score_fn = pieces(data)
            mean, sd = reference

            def diagnostic_fn(candidate):
                errors = moment_errors(candidate, mean, sd)
                return {"mean_error": errors.mean_error, "sd_error": errors.sd_error}

            result = rsa(key, generate, build_aggregate_fn(log_density, aggregator, num_draws=s),
                         population_size=n, subset_size=k, num_rounds=t, score_fn=score_fn,
                         answer_fn=lambda c: c.loc,
                         distance_fn=lambda a, b: jnp.sqrt(jnp.mean(((a - b) / sd) ** 2)),
                         diagnostic_fn=diagnostic_fn)
            return mixture_moments(result.population), result.info

        self.first_generation = jax.jit(first_generation)
        self.averaging = jax.jit(averaging)
        self.pooled = jax.jit(pooled)
        self.laplace = jax.jit(laplace)
        self.run_rsa = eqx.filter_jit(run_rsa)


def timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, out


def errors_of(candidate: GaussianCandidate, ref) -> dict[str, float]:
    e = moment_errors(candidate, jnp.asarray(ref["mean"], jnp.float32),
                      jnp.asarray(ref["sd"], jnp.float32))
    return {"mean_error": round(float(e.mean_error), 4), "sd_error": round(float(e.sd_error), 4)}


def evaluate_dataset(fns: ModelFns, key, data, ref, aggregators) -> dict[str, Any]:
    """Every method on one data set: errors, seconds, and the RSA curves."""
    row: dict[str, Any] = {"errors": {}, "seconds": {}, "curves": {}}
    t_gen, (population, scores) = timed(fns.first_generation, key, data)
    candidates = [jax.tree.map(lambda leaf, i=i: leaf[i], population)
                  for i in range(population.loc.shape[0])]
    member_errors = [errors_of(c, ref) for c in candidates]
    row["first_generation"] = {
        "mean_error": [e["mean_error"] for e in member_errors],
        "sd_error": [e["sd_error"] for e in member_errors],
        "elbo": [round(float(v), 3) for v in np.asarray(scores)],
    }
    row["errors"]["best_single_score"] = errors_of(best_by_score(population, scores), ref)
    row["errors"]["best_single_oracle"] = min(member_errors, key=lambda e: e["mean_error"])
    row["seconds"]["best_single_score"] = row["seconds"]["best_single_oracle"] = t_gen
    t_avg, averaged = timed(fns.averaging, population)
    row["errors"]["averaging"] = errors_of(averaged, ref)
    row["seconds"]["averaging"] = t_gen + t_avg
    t_pool, pooled = timed(fns.pooled, jax.random.fold_in(key, 1), data, population)
    row["errors"]["pooled_importance"] = errors_of(pooled, ref)
    row["seconds"]["pooled_importance"] = t_gen + t_pool
    t_lap, lap = timed(fns.laplace, data)
    row["errors"]["laplace"] = errors_of(lap, ref)
    row["seconds"]["laplace"] = t_lap
    reference = (jnp.asarray(ref["mean"], jnp.float32), jnp.asarray(ref["sd"], jnp.float32))
    for name, aggregator in aggregators.items():
        t_rsa, (final, info) = timed(fns.run_rsa, key, data, aggregator, reference)
        row["errors"][name] = errors_of(final, ref)
        row["seconds"][name] = t_rsa
        row["curves"][name] = {
            "mean_score": np.asarray(info.mean_score).round(3).tolist(),
            "best_score": np.asarray(info.best_score).round(3).tolist(),
            "diversity": np.asarray(info.diversity).round(4).tolist(),
            "mean_error": np.asarray(info.diagnostic["mean_error"]).round(4).tolist(),
            "sd_error": np.asarray(info.diagnostic["sd_error"]).round(4).tolist(),
        }
    row["seconds"] = {k: round(v, 4) for k, v in row["seconds"].items()}
    return row


# ----------------------------------------------------------------------------- training
def training_groups(args, guides, fns, samplers, key) -> tuple[list, list, dict]:
    """Simulated training data sets of the training kinds, with first generations and NUTS."""
    groups, densities, meta = [], [], {}
    for g, kind in enumerate(k for k in TRAIN_KINDS if k in args.kinds):
        model = MODEL_OF_KIND[kind]
        guide, problem = guides[model], guides[model].problem
        keys = jax.random.split(jax.random.fold_in(key, g), args.num_train)
        datas = [simulate(kind, jax.random.fold_in(k, 0)) for k in keys]
        refs = [nuts_reference(samplers[model], guide, jax.random.fold_in(k, 1), d)
                for k, d in zip(keys, datas)]
        firsts = [fns[model].first_generation(jax.random.fold_in(k, 2), d)[0]
                  for k, d in zip(keys, datas)]
        stack = lambda *leaves: jnp.stack(leaves)  # noqa: E731
        groups.append(TrainingSets(
            jax.tree.map(stack, *datas), jax.tree.map(stack, *firsts),
            jnp.asarray(np.stack([r["mean"] for r in refs]), jnp.float32),
            jnp.asarray(np.stack([r["cov_tril"] for r in refs]), jnp.float32)))
        densities.append(lambda u, data, problem=problem: problem.log_density(u, data))
        meta[kind] = {"num_datasets": args.num_train,
                      "max_rhat": max(r["rhat"] for r in refs),
                      "num_divergent": sum(r["num_divergent"] for r in refs)}
    return groups, densities, meta


def _chunk_means(values: np.ndarray, num: int = 10) -> list[float]:
    values = np.asarray(values, float)
    if values.size == 0:
        return []
    return [round(float(np.nanmean(part)), 4) for part in np.array_split(values, min(num,
                                                                                     values.size))]


# ------------------------------------------------------------------------------ summary
def summarize(rows_by_kind: dict[str, list[dict]]) -> dict[str, Any]:
    """Per method: worst and median errors per kind, the overall worst, the median time."""
    summary: dict[str, Any] = {}
    for method in METHODS:
        entry: dict[str, Any] = {"per_kind": {}}
        all_mean, all_sd, times = [], [], []
        for kind, rows in rows_by_kind.items():
            mean = [r["errors"][method]["mean_error"] for r in rows]
            sd = [r["errors"][method]["sd_error"] for r in rows]
            later = [r["seconds"][method] for r in rows[1:]] or [rows[0]["seconds"][method]]
            entry["per_kind"][kind] = {
                "worst_mean_error": max(mean), "median_mean_error": float(np.median(mean)),
                "worst_sd_error": max(sd), "median_sd_error": float(np.median(sd)),
                "seconds_per_dataset": round(float(np.median(later)), 4),
            }
            all_mean += mean
            all_sd += sd
            times += later
        entry["worst_mean_error"] = max(all_mean)
        entry["worst_sd_error"] = max(all_sd)
        entry["median_mean_error"] = float(np.median(all_mean))
        entry["seconds_per_dataset"] = round(float(np.median(times)), 4)
        summary[method] = entry
    return summary


def targets(summary: dict[str, Any], rows_by_kind: dict[str, list[dict]]) -> dict[str, Any]:
    """Issue 21's targets, read off the summary: RSA's worst case below the best single
    candidate's (by score), and the trained aggregator's below the untrained one's."""
    worst = {m: summary[m]["worst_mean_error"] for m in METHODS}
    rows = [r for kind_rows in rows_by_kind.values() for r in kind_rows]
    wins = sum(r["errors"]["rsa_learned"]["mean_error"] < r["errors"]["rsa_base"]["mean_error"]
               for r in rows)
    return {
        "rsa_base_below_best_single": worst["rsa_base"] < worst["best_single_score"],
        "rsa_learned_below_best_single": worst["rsa_learned"] < worst["best_single_score"],
        "learned_below_base": worst["rsa_learned"] < worst["rsa_base"],
        "learned_below_base_sd": (summary["rsa_learned"]["worst_sd_error"]
                                  < summary["rsa_base"]["worst_sd_error"]),
        "learned_wins_per_dataset": f"{wins} of {len(rows)}",
    }


def table(results: dict[str, Any]) -> str:
    """The summary as text: worst-case mean error (SDs), SD-ratio deviation, time per kind."""
    kinds = list(results["datasets"])
    head = f"{'method':20s}" + "".join(f"{k:>22s}" for k in kinds) + f"{'overall':>16s}{'s/set':>8s}"
    lines = [head, f"{'':20s}" + "".join(f"{'mean / sd (worst)':>22s}" for _ in kinds)]
    for method, entry in results["summary"].items():
        cells = "".join(f"{entry['per_kind'][k]['worst_mean_error']:>12.3g} / "
                        f"{entry['per_kind'][k]['worst_sd_error']:<7.3g}" for k in kinds)
        lines.append(f"{method:20s}{cells}{entry['worst_mean_error']:>8.3g} / "
                     f"{entry['worst_sd_error']:<6.3g}{entry['seconds_per_dataset']:>8.3f}")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: str | Path) -> Path:
    """Worst-case mean error per method and kind; RSA's population error against rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(results["datasets"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    width, top = 0.8 / len(kinds), 10.0
    for j, kind in enumerate(kinds):
        values = np.array([results["summary"][m]["per_kind"][kind]["worst_mean_error"]
                           for m in METHODS])
        x = np.arange(len(METHODS)) + (j - (len(kinds) - 1) / 2) * width
        left.bar(x, np.minimum(values, top), width, label=kind, color=f"C{j}")
        for xi, v in zip(x, values):
            if v > top:
                left.text(xi, top * 1.05, f"{v:.0e}", ha="center", va="bottom", fontsize=6,
                          rotation=90)
    left.set_xticks(np.arange(len(METHODS)), METHODS, rotation=35, ha="right", fontsize=8)
    left.set_yscale("log")
    left.set_ylim(1e-2, top * 6)
    left.set_ylabel("worst |mean error| / NUTS SD\n(max over data sets)")
    left.legend(fontsize=8, loc="upper left")
    left.grid(alpha=0.3, axis="y")
    styles = {"rsa_base": "-", "rsa_learned": "--"}
    for j, kind in enumerate(kinds):
        for name, style in styles.items():
            curves = np.array([r["curves"][name]["mean_error"]
                               for r in results["datasets"][kind]])
            rounds = np.arange(1, curves.shape[1] + 1)
            right.plot(rounds, np.minimum(curves.max(0), top), style, color=f"C{j}",
                       marker="o", ms=3, label=f"{kind}, {name}")
    right.set_yscale("log")
    right.set_ylim(1e-2, top * 1.2)
    right.set_xticks(rounds)
    right.set_xlabel("T (rounds, first generation included)")
    right.set_ylabel("population-mean worst error\n(max over data sets)")
    right.legend(fontsize=7)
    right.grid(alpha=0.3)
    s = results["settings"]
    fig.suptitle(f"RSA over posterior candidates (N={s['population_size']}, "
                 f"K={s['subset_size']}, T={s['num_rounds']}, S={s['num_draws']})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write the JSON (and the figure), print the table; return results."""
    argv_used = list(sys.argv[1:] if argv is None else argv)
    if argv_used[:1] == ["--table"]:  # print a results file's table and run nothing
        import json

        results = json.loads(Path(argv_used[1]).read_text())
        print(table(results))
        return results
    args = parse_args(argv_used)
    start = time.perf_counter()
    load_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    key = jax.random.key(args.seed)
    guides = build_guides(args.num_pilot, sorted({MODEL_OF_KIND[k] for k in args.kinds}))
    samplers = {name: build_reference_sampler(g.problem.model, num_chains=4,
                                              num_warmup=args.nuts_warmup,
                                              num_samples=args.nuts_samples, progress=False)
                for name, g in guides.items()}
    fns = {name: ModelFns(g, args) for name, g in guides.items()}
    timings: dict[str, float] = {"setup": time.perf_counter() - start}

    # The aggregator: untrained (the base, exactly) and trained aggregation-aware.
    mark = time.perf_counter()
    groups, densities, train_meta = training_groups(args, guides, fns, samplers,
                                                    jax.random.fold_in(key, 1))
    timings["training_data"] = time.perf_counter() - mark
    untrained = SetAggregator(key=jax.random.fold_in(key, 2))
    fit = fit_aggregator(jax.random.fold_in(key, 3), untrained, groups, densities,
                         subset_size=args.subset_size, num_rounds=args.num_rounds,
                         num_steps=args.train_steps, num_draws=args.num_draws,
                         max_seconds=args.train_seconds, progress=False)
    timings["training"] = fit.seconds
    # The base is the aggregator with the network off (None: its true cost). --quick runs it as
    # the untrained network instead (the same outputs, exactly: tested), one compile fewer.
    aggregators = {"rsa_base": untrained if args.quick else None, "rsa_learned": fit.aggregator}

    mark = time.perf_counter()
    rows_by_kind: dict[str, list[dict]] = {}
    nuts_meta: dict[str, Any] = {}
    for kind in args.kinds:
        k_index = KINDS.index(kind)
        model = MODEL_OF_KIND[kind]
        rows, rhats, divergent, nuts_seconds = [], [], 0, []
        for i in range(args.num_datasets):
            data_key = jax.random.fold_in(jax.random.fold_in(key, 100 + k_index), i)
            data = simulate(kind, jax.random.fold_in(data_key, 0))
            ref = nuts_reference(samplers[model], guides[model], jax.random.fold_in(data_key, 1),
                                 data)
            rhats.append(ref["rhat"])
            nuts_seconds.append(ref["seconds"])
            divergent += ref["num_divergent"]
            row = evaluate_dataset(fns[model], jax.random.fold_in(data_key, 2), data, ref,
                                   aggregators)
            row["nuts"] = {"rhat": round(ref["rhat"], 4), "num_divergent": ref["num_divergent"],
                           "sd": np.round(ref["sd"], 4).tolist()}
            rows.append(row)
            print(f"{kind} {i}: " + ", ".join(
                f"{m} {row['errors'][m]['mean_error']:.3f}/{row['errors'][m]['sd_error']:.3f}"
                for m in METHODS), flush=True)
        rows_by_kind[kind] = rows
        nuts_meta[kind] = {"max_rhat": max(rhats), "num_divergent": divergent,
                           "seconds_per_dataset": round(float(np.median(
                               nuts_seconds[1:] or nuts_seconds)), 4)}
    timings["evaluation"] = time.perf_counter() - mark

    s, n, t = args.num_draws, args.population_size, args.num_rounds
    summary = summarize(rows_by_kind)
    results: dict[str, Any] = {
        "command": " ".join([".venv/bin/python benchmarks/bench_rsa_posterior.py", *argv_used]),
        "environment": dict(run_environment(), xla_flags=os.environ.get("XLA_FLAGS", ""),
                            load_average_at_start=load_at_start),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "budgets": {
            "density_evaluations_per_aggregation": s,
            "rsa_density_evaluations": (t - 1) * n * s,
            "pooled_importance_density_evaluations": (t - 1) * n * s,
            "rsa_learned_extra_gradient_evaluations": (t - 1) * n * (args.subset_size + 1),
            "score_density_evaluations": t * n * 64,
        },
        "nuts": {"num_chains": 4, "num_warmup": args.nuts_warmup,
                 "num_samples": args.nuts_samples, "test": nuts_meta, "training": train_meta},
        "training": {
            "kinds": [k for k in TRAIN_KINDS if k in args.kinds], "num_datasets_per_kind": args.num_train,
            "steps": int(len(fit.losses)), "seconds": round(fit.seconds, 2),
            "reason": fit.reason,
            "loss_by_tenth": _chunk_means(fit.losses),
            "base_loss_by_tenth": _chunk_means(fit.base_losses),
            "final_tenth_gain": (round(float(np.nanmean(fit.base_losses[-len(fit.losses) // 10:])
                                             - np.nanmean(fit.losses[-len(fit.losses) // 10:])), 4)
                                 if len(fit.losses) >= 10 else None),
        },
        "summary": summary,
        "targets": targets(summary, rows_by_kind),
        "datasets": rows_by_kind,
    }
    timings["total"] = time.perf_counter() - start
    results["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    results["environment"]["load_average_at_end"] = (
        list(os.getloadavg()) if hasattr(os, "getloadavg") else None)
    write_results(args.out, results)
    if not args.no_plot:
        plot(results, args.out.with_suffix(".png"))
    print(table(results))
    print("targets:", results["targets"])
    print(f"training: {results['training']['steps']} steps in {fit.seconds:.0f} s; "
          f"total {timings['total']:.0f} s")
    return results


if __name__ == "__main__":
    main()
