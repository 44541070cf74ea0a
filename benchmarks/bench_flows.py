"""Flow posteriors against Gaussian ones, Laplace and the references, on the hard-posterior zoo.

For each model, in one process and on the same held-out data sets (simulated from the prior
predictive at one size ``N``):

- ``laplace``: damped Newton steps per data set (vectorized), the Gaussian at the mode;
- ``gauss_newton`` / ``gauss_alone``: ``AutoAmortizedMultivariateNormal`` with and without the
  Newton stage (8 steps; on the two-mode model from 2 starts, a mixture of the fits);
- ``flow_newton`` / ``flow_alone``: ``AutoAmortizedFlow`` with and without it;
- ``elementwise_newton`` / ``elementwise_alone`` (by name with ``--methods``): the flow guide
  with per-data-set elementwise layers (``Flow(layers="elementwise")``), whose networks run
  once per data set rather than once per draw;
- ``factors_alone`` / ``factors_flow_alone`` (by name with ``--methods``): the network alone
  through the :class:`~amortized_ppl.encoders.PseudoObservations` encoder (each observation a
  Gaussian factor, summed), Gaussian or with the flow on top; ``factors_alone_untrained`` is
  the same network untrained (the network off: about the prior);
- ``flow_newton_untrained``: the flow guide before training (its Newton stage alone: the network
  off), the rule-of-the-round baseline for the trained one;
- the reference: the closed form where there is one, else blackjax NUTS (4 chains x 1,000 after
  500 warm-up steps).

Every guide trains for the same wall-time budget with the mixed loss. Reported per method
(constrained space, per latent coordinate): median and worst |mean error| in reference SDs, median
SD ratio and the share within [0.9, 1.1], C2ST accuracy against reference draws (0.5 is
indistinguishable; median over the first 20 data sets), 90% interval coverage of the true
latents, and seconds per data set (batched draws of 1,000 after compilation, and the ratio to
NUTS's time per data set where NUTS is the reference), and for the trained guides the seconds for
one data set alone (1,000 draws: the latency a user waits for, and its ratio to NUTS's seconds
per data set). SBC (1,000 simulated data sets) for the trained flow guides, and for the same
guide with its posterior SDs halved (``sbc_p_value_sd_halved``: the test must reject it). For
the two-mode model, the error in the weight of the positive mode. ``funnel_noncentered`` is the
funnel under NumPyro's ``LocScaleReparam``, scored in its own coordinates against NUTS on the
same model.

    python benchmarks/bench_flows.py [--models bernoulli_rate,folded_mean] [--seconds 60]
        [--num-test 100] [--methods ...] [--quick] [--merge] [--out benchmarks/results/flows.json]
    python benchmarks/bench_flows.py --table benchmarks/results/flows.json  # markdown
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl import (
    AutoAmortizedFlow,
    AutoAmortizedMultivariateNormal,
    Flow,
    PseudoObservations,
    fit,
    inspect_problem,
    reference_posterior,
    sbc,
)
from amortized_ppl.diagnostics import perturb_posterior
from amortized_ppl.diagnostics.c2st import c2st
from amortized_ppl.laplace import newton_laplace
from amortized_ppl.models import (
    bernoulli_rate,
    folded_mean,
    funnel,
    linear_regression,
    logistic_regression,
    student_t_regression,
)
from amortized_ppl.results_file import write_results

NUM_DRAWS = 1000
NUTS_SAMPLES = 1000  # per chain, 4 chains: the latency target's NUTS
C2ST_DATASETS = 20  # held-out data sets the C2ST median is taken over


class Case(NamedTuple):
    model: Callable
    design_fn: Callable
    num_obs: tuple[int, int]
    test_obs: int
    # exact(key, data arguments, num_draws) -> (B, S, D) constrained draws of the exact
    # posterior, latent sites flattened in the problem's order; None: NUTS is the reference
    exact: Callable | None
    newton_starts: int = 1  # Newton runs per data set in the guides' Laplace stage


def _scalar_exact(posterior_fn):
    """One scalar latent with a batched closed form: ``(S, B)`` draws -> ``(B, S, 1)``."""
    def draws(key, data, num_draws):
        return np.moveaxis(np.asarray(posterior_fn(data).sample(key, (num_draws,))), 0, 1)[..., None]
    return draws


def _linear_exact(key, data, num_draws):
    """Known-noise linear regression's conjugate posterior over ``[w, b]``, per data set."""
    def one(k, x, y):
        return linear_regression.exact_posterior(x, y).to_distribution().sample(k, (num_draws,))
    keys = jax.random.split(key, data["x"].shape[0])
    return np.asarray(jax.vmap(one)(keys, data["x"], data["y"]))


