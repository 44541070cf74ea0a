"""Does the learned iterative update beat its own base? The ablation of issue 17.

For Bayesian logistic regression with ``d = 5`` and ``d = 20`` covariates (plus an intercept), an
:class:`~amortized_ppl.AutoIterativeAmortizedMultivariateNormal` is trained by
:func:`~amortized_ppl.iterative.fit_iterative` on simulated data sets of ``N = 10^2``, ``10^3`` and ``10^4``
(mini-batches of ``N / 10``), two passes each, by the readout's ELBO alone. Then, on
held-out data sets at each ``N`` (mini-batches of ``max(N / 100, min(1000, N / 10))`` rows, so a
pass is 10 or 100 of them), in one run:

- **base** (the network off: its untrained, all-zero outputs) and **learned** after 1, 2 and 4
  passes, both from the Laplace fit of one mini-batch, as ``refine`` runs them (the same key: the
  same mini-batch order and cubature rotations). The readout network costs no gradient evaluation,
  so equal passes are equal gradient evaluations (``passes x P x 2 D``);
- **converged base**: 16 passes, the Gaussian variational optimum both updates head for;
- **SVI**: Adam on the same Gaussian from the same start, the same mini-batches and cubature points,
  for 1 to 64 passes at four learning rates, the best rate per pass count chosen on the data sets
  it is scored on (which favours it); ``N <= 10^5``;
- **Laplace**: 8 damped Newton steps on the full log joint;
- **NUTS**: cold blackjax NUTS, 4 chains x 1,000 draws after 500 warm-up steps, the truth for
  ``N <= 10^5``. Its own Monte Carlo error is reported (``nuts_mc_error``: the median over
  coordinates of ``SD / sqrt(ESS)`` in posterior SDs): errors against NUTS below about that figure
  are not resolved, so every method is also scored against the converged base.

Errors are ``|posterior mean - reference mean| / reference SD`` per coordinate (median over
coordinates and data sets, and the worst); SD ratios are ``SD / reference SD``. Times are per data
set, compiled, the fastest of two runs, on this run's device.

    python benchmarks/bench_iterative_learned.py [--dims 5,20] [--sizes 100,1000,10000,100000,1000000]
        [--num-datasets 5] [--train-steps 1200,400] [--train-seconds 900] [--quick] [--merge]
    python benchmarks/bench_iterative_learned.py --table benchmarks/results/iterative_learned.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

import arviz as az
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_iterative as bi  # noqa: E402

from amortized_ppl.guides import AutoIterativeAmortizedMultivariateNormal  # noqa: E402
from amortized_ppl.iterative.passes import run_passes, steps_per_pass  # noqa: E402
from amortized_ppl.iterative.svi import svi_refine  # noqa: E402
from amortized_ppl.iterative.train import TrainingSize, fit_iterative  # noqa: E402
from amortized_ppl.models import logistic_regression as lg  # noqa: E402
from amortized_ppl.reference import build_reference_sampler  # noqa: E402
from amortized_ppl.results_file import write_results  # noqa: E402

PASSES = (1, 2, 4)
CONVERGED_PASSES = 16
SVI_PASSES = (1, 4, 16, 64)
SVI_RATES = (1e-3, 3e-3, 1e-2, 3e-2)
SVI_MAX_N = 100_000
SVI_LONG_MAX_N = 10_000  # 64 SVI passes only up to here (at 10^5 up to 16, enough to show 10x)
NUTS_MAX_N = 100_000
BIG_N = 1_000_000  # at most 3 data sets from here on (no NUTS or SVI; the converged base)


def batch_size_for(num_obs: int) -> int:
    """``max(N / 100, min(1000, N / 10))``: 10 mini-batches per pass up to ``N = 10^4``, 100
    beyond."""
    return max(num_obs // 100, min(1000, num_obs // 10))


TRAIN_SIZES = "100:10,1000:100,10000:1000"


def training_sizes(spec: str, quick: bool):
    """``"N:m,N:m"`` -> two-pass :class:`TrainingSize` values (``--quick``: 200:20,2000:200)."""
    if quick:
        spec = "200:20,2000:200"
    try:
        pairs = [tuple(int(v) for v in item.split(":")) for item in spec.split(",")]
        return [TrainingSize((n, n), m, 2) for n, m in pairs]
    except ValueError:
        raise ValueError(f"--train-sizes: expected N:m pairs such as 1000:100,10000:1000, got "
                         f"{spec!r}.") from None


def train(dim: int, steps: int, seconds: float, sizes: str, quick: bool, key):
    design = functools.partial(lg.design_fn, num_features=dim)
    guide = AutoIterativeAmortizedMultivariateNormal(lg.model, batch_size=1000)
    result = fit_iterative(key, guide, design_fn=design, sizes=training_sizes(sizes, quick),
                           num_iterations=steps, max_seconds=seconds, elbo_weight=1.0,
                           kl_weight=0.0, learning_rate=3e-3, progress=False)
    return guide, result


def simulate(dim: int, key, num_obs: int):
    (x,), _ = lg.design_fn(key, num_obs, dim)
    theta = jax.random.normal(jax.random.fold_in(key, 1), (dim + 1,))
    logits = x @ theta[:-1] + theta[-1]
    y = jax.random.bernoulli(jax.random.fold_in(key, 2), jax.nn.sigmoid(logits))
    return x, y.astype(jnp.float32)


@functools.lru_cache(maxsize=None)
def _sampler():
    return build_reference_sampler(lg.model, num_chains=4, num_warmup=500, num_samples=1000)


def nuts_truth(key, x, y):
    """``(mean, sd, mc_error in SDs)`` of the flat latents ``[w, b]`` by cold NUTS."""
    result = _sampler().sample(key, x, y=y)
    w = np.asarray(result.samples["w"])  # (chains, draws, d)
    b = np.asarray(result.samples["b"])[..., None]
    chains = np.concatenate([w, b], axis=-1)
    flat = chains.reshape(-1, chains.shape[-1])
    ess = np.asarray([az.ess(chains[..., i]) for i in range(chains.shape[-1])], dtype=float)
    return flat.mean(0), flat.std(0), float(np.median(1.0 / np.sqrt(ess)))


@eqx.filter_jit
def laplace_start(engine, problem, arguments, mask, batch_size):
    """The state ``refine`` starts from: the Laplace fit of one mini-batch (its first rows; the
    rows are exchangeable)."""
    per_pass = steps_per_pass(mask.shape[0], batch_size)
    rows = jnp.arange(batch_size)
    return engine.start(problem, engine.init_state(problem), problem.take(arguments, rows),
                        mask[rows], per_pass)


@eqx.filter_jit
def passes(engine, problem, key, state, arguments, mask, batch_size, num_passes):
    step = engine.kernel(problem)[1]
    state, _ = run_passes(key, step, engine.network, state, arguments, mask, problem.take,
                          batch_size=batch_size, num_passes=num_passes)
    return state


def refine_from_start(engine, problem, key, arguments, mask, batch_size, num_passes):
    """What ``refine`` does, timed as a whole: the Laplace start, then the passes."""
    state = laplace_start(engine, problem, arguments, mask, batch_size)
    return passes(engine, problem, key, state, arguments, mask, batch_size, num_passes)


svi_jit = eqx.filter_jit(svi_refine)


def moments(loc, tril):
    return np.asarray(loc), np.sqrt(np.sum(np.asarray(tril) ** 2, axis=-1))


class Scores:
    """Per-method errors against each reference, SD ratios and times."""

    def __init__(self):
        self.data = {}

    def add(self, name, loc, sd, references, seconds=None):
        entry = self.data.setdefault(name, {"seconds": []})
        for ref_name, (mean, ref_sd) in references.items():
            err, ratio = bi.score(loc, sd, mean, ref_sd)
            entry.setdefault(f"error_{ref_name}", []).append(err)
            entry.setdefault(f"ratio_{ref_name}", []).append(ratio)
        if seconds is not None:
            entry["seconds"].append(seconds)

    def summary(self, name):
        entry = self.data[name]
        out = {}
        for key, values in entry.items():
            if key.startswith("error_"):
                errors = np.concatenate(values)
                ref = key[len("error_"):]
                out[f"median_error_{ref}"] = float(np.median(errors))
                out[f"max_error_{ref}"] = float(np.max(errors))
            elif key.startswith("ratio_"):
                ratios = np.concatenate(values)
                ref = key[len("ratio_"):]
                out[f"sd_ratio_min_{ref}"] = float(np.min(ratios))
                out[f"sd_ratio_max_{ref}"] = float(np.max(ratios))
        if entry["seconds"]:
            out["seconds_per_dataset"] = float(np.median(entry["seconds"]))
        return out


def run_size(dim, guide, learned_params, num_obs, num_datasets, quick, key):
    problem = guide.problem
    base, learned = guide.engine(guide.init_params()), guide.engine(learned_params)
    m = batch_size_for(num_obs)
    per_pass = steps_per_pass(num_obs, m)
    evaluations_per_pass = per_pass * 2 * problem.latent_dim
    scores, mc_errors = Scores(), []
    with_nuts, with_svi = num_obs <= NUTS_MAX_N, num_obs <= SVI_MAX_N
    svi_passes = (1, 4) if quick else (SVI_PASSES if num_obs <= SVI_LONG_MAX_N
                                       else SVI_PASSES[:-1])
    if num_obs >= BIG_N:
        num_datasets = min(num_datasets, 3)
    rates = SVI_RATES[1::2] if quick else SVI_RATES
    for i in range(num_datasets):
        data_key = jax.random.fold_in(key, 1000 * num_obs + i)
        x, y = simulate(dim, data_key, num_obs)
        arguments, mask, _ = guide.prepare(x, y)
        arguments = {k: v[0] if isinstance(v, jax.Array) else v for k, v in arguments.items()}
        mask = jnp.asarray(mask[0])
        run_key = jax.random.fold_in(data_key, 3)
        start = laplace_start(base, problem, arguments, mask, m)
        converged = passes(base, problem, run_key, start, arguments, mask, m, CONVERGED_PASSES)
        references = {"vi": moments(converged.loc, converged.scale_tril)}
        if with_nuts:
            start_time = time.perf_counter()
            mean, sd, mc = nuts_truth(jax.random.fold_in(data_key, 9), x, y)
            nuts_seconds = time.perf_counter() - start_time
            references = {"nuts": (mean, sd), **references}
            mc_errors.append(mc)
            scores.add("nuts", mean, sd, {"vi": references["vi"]}, nuts_seconds)
        for name, engine in (("base", base), ("learned", learned)):
            for p in PASSES:
                seconds, state = bi.timed(functools.partial(
                    refine_from_start, engine, problem, run_key, arguments, mask, m, p))
                scores.add(f"{name}_{p}", *moments(state.loc, state.scale_tril), references,
                           seconds)
        scores.add(f"base_{CONVERGED_PASSES}", *references["vi"],
                   {k: v for k, v in references.items() if k != "vi"})
        seconds, (loc, sd) = bi.timed(
            functools.partial(bi._laplace, problem, arguments, mask, problem.prior_loc, 8))
        scores.add("laplace", loc, sd, references, seconds)
        if with_svi:
            for p in svi_passes:
                for rate in rates:
                    loc, tril, _ = svi_jit(jax.random.fold_in(data_key, 4), problem, arguments,
                                           mask, loc=start.loc, scale_tril=start.scale_tril,
                                           batch_size=m, num_passes=p,
                                           learning_rate=jnp.asarray(rate))
                    scores.add(f"svi_{p}_{rate:g}", *moments(loc, tril), references)
        print(f"d={dim} N={num_obs} data set {i + 1}/{num_datasets}", flush=True)
    out = {
        "num_obs": num_obs,
        "batch_size": m,
        "batches_per_pass": per_pass,
        "gradient_evaluations_per_pass": evaluations_per_pass,
        "references": ["nuts", "vi"] if with_nuts else ["vi"],
        "nuts_mc_error": float(np.median(mc_errors)) if mc_errors else None,
        "methods": {},
    }
    for name in scores.data:
        if name.startswith("svi_"):
            continue
        entry = scores.summary(name)
        if name.startswith(("base_", "learned_")):
            p = int(name.split("_")[1])
            entry.update(passes=p, gradient_evaluations=p * evaluations_per_pass)
        out["methods"][name] = entry
    if with_svi:
        svi = {}
        for p in svi_passes:
            per_rate = {r: scores.summary(f"svi_{p}_{r:g}") for r in rates}
            best = min(rates, key=lambda r: per_rate[r]["median_error_vi"])
            svi[str(p)] = dict(per_rate[best], passes=p, best_learning_rate=best,
                               gradient_evaluations=p * evaluations_per_pass)
        out["svi"] = svi
    out["matches"] = matches(out, svi_passes if with_svi else ())
    return out


def matches(size, svi_passes):
    """Base passes and SVI gradient evaluations needed to reach the learned update's accuracy
    (against the converged base, the low-noise reference)."""
    methods = size["methods"]
    out = {}
    for p in PASSES:
        target = methods[f"learned_{p}"]["median_error_vi"]
        base = [q for q in PASSES if methods[f"base_{q}"]["median_error_vi"] <= target]
        entry = {"learned_median_error_vi": target,
                 "base_passes": base[0] if base else None}
        if svi_passes:
            reached = [q for q in svi_passes if size["svi"][str(q)]["median_error_vi"] <= target]
            entry["svi_passes"] = reached[0] if reached else None
            entry["svi_passes_tried"] = max(svi_passes)
            entry["svi_ratio" if reached else "svi_ratio_at_least"] = (
                (reached[0] if reached else max(svi_passes)) / p)
        out[str(p)] = entry
    return out


def markdown_table(path) -> str:
    """A results file as one markdown table per dimension."""
    results = json.loads(Path(path).read_text())
    lines = []
    for model in results["models"]:
        lines += [f"**Logistic regression, d = {model['dim']}** (trained {model['train_steps']} "
                  f"steps, {model['train_seconds']:.0f} s)", "",
                  "| N (P) | passes | base err vs VI / NUTS | learned err vs VI / NUTS | "
                  "learned SD ratios (NUTS) | learned ms | Laplace err VI / NUTS, ms | "
                  "SVI passes to match learned |",
                  "|---" * 8 + "|"]
        for size in model["sizes"]:
            methods = size["methods"]
            nuts = "nuts" in size["references"]

            def err(entry, nuts=nuts):
                vi = f"{entry['median_error_vi']:.3f}"
                return vi + (f" / {entry['median_error_nuts']:.3f}" if nuts else " / -")

            lap = methods["laplace"]
            for p in PASSES:
                b, le = methods[f"base_{p}"], methods[f"learned_{p}"]
                ratios = (f"{le['sd_ratio_min_nuts']:.2f}-{le['sd_ratio_max_nuts']:.2f}" if nuts
                          else f"{le['sd_ratio_min_vi']:.2f}-{le['sd_ratio_max_vi']:.2f} (VI)")
                match = size["matches"][str(p)]
                svi = ("-" if "svi_passes" not in match else
                       f"{match['svi_passes']} ({match['svi_ratio']:.0f}x)"
                       if match["svi_passes"] else
                       f"> {match['svi_passes_tried']} (> {match['svi_ratio_at_least']:.0f}x)")
                lap_cell = (f"{err(lap)}, {1000 * lap['seconds_per_dataset']:.1f}" if p == 1
                            else "")
                lines.append(
                    f"| {size['num_obs']:,} ({size['batches_per_pass']}) | {p} | {err(b)} | "
                    f"{err(le)} | {ratios} | {1000 * le['seconds_per_dataset']:.1f} | "
                    f"{lap_cell} | {svi} |")
            if nuts:
                lines.append(f"| {size['num_obs']:,} | NUTS Monte Carlo error "
                             f"{size['nuts_mc_error']:.3f} SD; converged base (16 passes) vs "
                             f"NUTS {methods['base_16']['median_error_nuts']:.3f} | | | | | | |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="5,20")
    parser.add_argument("--sizes", default="100,1000,10000,100000,1000000")
    parser.add_argument("--num-datasets", type=int, default=5)
    parser.add_argument("--train-steps", default="1200,400",
                        help="optimizer steps per dimension (one value, or one per --dims)")
    parser.add_argument("--train-seconds", type=float, default=900.0)
    parser.add_argument("--train-sizes", default=TRAIN_SIZES,
                        help="training data-set sizes and mini-batches, N:m pairs (two passes)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and training, fewer SVI settings (a smoke test)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                             "iterative_learned.json"))
    parser.add_argument("--merge", action="store_true",
                        help="add to (or replace the same dimensions in) an existing --out file")
    parser.add_argument("--table", metavar="RESULTS_JSON",
                        help="print a results file as markdown tables and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(args.table), end="")
        return {}
    dims = [int(d) for d in args.dims.split(",")]
    sizes = [int(n) for n in args.sizes.split(",")]
    steps = [int(s) for s in args.train_steps.split(",")]
    if len(steps) not in (1, len(dims)):
        parser.error(f"--train-steps: give one value or one per dimension {dims}, got {steps}.")
    steps = dict(zip(dims, steps * len(dims) if len(steps) == 1 else steps))
    try:
        training_sizes(args.train_sizes, args.quick)
    except ValueError as error:
        parser.error(str(error))
    if min(sizes) < 20:
        parser.error(f"--sizes: every N must be at least 20 (two mini-batches), got {sizes}.")
    results = {
        "command": "python benchmarks/bench_iterative_learned.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "device": str(jax.devices()[0]),
        "environment": {"python": platform.python_version(), "jax": jax.__version__,
                        "cpus": os.cpu_count()},
        "models": [],
    }
    start = time.perf_counter()
    for dim in dims:
        key = jax.random.key(dim)
        guide, trained = train(dim, steps[dim], args.train_seconds, args.train_sizes,
                               args.quick, key)
        print(f"d={dim}: trained {len(trained.history)} steps in {trained.seconds:.0f} s",
              flush=True)
        model = {
            "dim": dim,
            "train_steps": int(len(trained.history)),
            "train_seconds": trained.seconds,
            "training_sizes": [list(map(int, s.num_obs)) + [s.batch_size, s.num_passes]
                               for s in trained.training_sizes],
            "sizes": [],
        }
        for n in sizes:
            model["sizes"].append(run_size(dim, guide, trained.params, n, args.num_datasets,
                                           args.quick, jax.random.fold_in(key, 17)))
        results["models"].append(model)
    results["seconds"] = time.perf_counter() - start
    if args.merge and Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        kept = [m for m in old["models"] if m["dim"] not in dims]
        results["models"] = sorted(kept + results["models"], key=lambda m: m["dim"])
        results["runs"] = old.get("runs", [{k: old[k] for k in ("command", "seconds")}]) + [
            {"command": results["command"], "seconds": results["seconds"]}]
    write_results(args.out, results)
    print(markdown_table(args.out))
    return results


if __name__ == "__main__":
    main()
