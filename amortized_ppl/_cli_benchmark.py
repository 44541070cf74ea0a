"""``amortized-ppl benchmark``: posterior draws from the guide against NUTS, timed.

Simulates a few data sets of one size from the model (so that each sampler compiles once), then
times, per data set, the guide's draws and a NUTS run (blackjax, through
:func:`amortized_ppl.reference.reference_posterior`), both after a first call that compiles (its
time is reported apart), and compares the two posteriors' means in units of the NUTS standard
deviation. The guide's time for all data sets in one batched call is reported too.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import numpy as np

from amortized_ppl.data import select_dataset
from amortized_ppl.diagnostics.metrics import flatten_draws
from amortized_ppl.reference import flatten_samples, reference_posterior

__all__ = ["format_benchmark", "run_benchmark"]


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, result)`` of ``fn()``, waiting for JAX's asynchronous work to finish."""
    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    return time.perf_counter() - start, result


def _max_mean_error(guide_flat, reference_flat) -> float:
    """The largest ``|guide mean - NUTS mean| / NUTS sd`` over the flat latent dimensions."""
    ref = np.asarray(reference_flat)
    error = np.abs(np.asarray(guide_flat).mean(0) - ref.mean(0)) / ref.std(0)
    return float(np.max(error))


def run_benchmark(
    key,
    guide,
    params,
    design_fn: Callable,
    *,
    num_obs: int,
    num_datasets: int = 3,
    num_samples: int = 1000,
    num_warmup: int = 500,
    num_chains: int = 4,
    progress: bool = True,
) -> dict:
    """Time the guide against NUTS on ``num_datasets`` simulated data sets of ``num_obs``.

    Args:
        key: PRNG key.
        guide, params: the trained guide and its parameters.
        design_fn: the model's design function (simulates the data sets).
        num_obs: observations per data set.
        num_datasets: data sets, each sampled by the guide and by NUTS.
        num_samples: the guide's draws per data set, and NUTS's per chain.
        num_warmup, num_chains: NUTS settings.
        progress: print a line per data set.

    Returns:
        A JSON-able report: settings, first-call (compile) seconds, one row per data set
        (seconds of each, speed-up, largest mean error in NUTS sds, largest R-hat) and medians.
    """
    sim_key, guide_key, nuts_key = jax.random.split(key, 3)
    problem = guide.problem
    batch = problem.simulator(design_fn, (num_obs, num_obs))(sim_key, num_datasets)
    datasets = [
        select_dataset(batch.arguments, batch.mask, b, problem.data_arguments)
        for b in range(num_datasets)
    ]
    names = list(problem.sites.names)

    def draw(b):
        return guide.sample_posterior(
            jax.random.fold_in(guide_key, b), params, **datasets[b], sample_shape=(num_samples,)
        )

    def nuts(b):
        return reference_posterior(
            jax.random.fold_in(nuts_key, b),
            problem.model,
            num_chains=num_chains,
            num_warmup=num_warmup,
            num_samples=num_samples,
            **datasets[b],
        )

    guide_first, _ = _timed(lambda: draw(0))
    nuts_first, _ = _timed(lambda: nuts(0))
    rows = []
    for b in range(num_datasets):
        guide_seconds, guide_draws = _timed(lambda b=b: draw(b))
        nuts_seconds, reference = _timed(lambda b=b: nuts(b))
        error = _max_mean_error(
            flatten_draws(guide_draws, names),
            flatten_draws(flatten_samples(reference.samples), names),
        )
        rows.append(
            {
                "dataset": b,
                "amortized_seconds": guide_seconds,
                "nuts_seconds": nuts_seconds,
                "speedup": nuts_seconds / guide_seconds,
                "max_mean_error_nuts_sd": error,
                "max_rhat": float(max(np.max(v) for v in reference.rhat.values())),
            }
        )
        if progress:
            print(
                f"  data set {b + 1}/{num_datasets}: guide {guide_seconds * 1e3:.1f} ms, NUTS "
                f"{nuts_seconds:.2f} s",
                flush=True,
            )
    batched = lambda: guide.sample_posterior(  # noqa: E731
        guide_key, params, **batch.arguments, data_mask=batch.mask, sample_shape=(num_samples,)
    )
    _timed(batched)  # compiles
    batched_seconds, _ = _timed(batched)

    def median(field):
        return float(np.median([row[field] for row in rows]))

    return {
        "num_datasets": num_datasets,
        "num_obs": num_obs,
        "num_samples": num_samples,
        "nuts": {"num_chains": num_chains, "num_warmup": num_warmup, "num_samples": num_samples},
        "first_call_seconds": {"amortized": guide_first, "nuts": nuts_first},
        "per_dataset": rows,
        "amortized_seconds_median": median("amortized_seconds"),
        "nuts_seconds_median": median("nuts_seconds"),
        "speedup_median": median("speedup"),
        "amortized_batched_seconds_per_dataset": batched_seconds / num_datasets,
    }


def format_benchmark(report: dict) -> str:
    """A plain-text table of a :func:`run_benchmark` report."""
    header = (
        f"{'data set':>8}  {'guide (ms)':>10}  {'NUTS (s)':>8}  {'speed-up':>8}  "
        f"{'mean error (NUTS sd)':>20}  {'NUTS R-hat':>10}"
    )
    lines = [
        f"{report['num_datasets']} data sets of {report['num_obs']} observations, "
        f"{report['num_samples']} draws ({report['nuts']['num_chains']} NUTS chains)",
        header,
        "-" * len(header),
    ]
    for row in report["per_dataset"]:
        lines.append(
            f"{row['dataset']:>8}  {row['amortized_seconds'] * 1e3:>10.2f}  "
            f"{row['nuts_seconds']:>8.3f}  {row['speedup']:>8.1f}  "
            f"{row['max_mean_error_nuts_sd']:>20.3f}  {row['max_rhat']:>10.3f}"
        )
    first = report["first_call_seconds"]
    lines += [
        "-" * len(header),
        f"median speed-up {report['speedup_median']:.1f}x; batched guide "
        f"{report['amortized_batched_seconds_per_dataset'] * 1e3:.2f} ms per data set; first "
        f"calls (compiling) {first['amortized']:.1f} s guide, {first['nuts']:.1f} s NUTS",
    ]
    return "\n".join(lines)