CASES = {
    "bernoulli_rate": Case(bernoulli_rate.model, bernoulli_rate.design_fn, (5, 50), 10,
                           _scalar_exact(lambda a: bernoulli_rate.exact_posterior(a["y"]))),
    "folded_mean": Case(folded_mean.model, folded_mean.design_fn, (5, 50), 10,
                        _scalar_exact(lambda a: folded_mean.exact_posterior(a["y"])), 2),
    "linear_regression": Case(linear_regression.model_known_noise, linear_regression.design_fn,
                              (10, 200), 20, _linear_exact),
    "logistic_regression": Case(logistic_regression.model, logistic_regression.design_fn,
                                (10, 50), 20, None),
    "student_t_regression": Case(student_t_regression.model, student_t_regression.design_fn,
                                 (10, 50), 20, None),
    "funnel": Case(funnel.model, funnel.design_fn, (2, 20), 5, None),
    # the same funnel non-centered (NumPyro's LocScaleReparam): scored over log_scale and
    # z_decentered, against NUTS on the same non-centered model
    "funnel_noncentered": Case(funnel.model_noncentered, funnel.design_fn, (2, 20), 5, None),
}

METHODS = ("laplace", "flow_newton_untrained", "gauss_newton", "gauss_alone", "flow_newton",
           "flow_alone", "elementwise_newton", "elementwise_alone", "factors_alone",
           "factors_flow_alone", "factors_alone_untrained")
# elementwise_*: the flow with per-data-set elementwise layers (Flow(layers="elementwise"));
# factors_*: the network alone through the PseudoObservations encoder (GaussianFactors family)
DEFAULT_METHODS = METHODS[:6]


def _flat(problem, draws: dict, batch_ndim: int) -> np.ndarray:
    """Constrained draws ``{site: (..., S, *shape)}`` -> ``(..., S, D_constrained)``."""
    parts = []
    for site in problem.sites.latents:
        value = np.asarray(draws[site.name])
        lead = value.shape[: batch_ndim + 1]
        parts.append(value.reshape(lead + (-1,)))
    return np.concatenate(parts, axis=-1)


@eqx.filter_jit
def _laplace_draws(key, problem, arguments, mask, num_draws):
    def one(k, a, m):
        fit_ = newton_laplace(lambda u: problem.log_density(u, a, m), problem.latent_anchor,
                              num_steps=20)
        eps = jax.random.normal(k, (num_draws, fit_.loc.shape[0]))
        return problem.sites.constrain(fit_.loc + eps @ fit_.scale_tril.T)

    keys = jax.random.split(key, mask.shape[0])
    return eqx.filter_vmap(one, in_axes=(0, eqx.if_array(0), 0))(keys, arguments, mask)


