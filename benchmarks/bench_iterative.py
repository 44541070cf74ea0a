"""Iterative amortized inference at scale: accuracy, time and memory against the alternatives.

Two models of the zoo: known-noise Bayesian linear regression (``d = 8`` plus an intercept; the
closed-form posterior is the truth) and Bayesian logistic regression (``d = 5`` plus an intercept;
blackjax NUTS, 4 chains x 1,000 draws after 500 warm-up steps, is the truth). For each model an
:class:`~amortized_ppl.AutoIterativeAmortizedMultivariateNormal` is trained by
:func:`~amortized_ppl.iterative.fit_iterative` within ``--train-seconds``, then evaluated with

- **learned**: the trained update;
- **base**: the same update with the network switched off (its untrained, all-zero outputs: the
  base natural-gradient schedule), an ablation of what training adds;
- **SVI**: Adam on the same Gaussian from the same initial state, the same mini-batches and the
  same gradient evaluations (best of three learning rates, chosen per setting on the same data
  sets it is scored on, which favours it);
- **one-shot**: an :class:`~amortized_ppl.AutoAmortizedMultivariateNormal` without Newton steps,
  trained on data sets of 10 to 200 observations within ``--train-seconds``;
- **Laplace**: damped Newton steps on the full log joint per data set, vectorized over data sets
  (exact for linear regression);
- **NUTS**: blackjax NUTS, warm-started from the iterative posterior (draws as initial positions,
  its covariance as a fixed dense inverse mass matrix, 100 step-size warm-up steps, 4 x 250 draws),
  as the trust ladder runs it; and cold NUTS as the reference for logistic regression.

Errors are ``|posterior mean - true mean| / true SD`` per coordinate (median over coordinates and
data sets, and the worst); SD ratios are ``SD / true SD``. Times are per data set, compiled, the
fastest of two runs. Sections: ``linear`` (N = 10^3 .. 10^6), ``logistic`` (N = 10^4, 10^5),
``small`` (logistic, N of 20, 50, 100 and 200, vectorized over data sets padded to 200), ``memory`` (peak RSS in a fresh
process per N), ``long`` (10x more passes than trained). Usage::

    python benchmarks/bench_iterative.py                 # everything, about 15 minutes on 2 cores
    python benchmarks/bench_iterative.py --sections linear small --train-seconds 60
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amortized_ppl import AutoAmortizedMultivariateNormal, fit  # noqa: E402
from amortized_ppl.guides import AutoIterativeAmortizedMultivariateNormal  # noqa: E402
from amortized_ppl.iterative.passes import run_passes  # noqa: E402
from amortized_ppl.iterative.svi import svi_refine  # noqa: E402
from amortized_ppl.iterative.train import fit_iterative  # noqa: E402
from amortized_ppl.ladder import warm_start  # noqa: E402
from amortized_ppl.laplace import newton_laplace  # noqa: E402
from amortized_ppl.models import linear_regression as lr  # noqa: E402
from amortized_ppl.models import logistic_regression as lg  # noqa: E402
from amortized_ppl.reference import build_reference_sampler  # noqa: E402

MODELS = {
    "linear": (lr.model_known_noise, lr.design_fn),
    "logistic": (lg.model, lg.design_fn),
}
TRAIN_SIZES = ((20, 200), 256, 1024)
SVI_RATES = (1e-3, 1e-2, 1e-1)


def simulate(name, key, num_obs):
    """One data set of the model's prior predictive: ``(x, y, true flat latents)``."""
    model, design_fn = MODELS[name]
    (x,), _ = design_fn(key, num_obs)
    theta = jax.random.normal(jax.random.fold_in(key, 1), (x.shape[1] + 1,))
    logits = x @ theta[:-1] + theta[-1]
    k = jax.random.fold_in(key, 2)
    if name == "linear":
        y = logits + lr.NOISE_SCALE * jax.random.normal(k, (num_obs,))
    else:
        y = jax.random.bernoulli(k, jax.nn.sigmoid(logits)).astype(jnp.float32)
    return x, y


def timed(fn, repeats=2):
    best, out = np.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best, out


