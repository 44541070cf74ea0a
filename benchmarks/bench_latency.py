"""Time the amortized posterior against NUTS per data set, compile time kept apart.

Model: Bayesian linear regression with known noise (``amortized_ppl.models.linear_regression.model_known_noise``,
``d = 8`` covariates plus an intercept), whose exact posterior gives the accuracy of both methods.
One run trains an :class:`~amortized_ppl.AutoAmortizedMultivariateNormal` briefly (this measures
latency, not accuracy; accuracy is reported anyway), then for each number of observations ``N``:

- **amortized, single**: ``guide.sample_posterior`` on one data set, ``--num-samples`` draws;
  median wall time over ``--repeats`` data sets after a first call that compiles.
- **NUTS**: blackjax NUTS from :func:`amortized_ppl.reference.build_reference_sampler`,
  ``--num-chains`` chains x (``--num-warmup`` window-adaptation steps + ``--num-samples`` draws);
  median over ``--nuts-datasets`` data sets after a first call that compiles.
- **amortized, batched**: ``--batch`` data sets in one ``sample_posterior`` call, ``--num-samples``
  draws each; wall time per data set (median over ``--batch-repeats`` calls after a compile call).

Compile time is the first call's wall time minus the warm median (it includes tracing and, for the
guide, the eager token construction). Every timed call ends with :func:`jax.block_until_ready`.
Accuracy is the median over data sets and coordinates of ``|posterior mean error| / exact SD``;
with ``S`` independent draws its Monte Carlo floor is about ``0.67 / sqrt(S)`` (0.02 at S = 1000).

No device is named: the script runs wherever JAX puts arrays (CPU or GPU). Usage::

    python benchmarks/bench_latency.py                      # full run, ~minutes on a CPU
    python benchmarks/bench_latency.py --quick              # smoke run, tiny sizes
    python benchmarks/bench_latency.py --num-obs 100 --out /tmp/latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers

from amortized_ppl import AutoAmortizedMultivariateNormal, fit
from amortized_ppl.models.linear_regression import design_fn, exact_posterior, model_known_noise
from amortized_ppl.reference import build_reference_sampler
from amortized_ppl.results_file import run_environment

__all__ = ["main", "parse_args", "simulate_datasets"]

NUM_FEATURES = 8
"""Covariates per observation (``d``); the latent vector is ``[w_1..w_8, b]``."""

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latency.json"

# Settings that --quick changes; an explicit command-line value always wins over the preset.
PRESETS: dict[str, dict[str, Any]] = {
    "full": dict(
        train_steps=100,
        num_obs=[100, 1000],
        repeats=20,
        nuts_datasets=3,
        batch=1000,
        batch_repeats=3,
        num_chains=4,
        num_warmup=500,
        num_samples=1000,
    ),
    "quick": dict(
        train_steps=20,
        num_obs=[50],
        repeats=3,
        nuts_datasets=1,
        batch=50,
        batch_repeats=1,
        num_chains=4,
        num_warmup=200,
        num_samples=200,
    ),
}

GUIDE_CONFIG = dict(
    newton_steps=8, num_inducing=16, hidden_size=32, num_blocks=1, summary_size=32
)
TRAIN_BATCH_SIZE = 32
MIN_TRAIN_OBS = 10


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line and fill unset options from the ``full`` or ``quick`` preset."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
    )
    full = PRESETS["full"]
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes for a smoke run (explicit options still win)")
    parser.add_argument("--train-steps", type=int,
                        help=f"guide training steps [{full['train_steps']}]")
    parser.add_argument("--num-obs", type=int, nargs="+",
                        help=f"observations per data set, one case each [{full['num_obs']}]")
    parser.add_argument("--repeats", type=int,
                        help=f"warm single-data-set amortized calls [{full['repeats']}]")
    parser.add_argument("--nuts-datasets", type=int,
                        help=f"warm NUTS runs, one data set each [{full['nuts_datasets']}]")
    parser.add_argument("--batch", type=int,
                        help="data sets in the batched amortized call, 0 skips it "
                             f"[{full['batch']}]")
    parser.add_argument("--batch-repeats", type=int,
                        help=f"warm batched calls [{full['batch_repeats']}]")
    parser.add_argument("--num-chains", type=int, help=f"NUTS chains [{full['num_chains']}]")
    parser.add_argument("--num-warmup", type=int, help=f"NUTS warm-up steps [{full['num_warmup']}]")
    parser.add_argument("--num-samples", type=int,
                        help=f"draws per data set: per NUTS chain and per amortized call "
                             f"[{full['num_samples']}]")
    parser.add_argument("--seed", type=int, default=0, help="root PRNG seed [0]")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="JSON results file [benchmarks/results/latency.json]")
    args = parser.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "full"]
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("train_steps", "repeats", "nuts_datasets", "batch_repeats", "num_chains",
                 "num_warmup", "num_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}.")
    if args.num_chains < 2:
        parser.error(f"--num-chains must be >= 2 (split R-hat); got {args.num_chains}.")
    if args.batch < 0:
        parser.error(f"--batch must be >= 0; got {args.batch}.")
    if min(args.num_obs) < 1:
        parser.error(f"--num-obs must be positive; got {args.num_obs}.")
    return args


# ---------------------------------------------------------------------------------------------
# Data and accuracy
# ---------------------------------------------------------------------------------------------


def _simulate_one(key: jax.Array, num_obs: int) -> tuple[jax.Array, jax.Array]:
    key_design, key_model = jax.random.split(key)
    (x,), _ = design_fn(key_design, num_obs, NUM_FEATURES)
    trace = handlers.trace(handlers.seed(model_known_noise, key_model)).get_trace(x)
    return x, trace["y"]["value"]


def simulate_datasets(key: jax.Array, num_datasets: int, num_obs: int):
    """Simulate data sets from the prior predictive of ``model_known_noise``.

    Returns ``(x, y)`` of shapes ``(num_datasets, num_obs, 8)`` and ``(num_datasets, num_obs)``.
    """
    keys = jax.random.split(key, num_datasets)
    simulate = jax.jit(jax.vmap(_simulate_one, in_axes=(0, None)), static_argnums=1)
    return simulate(keys, num_obs)


def _draw_mean(samples: dict) -> np.ndarray:
    """Mean of ``[w, b]`` over the draws: ``w (..., S, 8)`` and ``b (..., S)`` -> ``(..., 9)``."""
    theta = jnp.concatenate([samples["w"], samples["b"][..., None]], axis=-1)
    return np.asarray(jnp.mean(theta, axis=-2))


class ExactMoments(NamedTuple):
    """Exact posterior means and SDs of ``[w, b]`` per data set, each of shape ``(B, 9)``."""

    mean: np.ndarray
    sd: np.ndarray

    def errors(self, index, draw_mean: np.ndarray) -> np.ndarray:
        """``|draw mean - exact mean| / exact SD`` for the data sets ``index``, per coordinate."""
        return np.abs(draw_mean - self.mean[index]) / self.sd[index]


def exact_moments(x: jax.Array, y: jax.Array) -> ExactMoments:
    """Exact posterior moments of a batch of data sets (``x (B, N, 8)``, ``y (B, N)``)."""
    posterior = jax.jit(jax.vmap(exact_posterior))(x, y)
    sd = jnp.sqrt(jnp.diagonal(posterior.cov, axis1=-2, axis2=-1))
    return ExactMoments(np.asarray(posterior.mean), np.asarray(sd))


def _median(errors: list[np.ndarray]) -> float:
    return float(np.median(np.concatenate([np.ravel(e) for e in errors])))


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def _timed(fn: Callable[..., Any], *args, **kwargs) -> tuple[Any, float]:
    """Call ``fn(*args, **kwargs)`` and wait for its device work; return ``(result, seconds)``."""
    start = time.perf_counter()
    result = jax.block_until_ready(fn(*args, **kwargs))
    return result, time.perf_counter() - start


def _split_datasets(x: jax.Array, y: jax.Array, num: int) -> list[tuple[jax.Array, jax.Array]]:
    """The first ``num`` data sets as separate ``(x (N, 8), y (N,))`` arrays, on the device."""
    return jax.block_until_ready([(x[i], y[i]) for i in range(num)])


def _summary(first: float, warm: list[float]) -> dict[str, Any]:
    median = statistics.median(warm)
    return dict(
        first_call_s=first,
        compile_s=max(first - median, 0.0),
        warm_median_s=median,
        warm_min_s=min(warm),
        warm_max_s=max(warm),
        warm_s=warm,
    )


def _train_guide(key: jax.Array, args: argparse.Namespace):
    guide = AutoAmortizedMultivariateNormal(model_known_noise, **GUIDE_CONFIG)
    num_obs_range = (min(MIN_TRAIN_OBS, *args.num_obs), max(args.num_obs))
    start = time.perf_counter()
    result = fit(
        key,
        guide,
        design_fn=design_fn,
        num_obs=num_obs_range,
        num_steps=args.train_steps,
        batch_size=TRAIN_BATCH_SIZE,
        progress=False,
    )
    tail = result.losses[-min(10, len(result.losses)):]
    info = dict(
        steps=int(len(result.losses)),
        num_obs_range=list(num_obs_range),
        batch_size=TRAIN_BATCH_SIZE,
        seconds=result.seconds,  # optimization, compile included
        total_seconds=time.perf_counter() - start,  # set-up (tracing, pilot simulations) too
        final_loss=float(np.mean(tail)) if len(tail) else None,
        guide_config=GUIDE_CONFIG,
    )
    return guide, result.params, info


def _bench_single(key, guide, params, x, y, exact, args) -> tuple[dict, list[np.ndarray]]:
    """Amortized posterior of one data set at a time: compile call, then ``repeats`` warm calls."""
    sample_shape = (args.num_samples,)
    key_compile, key_warm = jax.random.split(key)
    datasets = _split_datasets(x, y, args.repeats)
    draw_fn = guide.sample_posterior
    _, first = _timed(draw_fn, key_compile, params, *datasets[0], sample_shape=sample_shape)
    warm, errors = [], []
    for j, draw_key in enumerate(jax.random.split(key_warm, args.repeats)):
        draws, seconds = _timed(draw_fn, draw_key, params, *datasets[j], sample_shape=sample_shape)
        warm.append(seconds)
        errors.append(exact.errors(j, _draw_mean(draws)))
    return _summary(first, warm), errors


def _bench_nuts(key, sampler, x, y, exact, args) -> tuple[dict, list[np.ndarray]]:
    """NUTS on one data set at a time: compile call, then ``nuts_datasets`` warm runs."""
    key_compile, key_warm = jax.random.split(key)
    datasets = _split_datasets(x, y, args.nuts_datasets)
    _, first = _timed(sampler.draw, key_compile, *datasets[0])
    warm, errors, leapfrogs, divergences = [], [], [], 0
    for i, run_key in enumerate(jax.random.split(key_warm, args.nuts_datasets)):
        (samples, info), seconds = _timed(sampler.draw, run_key, *datasets[i])
        warm.append(seconds)
        pooled = jax.tree.map(lambda v: v.reshape((-1,) + v.shape[2:]), samples)  # chains x draws
        errors.append(exact.errors(i, _draw_mean(pooled)))
        leapfrogs.append(float(jnp.mean(info.num_integration_steps)))
        divergences += int(jnp.sum(info.is_divergent))
    summary = _summary(first, warm)
    summary.update(mean_leapfrog_steps=float(np.mean(leapfrogs)), num_divergent=divergences)
    return summary, errors


def _bench_batch(key, guide, params, x, y, exact, args) -> tuple[dict | None, list, str | None]:
    """All ``batch`` data sets in one call: compile call, then ``batch_repeats`` warm calls."""
    sample_shape = (args.num_samples,)
    key_compile, key_warm = jax.random.split(key)
    try:
        draw_fn = guide.sample_posterior
        _, first = _timed(draw_fn, key_compile, params, x, y, sample_shape=sample_shape)
        warm, errors = [], []
        for draw_key in jax.random.split(key_warm, args.batch_repeats):
            draws, seconds = _timed(draw_fn, draw_key, params, x, y, sample_shape=sample_shape)
            warm.append(seconds)
        errors.append(exact.errors(slice(0, x.shape[0]), _draw_mean(draws)))
    except Exception as err:  # noqa: BLE001 - only an allocation failure is expected here
        if "RESOURCE_EXHAUSTED" not in str(err) and not isinstance(err, MemoryError):
            raise
        return None, [], f"skipped: out of memory ({type(err).__name__})"
    summary = _summary(first, warm)
    summary.update(
        num_datasets=int(x.shape[0]),
        per_dataset_s=summary["warm_median_s"] / x.shape[0],
    )
    return summary, errors, None


def run_case(key: jax.Array, num_obs: int, guide, params, sampler, args) -> dict[str, Any]:
    """Benchmark one number of observations; return its JSON record."""
    key_data, key_single, key_nuts, key_batch = jax.random.split(key, 4)
    # One pool of data sets: single calls and NUTS use its first ones, the batch its first `batch`.
    num_datasets = max(args.repeats, args.nuts_datasets, args.batch)
    x, y = simulate_datasets(key_data, num_datasets, num_obs)
    exact = exact_moments(x, y)
    single, single_errors = _bench_single(key_single, guide, params, x, y, exact, args)
    nuts, nuts_errors = _bench_nuts(key_nuts, sampler, x, y, exact, args)
    batch, batch_errors, batch_note = None, [], "skipped: --batch 0"
    if args.batch:
        xb, yb = jax.block_until_ready((x[: args.batch], y[: args.batch]))
        batch, batch_errors, batch_note = _bench_batch(
            key_batch, guide, params, xb, yb, exact, args
        )
    ratios = dict(nuts_over_single=nuts["warm_median_s"] / single["warm_median_s"])
    if batch is not None:
        ratios["nuts_over_batched_per_dataset"] = nuts["warm_median_s"] / batch["per_dataset_s"]
    accuracy = dict(
        metric="median over data sets and coordinates of |mean error| / exact posterior SD",
        amortized_single=_median(single_errors),
        amortized_batch=_median(batch_errors) if batch_errors else None,
        nuts=_median(nuts_errors),
        num_datasets_single=len(single_errors),
        num_datasets_batch=int(sum(e.shape[0] for e in batch_errors)),
        num_datasets_nuts=len(nuts_errors),
    )
    return dict(
        num_obs=num_obs,
        amortized_single=single,
        nuts=nuts,
        amortized_batch=batch,
        batch_note=batch_note,
        ratios=ratios,
        accuracy=accuracy,
    )


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}x" if value >= 10 else f"{value:.1f}x"


def _fmt_error(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown_table(results: dict[str, Any]) -> str:
    """Format the cases as a markdown table (warm medians; compile times in brackets)."""
    config = results["config"]
    header = (
        "| N | amortized, 1 data set [compile] | NUTS, 1 data set [compile] "
        f"| amortized, batch of {config['batch']} per data set [compile] "
        "| NUTS / amortized | NUTS / batched | error amortized (1 / batch) | error NUTS |"
    )
    lines = [header, "|" + "---|" * 8]
    for case in results["cases"]:
        single, nuts, batch = case["amortized_single"], case["nuts"], case["amortized_batch"]
        ratios, accuracy = case["ratios"], case["accuracy"]
        batch_cell = (
            f"{_fmt_time(batch['per_dataset_s'])} [{_fmt_time(batch['compile_s'])}]"
            if batch is not None else case["batch_note"]
        )
        lines.append(
            f"| {case['num_obs']} "
            f"| {_fmt_time(single['warm_median_s'])} [{_fmt_time(single['compile_s'])}] "
            f"| {_fmt_time(nuts['warm_median_s'])} [{_fmt_time(nuts['compile_s'])}] "
            f"| {batch_cell} "
            f"| {_fmt_ratio(ratios['nuts_over_single'])} "
            f"| {_fmt_ratio(ratios.get('nuts_over_batched_per_dataset'))} "
            f"| {_fmt_error(accuracy['amortized_single'])} "
            f"/ {_fmt_error(accuracy['amortized_batch'])} "
            f"| {_fmt_error(accuracy['nuts'])} |"
        )
    env, train = results["environment"], results["training"]
    lines += [
        "",
        f"Device: {env['platform']} ({env['device_kind']}), {env['cpu_count']} CPUs; "
        f"jax {env['jax']}, numpyro {env['numpyro']}, blackjax {env['blackjax']}.",
        f"Draws per data set: {config['num_samples']} (NUTS: {config['num_chains']} chains x "
        f"({config['num_warmup']} warm-up + {config['num_samples']})). Warm medians over "
        f"{config['repeats']} / {config['nuts_datasets']} / {config['batch_repeats']} calls.",
        f"Guide trained {train['steps']} steps ({train['seconds']:.1f} s with compile, "
        f"{train['total_seconds']:.1f} s with set-up) on "
        f"N in {tuple(train['num_obs_range'])}. Error: median |mean error| / exact SD "
        "(Monte Carlo floor ~0.67/sqrt(draws)).",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print a markdown table, write JSON to ``--out``; return the results."""
    argv_used = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv_used)
    load_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    key = jax.random.key(args.seed)
    key_train, key_cases = jax.random.split(key)

    guide, params, training = _train_guide(key_train, args)
    sampler = build_reference_sampler(
        model_known_noise,
        num_chains=args.num_chains,
        num_warmup=args.num_warmup,
        num_samples=args.num_samples,
        target_accept=0.8,
    )
    cases = []
    for num_obs in args.num_obs:
        case_key = jax.random.fold_in(key_cases, num_obs)
        cases.append(run_case(case_key, num_obs, guide, params, sampler, args))
        print(f"done N={num_obs}", file=sys.stderr, flush=True)

    config = {k: v for k, v in vars(args).items() if k != "out"}
    results = dict(
        benchmark="latency: amortized posterior vs NUTS, linear regression (known noise, d=8)",
        command=" ".join(["python benchmarks/bench_latency.py", *argv_used]),
        environment=dict(run_environment(), load_average_at_start=load_at_start),
        config=config,
        training=training,
        cases=cases,
    )
    print(markdown_table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nWrote {args.out}")
    return results


if __name__ == "__main__":
    main()