def _timed(fn, *args):
    jax.block_until_ready(fn(*args))  # compile
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def _references(key, case: Case, problem, sim, num_test):
    """Reference draws ``(B, S, D)`` in constrained space, and how they were made."""
    data = {k: v for k, v in sim.arguments.items() if isinstance(v, jax.Array)}
    if case.exact is not None:
        return case.exact(key, data, NUM_DRAWS), "closed form"
    out = []
    for i in range(num_test):
        one = {k: v[i] for k, v in data.items()}
        ref = reference_posterior(jax.random.fold_in(key, i), case.model, num_chains=4,
                                  num_warmup=500, num_samples=NUTS_SAMPLES, **one)
        draws = {k: np.asarray(v).reshape((-1,) + np.asarray(v).shape[2:])
                 for k, v in ref.samples.items()}
        flat = _flat(problem, draws, 0)  # (4 * NUTS_SAMPLES, D), chain after chain
        out.append(flat[:: max(1, flat.shape[0] // NUM_DRAWS)][:NUM_DRAWS])
    return np.stack(out), f"blackjax NUTS, 4 chains x {NUTS_SAMPLES} after 500 warm-up, thinned"


def _metrics(key, draws, ref, truth) -> dict:
    ref_mean, ref_sd = ref.mean(axis=1), ref.std(axis=1)
    mean_error = np.abs(draws.mean(axis=1) - ref_mean) / ref_sd
    sd_ratio = draws.std(axis=1) / ref_sd
    lower, upper = np.quantile(draws, [0.05, 0.95], axis=1)
    covered = (lower <= truth) & (truth <= upper)
    finite = np.all(np.isfinite(draws), axis=(1, 2))
    # C2ST on the first C2ST_DATASETS finite data sets: its classifiers (5 folds x 500 full-batch
    # steps on 2,000 draws each) cost minutes per method on 100 data sets in 9 dimensions
    first = np.flatnonzero(finite)[:C2ST_DATASETS]
    accuracy = np.asarray(c2st(key, jnp.asarray(draws[first]), jnp.asarray(ref[first])))
    return {
        "median_mean_error_sd": float(np.median(mean_error)),
        "worst_mean_error_sd": float(np.max(mean_error)),
        "median_sd_ratio": float(np.median(sd_ratio)),
        "sd_ratio_within_0.9_1.1": float(np.mean((sd_ratio >= 0.9) & (sd_ratio <= 1.1))),
        "median_c2st": float(np.median(accuracy)),
        "c2st_datasets": int(first.size),
        "coverage_90": float(np.mean(covered)),
        "non_finite_datasets": int(np.sum(~finite)),
    }


def _half_sd(posterior):
    return perturb_posterior(posterior, sd_factor=0.5)


def _guide(name, case: Case):
    newton = 8 if "newton" in name else 0
    starts = case.newton_starts if newton else 1
    if name.startswith("factors"):
        guide = AutoAmortizedFlow if "flow" in name else AutoAmortizedMultivariateNormal
        return guide(case.model, encoder=PseudoObservations())
    if name.startswith("flow"):
        return AutoAmortizedFlow(case.model, newton_steps=newton, newton_starts=starts)
    if name.startswith("elementwise"):
        return AutoAmortizedFlow(case.model, flow=Flow(layers="elementwise"),
                                 newton_steps=newton, newton_starts=starts)
    return AutoAmortizedMultivariateNormal(case.model, newton_steps=newton, newton_starts=starts)


def run_case(key, name: str, case: Case, *, seconds: float, num_test: int, quick: bool,
             methods=DEFAULT_METHODS[1:]) -> dict:
    setup_key, sim_key, ref_key, train_key, draw_key, c2st_key = jax.random.split(key, 6)
    problem = inspect_problem(setup_key, case.model, case.design_fn, case.num_obs)
    sim = eqx.filter_jit(problem.simulator(None, case.test_obs))(sim_key, num_test)
    constrained_truth = problem.sites.constrain(sim.latents)
    truth = _flat(problem, {k: v[:, None] for k, v in constrained_truth.items()}, 1)[:, 0]
    start = time.perf_counter()
    ref, ref_kind = _references(ref_key, case, problem, sim, num_test)
    ref_seconds = time.perf_counter() - start
    data = {k: v for k, v in sim.arguments.items() if isinstance(v, jax.Array)}
    results = {"N": case.test_obs, "num_obs_range": list(case.num_obs), "reference": ref_kind,
               "newton_starts": case.newton_starts,
               "reference_seconds_per_dataset": ref_seconds / num_test, "methods": {}}
    draws, seconds_laplace = _timed(_laplace_draws, draw_key, problem, sim.arguments, sim.mask,
                                    NUM_DRAWS)
    out = {"laplace": (_flat(problem, draws, 1), seconds_laplace / num_test, None)}
    trained, guides, params_of = {}, {}, {}
    for method in methods:
        base = method.replace("_untrained", "")
        guide = _guide(base, case)
        if method.endswith("_untrained"):
            guide.setup(setup_key, case.design_fn, case.num_obs)
            params, info = guide.init_params(), {"steps": 0}
        else:
            result = fit(train_key, guide, design_fn=case.design_fn, num_obs=case.num_obs,
                         loss="mixed", num_steps=20 if quick else 100_000, max_seconds=seconds,
                         progress=False)
            params = result.params
            info = {"steps": int(len(result.losses)), "train_seconds": result.seconds,
                    "reason": result.reason}
            trained[method] = info
        guides[method], params_of[method] = guide, params

        def sample(key, params=params, guide=guide):
            return guide.sample_posterior(key, params, **data, sample_shape=(NUM_DRAWS,))

        draws, elapsed = _timed(sample, draw_key)
        if info is not None and not method.endswith("_untrained"):
            # one data set alone, 1,000 draws: the latency a user waits for
            one = {k: v[:1] for k, v in data.items()}
            _, info["seconds_single_dataset"] = _timed(
                lambda key, params=params, guide=guide, one=one: guide.sample_posterior(
                    key, params, **one, sample_shape=(NUM_DRAWS,)), draw_key)
        out[method] = (_flat(problem, draws, 1), elapsed / num_test, info)
    for method, (draws, per_dataset, info) in out.items():
        entry = _metrics(c2st_key, draws, ref, truth)
        entry["seconds_per_dataset"] = per_dataset
        entry["time_vs_laplace"] = per_dataset / out["laplace"][1]
        if info is not None:
            entry["training"] = info
        if method in trained and not method.startswith("gauss"):
            calibration = sbc(jax.random.fold_in(c2st_key, 7), guides[method], params_of[method],
                              num_datasets=50 if quick else 1000)
            entry["sbc_p_value"] = float(calibration.p_value)
            # the same guide with its posterior SDs halved must be rejected
            broken = sbc(jax.random.fold_in(c2st_key, 7), guides[method], params_of[method],
                         num_datasets=50 if quick else 1000,
                         posterior_transform=_half_sd)
            entry["sbc_p_value_sd_halved"] = float(broken.p_value)
        if case.exact is None:
            nuts = results["reference_seconds_per_dataset"]
            entry["speedup_vs_nuts"] = nuts / per_dataset
            if info is not None and "seconds_single_dataset" in info:
                entry["speedup_vs_nuts_single"] = nuts / info["seconds_single_dataset"]
        if name == "folded_mean":
            entry["positive_mode_weight_error"] = float(np.median(np.abs(
                np.mean(draws[..., 0] > 0, axis=1) - np.mean(ref[..., 0] > 0, axis=1))))
        results["methods"][method] = entry
        print(f"{name:22s} {method:22s} err {entry['median_mean_error_sd']:.3f} "
              f"sd {entry['median_sd_ratio']:.3f} c2st {entry['median_c2st']:.3f} "
              f"cov {entry['coverage_90']:.3f}", flush=True)
    return results


COLUMNS = (("median_mean_error_sd", "median err (SD)", "{:.3f}"),
           ("worst_mean_error_sd", "worst err", "{:.2f}"),
           ("median_sd_ratio", "SD ratio", "{:.3f}"),
           ("median_c2st", "C2ST", "{:.3f}"),
           ("coverage_90", "90% cov.", "{:.3f}"),
           ("time_vs_laplace", "time / Laplace", "{:.1f}"),
           ("speedup_vs_nuts", "NUTS / ours (batched)", "{:.0f}"),
           ("speedup_vs_nuts_single", "NUTS / ours (one set)", "{:.0f}"),
           ("sbc_p_value", "SBC p", "{:.3f}"),
           ("sbc_p_value_sd_halved", "SBC p, SDs halved", "{:.4f}"))


def markdown_table(results: dict) -> str:
    """One markdown table per model from a results file (the README's figures come from here)."""
    out = []
    for name, case in results["models"].items():
        out.append(f"**{name}** (N = {case['N']}, reference: {case['reference']})\n")
        out.append("| method | " + " | ".join(label for _, label, _ in COLUMNS) + " |")
        out.append("|---" * (len(COLUMNS) + 1) + "|")
        for method, entry in case["methods"].items():
            cells = [fmt.format(entry[k]) if k in entry else "" for k, _, fmt in COLUMNS]
            out.append(f"| {method} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def run_models(names, run_one, results: dict, out, start: float) -> None:
    """``results["models"][name] = run_one(key, name)`` for each model, its key fixed by the
    model (its place in ``CASES``), not by its place in ``names``; the file is written after every
    model, so an interrupted run keeps the models it finished."""
    for name in names:
        results["models"][name] = run_one(jax.random.key(list(CASES).index(name)), name)
        results["seconds"] = time.perf_counter() - start
        results["complete"] = set(names) <= set(results["models"])
        write_results(out, results)
        # XLA:CPU keeps every compiled program's code mapped; after a few models of NUTS,
        # training and SBC programs one process hit LLVM's "Cannot allocate memory"
        jax.clear_caches()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CASES))
    parser.add_argument("--seconds", type=float, default=60.0, help="training budget per guide")
    parser.add_argument("--num-test", type=int, default=100)
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS[1:]),
                        help=f"besides laplace, any of {METHODS[1:]}")
    parser.add_argument("--quick", action="store_true", help="20 training steps and SBC on 50 data sets: a smoke test")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "flows.json"))
    parser.add_argument("--merge", action="store_true",
                        help="keep the models already in --out (run models one process each)")
    parser.add_argument("--table", metavar="RESULTS_JSON",
                        help="print a results file as markdown tables and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())))
        return {}
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in CASES]
    if unknown:
        parser.error(f"unknown models {unknown}; known: {sorted(CASES)}")
    methods = [m for m in args.methods.split(",") if m]
    if not set(methods) <= set(METHODS[1:]):
        parser.error(f"unknown methods {sorted(set(methods) - set(METHODS[1:]))}; known: "
                     f"{METHODS[1:]}")
    start = time.perf_counter()
    command = "python benchmarks/bench_flows.py " + " ".join(argv or sys.argv[1:])
    results = {
        "command": command,
        "device": str(jax.devices()[0]),
        "environment": {"python": platform.python_version(), "jax": jax.__version__,
                        "cpu_count": __import__("os").cpu_count()},
        "seconds_per_guide": args.seconds,
        "num_test": args.num_test,
        "models": {},
    }
    if args.merge and Path(args.out).exists():
        # models from earlier runs (each in its own process) stay; reruns replace them
        earlier = json.loads(Path(args.out).read_text())
        results["models"] = {k: v for k, v in earlier["models"].items() if k not in names}
        results["commands"] = earlier.get("commands", [earlier["command"]]) + [command]
    run_models(names, lambda key, name: run_case(key, name, CASES[name], seconds=args.seconds,
                                                   num_test=args.num_test, quick=args.quick,
                                                   methods=methods), results, args.out, start)
    return results


if __name__ == "__main__":
    main()