def score(loc, sd, true_mean, true_sd):
    err = np.abs(np.asarray(loc) - np.asarray(true_mean)) / np.asarray(true_sd)
    ratio = np.asarray(sd) / np.asarray(true_sd)
    return err, ratio


def summarize(errs, ratios, seconds):
    errs, ratios = np.concatenate(errs), np.concatenate(ratios)
    return {
        "median_error": float(np.median(errs)),
        "max_error": float(np.max(errs)),
        "sd_ratio_min": float(np.min(ratios)),
        "sd_ratio_max": float(np.max(ratios)),
        "seconds_per_dataset": float(np.median(seconds)),
    }


def train_guides(name, seconds, one_shot_seconds, key):
    model, design_fn = MODELS[name]
    guide = AutoIterativeAmortizedMultivariateNormal(model, batch_size=1000)
    result = fit_iterative(
        key,
        guide,
        design_fn=design_fn,
        sizes=TRAIN_SIZES,
        batch_size=32,
        num_passes=3,
        num_iterations=100_000,
        max_seconds=seconds,
        elbo_weight=10.0,
        learning_rate=3e-3,
        progress=False,
    )
    one_shot = AutoAmortizedMultivariateNormal(model, max_obs=10**6)
    shot = fit(
        jax.random.fold_in(key, 1),
        one_shot,
        design_fn=design_fn,
        num_obs=(10, 200),
        num_steps=100_000,
        max_seconds=one_shot_seconds,
        progress=False,
    )
    return guide, result, one_shot, shot


@functools.lru_cache(maxsize=None)
def sampler_for(name, num_warmup, num_samples):
    """One compiled NUTS program per setting (and data shape), not one per data set."""
    return build_reference_sampler(
        MODELS[name][0], num_chains=4, num_warmup=num_warmup, num_samples=num_samples
    )


def truth(name, key, x, y):
    """``(mean, sd)`` of the flat latents ``[w, b]``: closed form, or cold NUTS."""
    if name == "linear":
        exact = lr.exact_posterior(x, y)
        return np.asarray(exact.mean), np.sqrt(np.diag(np.asarray(exact.cov)))
    result = sampler_for("logistic", 500, 1000).sample(key, x, y=y)
    draws = np.concatenate(
        [
            np.asarray(result.samples["w"]).reshape(-1, x.shape[1]),
            np.asarray(result.samples["b"]).reshape(-1, 1),
        ],
        axis=1,
    )
    return draws.mean(0), draws.std(0)


@eqx.filter_jit
def _one_pass(key, problem, engine, state, arguments, mask, batch_size):
    """Exactly one shuffled pass of the engine's update (``engine.refine`` would add passes up
    to the engine's ``min_steps`` when a pass has fewer mini-batches than that)."""
    step = engine.kernel(problem)[1]
    return run_passes(key, step, engine.network, state, arguments, mask, problem.take,
                      batch_size=batch_size, num_passes=1)


def iterative_fit(guide, params, key, x, y, batch_size, num_passes):
    problem, engine = guide.problem, guide.engine(params)
    arguments, mask, _ = guide.prepare(x, y)
    arguments = {k: v[0] if isinstance(v, jax.Array) else v for k, v in arguments.items()}
    mask = jnp.asarray(mask[0])

    def run():
        state = engine.init_state(problem)
        for p in range(num_passes):
            state, _ = _one_pass(
                jax.random.fold_in(key, p), problem, engine, state, arguments, mask, batch_size
            )
        return state

    seconds, state = timed(run)
    sd = jnp.sqrt(jnp.sum(state.scale_tril**2, -1))
    return seconds, state.loc, sd, state.scale_tril, (arguments, mask)


svi_refine_jit = eqx.filter_jit(svi_refine)


def svi_fit(guide, key, arguments, mask, batch_size, num_passes, rate):
    def run():
        return svi_refine_jit(
            key,
            guide.problem,
            arguments,
            mask,
            batch_size=batch_size,
            num_passes=num_passes,
            learning_rate=rate,
        )

    seconds, (loc, tril, _) = timed(run)
    return seconds, loc, jnp.sqrt(jnp.sum(tril**2, -1))


@eqx.filter_jit
def _laplace(problem, arguments, mask, init, num_steps):
    fit_ = newton_laplace(
        lambda u: problem.log_density(u, arguments, mask, 1.0), init, num_steps=num_steps
    )
    return fit_.loc, jnp.sqrt(jnp.sum(fit_.scale_tril**2, -1))


def warm_nuts(name, guide, key, loc, tril, x, y):
    sampler = sampler_for(name, 100, 250)
    draws = loc + jax.random.normal(key, (4, loc.shape[0])) @ tril.T
    init, inverse_mass = warm_start(guide.problem.sites, draws, tril @ tril.T, jnp.zeros(4), 4)

    def run():
        samples, _ = sampler.draw(key, x, y=y, init_params=init, inverse_mass_matrix=inverse_mass)
        return samples

    seconds, samples = timed(run)
    flat = np.concatenate(
        [np.asarray(samples["w"]).reshape(-1, x.shape[1]), np.asarray(samples["b"]).reshape(-1, 1)],
        axis=1,
    )
    return seconds, flat.mean(0), flat.std(0)


def passes_for(name):
    return 1 if name == "linear" else 4


def large_n_section(name, sizes, num_datasets, trained, key, nuts_max):
    guide, result, one_shot, shot = trained
    learned, base = result.params, guide.init_params()
    rows = []
    for n in sizes:
        batch = max(1000, n // 100)
        passes = passes_for(name)
        methods: dict[str, list] = {}
        for i in range(num_datasets):
            data_key = jax.random.fold_in(key, 1000 * n + i)
            x, y = simulate(name, data_key, n)
            mean, sd = truth(name, jax.random.fold_in(data_key, 9), x, y)

            def add(label, seconds, loc, est_sd, mean=mean, sd=sd, methods=methods):
                e, r = score(loc, est_sd, mean, sd)
                methods.setdefault(label, ([], [], []))
                for lst, v in zip(methods[label], (e, r, seconds)):
                    lst.append(v)

            for label, params in (("learned", learned), ("base", base)):
                s, loc, est_sd, tril, (arguments, mask) = iterative_fit(
                    guide, params, data_key, x, y, batch, passes
                )
                add(label, s, loc, est_sd)
                if label == "learned":
                    keep = (loc, tril)
            best = None
            for rate in SVI_RATES:
                s, loc, est_sd = svi_fit(guide, data_key, arguments, mask, batch, passes, rate)
                e, _ = score(loc, est_sd, mean, sd)
                if best is None or np.median(e) < best[0]:
                    best = (np.median(e), s, loc, est_sd, rate)
            add(f"svi (lr {best[4]:g})", best[1], best[2], best[3])
            s, (loc, est_sd) = timed(
                lambda a=arguments, m=mask: _laplace(guide.problem, a, m,
                                                     guide.problem.prior_loc, 8)
            )
            add("laplace", s, loc, est_sd)
            post = one_shot.get_posterior(shot.params, x, y)
            s, _ = timed(lambda x=x, y=y: one_shot.get_posterior(shot.params, x, y).loc)
            add(
                "one-shot (trained N <= 200)",
                s,
                post.loc,
                jnp.sqrt(jnp.diag(post.covariance_matrix)),
            )
            if n <= nuts_max:
                s, loc, est_sd = warm_nuts(name, guide, data_key, *keep, x, y)
                add("warm NUTS", s, loc, est_sd)
        row = {"num_obs": n, "batch_size": batch, "passes": passes}
        row.update({label: summarize(*v) for label, v in methods.items()})
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def small_section(trained, key, num_datasets):
    """Logistic regression at N = 20..200, vectorized over data sets (padded and masked)."""
    guide, result, one_shot, shot = trained
    high = 200
    # A few sizes only, so that NUTS compiles a few programs (one per data shape).
    sizes = np.resize(np.array([20, 50, 100, 200]), num_datasets)
    xs, ys, masks, truths = [], [], [], []
    for i, n in enumerate(sizes):
        x, y = simulate("logistic", jax.random.fold_in(key, i), int(n))
        truths.append(truth("logistic", jax.random.fold_in(key, 10_000 + i), x, y))
        pad = high - int(n)
        xs.append(jnp.pad(x, ((0, pad), (0, 0))))
        ys.append(jnp.pad(y, (0, pad)))
        masks.append(np.arange(high) < n)
    x, y, mask = jnp.stack(xs), jnp.stack(ys), np.stack(masks)
    mean = np.stack([t[0] for t in truths])
    sd = np.stack([t[1] for t in truths])
    out = {"num_datasets": num_datasets, "num_obs": [int(sizes.min()), int(sizes.max())]}
    for label, params in (("learned", result.params), ("base", guide.init_params())):
        s, post = timed(lambda p=params: guide.get_posterior(p, x, y, data_mask=mask).loc)
        post = guide.get_posterior(params, x, y, data_mask=mask)
        e, r = score(
            post.loc, jnp.sqrt(jnp.diagonal(post.covariance_matrix, axis1=1, axis2=2)), mean, sd
        )
        out[label] = summarize([e.ravel()], [r.ravel()], [s / num_datasets])
        out[label]["steps"] = guide.engine(params).plan(high)[1]

    @jax.jit
    def laplace_all(x, y, m):
        def one(xi, yi, mi):
            def log_density(u):
                logits = xi @ u[:-1] + u[-1]
                lik = yi * jax.nn.log_sigmoid(logits) + (1 - yi) * jax.nn.log_sigmoid(-logits)
                return jnp.sum(jnp.where(mi, lik, 0.0)) - 0.5 * jnp.sum(u**2)

            fit_ = newton_laplace(log_density, jnp.zeros(xi.shape[-1] + 1), num_steps=20)
            return fit_.loc, jnp.sqrt(jnp.sum(fit_.scale_tril**2, -1))

        return jax.vmap(one)(x, y, m)

    s, (loc, est_sd) = timed(lambda: laplace_all(x, y, jnp.asarray(mask)))
    e, r = score(loc, est_sd, mean, sd)
    out["laplace"] = summarize([e.ravel()], [r.ravel()], [s / num_datasets])
    s, post = timed(lambda: one_shot.get_posterior(shot.params, x, y, data_mask=mask).loc)
    post = one_shot.get_posterior(shot.params, x, y, data_mask=mask)
    e, r = score(
        post.loc, jnp.sqrt(jnp.diagonal(post.covariance_matrix, axis1=1, axis2=2)), mean, sd
    )
    out["one-shot"] = summarize([e.ravel()], [r.ravel()], [s / num_datasets])
    print(json.dumps(out), flush=True)
    return out


def long_section(name, trained, key, num_datasets):
    """Error after the trained number of passes and after 10 times as many."""
    guide, result, _, _ = trained
    out = {}
    for n, batch in ((256, 32), (1024, 32)):
        per = {}
        for passes in (3, 30):
            errs, ratios = [], []
            for i in range(num_datasets):
                data_key = jax.random.fold_in(key, 77 * n + i)
                x, y = simulate(name, data_key, n)
                mean, sd = truth(name, jax.random.fold_in(data_key, 9), x, y)
                _, loc, est_sd, _, _ = iterative_fit(
                    guide, result.params, data_key, x, y, batch, passes
                )
                e, r = score(loc, est_sd, mean, sd)
                errs.append(e)
                ratios.append(r)
            per[passes] = summarize(errs, ratios, [0.0])
        out[n] = per
    print(json.dumps({"long": name, **{str(k): v for k, v in out.items()}}), flush=True)
    return out


MEMORY_CHILD = """
import resource, sys, time, jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, {root!r})
from amortized_ppl.guides import AutoIterativeAmortizedMultivariateNormal
from amortized_ppl.iterative.refine import refine
from amortized_ppl.models import linear_regression as lr
n = {n}
guide = AutoIterativeAmortizedMultivariateNormal(lr.model_known_noise)
guide.setup(jax.random.key(0), lr.design_fn, (10, 200))
params = guide.init_params()
(x,), _ = lr.design_fn(jax.random.key(1), n)
y = x @ jnp.ones(8) + 0.5 * jax.random.normal(jax.random.key(2), (n,))
x, y = jax.block_until_ready((x, y))
data_bytes = x.nbytes + y.nbytes
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
def run():
    return refine(jax.random.key(3), guide, params, x, y, batch_size=1000, num_passes=2,
                  progress=False)
jax.block_until_ready(run().state.loc)  # compile for this shape
before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
start = time.perf_counter()
jax.block_until_ready(run().state.loc)
seconds = time.perf_counter() - start
peak = status("VmHWM:")
print(n, data_bytes, before, peak, seconds)
"""


def memory_section(sizes):
    """Peak RSS while refining (2 passes, batches of 1,000; compiled first) in a fresh process
    per N: the peak is reset just before (``/proc/self/clear_refs``), so it is the process's
    resident memory (data, runtime, compiled programs) plus what refinement adds."""
    rows = []
    for n in sizes:
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_CHILD.format(root=str(ROOT), n=n)],
            capture_output=True,
            text=True,
            check=True,
        )
        _, data_bytes, before, peak, seconds = out.stdout.split()[-5:]
        rows.append(
            {
                "num_obs": n,
                "data_mb": int(data_bytes) / 2**20,
                "rss_before_mb": int(before) / 2**20,
                "peak_mb": int(peak) / 2**20,
                "refine_increment_mb": (int(peak) - int(before)) / 2**20,
                "refine_seconds": float(seconds),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    ns = np.array([r["num_obs"] for r in rows], float)
    ts = np.array([r["refine_seconds"] for r in rows])
    slope = float(np.polyfit(np.log(ns), np.log(ts), 1)[0])
    linear = np.polyfit(ns, ts, 1)
    return {
        "rows": rows,
        "loglog_slope": slope,
        "linear_fit_seconds": {
            "per_million": float(linear[0] * 1e6),
            "intercept": float(linear[1]),
        },
        "peak_ratio": rows[-1]["peak_mb"] / rows[0]["peak_mb"],
        # The data array itself (x and y, float32) is in both peaks; take it out.
        "peak_ratio_beyond_data": (rows[-1]["peak_mb"] - rows[-1]["data_mb"])
        / (rows[0]["peak_mb"] - rows[0]["data_mb"]),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sections", nargs="+", default=["linear", "logistic", "small", "long", "memory"]
    )
    parser.add_argument(
        "--train-seconds", type=float, default=150.0, help="training budget of each iterative guide"
    )
    parser.add_argument(
        "--one-shot-seconds",
        type=float,
        default=60.0,
        help="training budget of each one-shot guide",
    )
    parser.add_argument("--num-datasets", type=int, default=5)
    parser.add_argument("--num-small", type=int, default=100)
    parser.add_argument("--linear-sizes", type=int, nargs="+", default=[10**3, 10**4, 10**5, 10**6])
    parser.add_argument("--logistic-sizes", type=int, nargs="+", default=[10**4, 10**5])
    parser.add_argument(
        "--nuts-max",
        type=int,
        default=10**5,
        help="largest N at which warm NUTS runs (it is slow beyond)",
    )
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[10**4, 10**5, 10**6])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/iterative.json")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    key = jax.random.key(args.seed)
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    trained = {}
    for name in ("linear", "logistic"):
        if name in args.sections or (name == "logistic" and {"small", "long"} & set(args.sections)):
            start = time.perf_counter()
            trained[name] = train_guides(
                name, args.train_seconds, args.one_shot_seconds, jax.random.fold_in(key, 5)
            )
            report[f"train_{name}"] = {
                "seconds": time.perf_counter() - start,
                "iterative_steps": int(trained[name][1].history.shape[0]),
                "one_shot_steps": int(trained[name][3].losses.shape[0]),
            }
            print(json.dumps(report[f"train_{name}"]), flush=True)
    if "linear" in args.sections:
        report["linear"] = large_n_section(
            "linear", args.linear_sizes, args.num_datasets, trained["linear"], key, args.nuts_max
        )
    if "logistic" in args.sections:
        report["logistic"] = large_n_section(
            "logistic",
            args.logistic_sizes,
            args.num_datasets,
            trained["logistic"],
            key,
            args.nuts_max,
        )
    if "small" in args.sections:
        report["small"] = small_section(trained["logistic"], key, args.num_small)
    if "long" in args.sections:
        report["long"] = long_section("logistic", trained["logistic"], key, args.num_datasets)
    if "memory" in args.sections:
        report["memory"] = memory_section(args.memory_sizes)
    report["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=float))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
