"""A flow state refined over mini-batches on the hard-posterior zoo, beside Gaussian states.

Issue 17's last ablation: on logistic regression, Student-t regression and the funnel (centred,
and non-centred by NumPyro's ``LocScaleReparam``) at N = 20 and 200 (mini-batches of 20),
against NUTS (4 chains x 1,000 after 500 warm-up), every method on the same held-out data sets,
in one run:

- ``laplace``: damped Newton per data set, the Gaussian at the mode;
- ``gauss_base``: the iterative engine's natural-gradient base update (its network off) from the
  Laplace fit of one mini-batch, 16 passes (its fixed point, the Gaussian variational optimum);
- ``gauss_svi``: the Gaussian state (``svi_refine``: Adam at 1e-2, no decay) for as many steps
  as the flow states, from the same Laplace fit (the flow off);
- ``flow_off``: the flow state from the Laplace fit with the identity flow (nothing learned);
- ``amortized_flow``: the amortized flow guide (``AutoAmortizedFlow`` with its Newton stage,
  trained ``--seconds`` per model on simulations with N from 10 to 200), no refinement;
- ``flow_learned``: the flow state started from the amortized flow guide's output.

The refinements are reported after ``--steps`` Adam steps (each: ``--draws`` gradients of the log
joint on one mini-batch; ``gauss_svi`` takes ``2 D`` cubature points per step, the flows
``--draws`` draws), a separate run per budget (the flows' learning rates decay over the run).
Scores: median |mean error| in NUTS SDs, median SD ratio, median C2ST per data set
(``amortized_ppl.diagnostics.c2st.c2st``), seconds per data set.

    .venv/bin/python benchmarks/bench_iterative_flow.py            # results/iterative_flow.json
    .venv/bin/python benchmarks/bench_iterative_flow.py --table benchmarks/results/iterative_flow.json
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

import bench_flows as bf  # noqa: E402

from amortized_ppl import AutoAmortizedFlow, fit  # noqa: E402
from amortized_ppl.guides import AutoIterativeAmortizedMultivariateNormal  # noqa: E402
from amortized_ppl.iterative.flow_state import flow_refine, identity_flow_state  # noqa: E402
from amortized_ppl.iterative.svi import svi_refine  # noqa: E402
from amortized_ppl.laplace import newton_laplace  # noqa: E402

MODELS = ("logistic_regression", "student_t_regression", "funnel", "funnel_noncentered")
TRAIN_OBS = (10, 200)
BATCH = 20
BASE_PASSES = 16
NUM_DRAWS = bf.NUM_DRAWS


def _one(arguments, i):
    return {k: (v[i] if isinstance(v, jax.Array) else v) for k, v in arguments.items()}


def _vmap(fn):
    return eqx.filter_vmap(fn, in_axes=(0, eqx.if_array(0), 0))


def _timed(fn, *args):
    out = jax.block_until_ready(fn(*args))  # compile
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def _gaussian_draws(key, loc, tril):
    eps = jax.random.normal(key, (NUM_DRAWS, loc.shape[0]))
    return loc + eps @ tril.T


_BATCH_AXES = (0, eqx.if_array(0), 0)  # keys, a data set's arguments (arrays only), mask


@eqx.filter_jit
def laplace_fits(problem, arguments, mask):
    def one(arguments, mask):
        fit_ = newton_laplace(lambda u: problem.log_density(u, arguments, mask),
                              problem.latent_anchor, num_steps=20)
        return fit_.loc, fit_.scale_tril
    return eqx.filter_vmap(one, in_axes=_BATCH_AXES[1:])(arguments, mask)


@eqx.filter_jit
def base_fits(engine, problem, keys, arguments, mask):
    """The natural-gradient base (the engine's network is untrained: off), BASE_PASSES passes."""
    def one(key, arguments, mask):
        state, _ = engine.refine(key, problem, arguments, mask, batch_size=BATCH,
                                 num_passes=BASE_PASSES)
        return state.loc, state.scale_tril
    return eqx.filter_vmap(one, in_axes=_BATCH_AXES)(keys, arguments, mask)


@eqx.filter_jit
def amortized_flows(engine, problem, arguments, mask):
    return eqx.filter_vmap(lambda a, m: engine.posterior(problem, a, m),
                           in_axes=_BATCH_AXES[1:])(arguments, mask)


def identity_starts(loc, tril):
    """A batch of identity flow states at ``N(loc_b, tril_b)``: one flow built eagerly (flowjax
    layers keep closures over their arrays, which must not be tracers) and broadcast."""
    one = identity_flow_state(jax.random.key(0), loc[0], tril[0])
    batch = jax.tree.map(lambda v: jnp.broadcast_to(v, loc.shape[:1] + v.shape), one)
    return eqx.tree_at(lambda q: (q.loc, q.scale_tril), batch, (loc, tril))


@eqx.filter_jit
def svi_fits(problem, keys, arguments, mask, loc, tril, num_passes):
    def one(key, arguments, mask, loc, tril):
        loc, tril, _ = svi_refine(key, problem, arguments, mask, loc=loc, scale_tril=tril,
                                  batch_size=BATCH, num_passes=num_passes, learning_rate=1e-2)
        return loc, tril
    return eqx.filter_vmap(one, in_axes=_BATCH_AXES + (0, 0))(keys, arguments, mask, loc, tril)


@eqx.filter_jit
def flow_fits(problem, keys, arguments, mask, starts, num_passes, num_draws):
    """Draws ``(B, NUM_DRAWS, D)`` of each data set's flow state refined from ``starts``."""
    def one(key, arguments, mask, start):
        q, _ = flow_refine(key, problem, arguments, mask, start, batch_size=BATCH,
                           num_passes=num_passes, num_draws=num_draws)
        return q.sample(jax.random.fold_in(key, 1), (NUM_DRAWS,))
    return eqx.filter_vmap(one, in_axes=_BATCH_AXES + (eqx.if_array(0),))(
        keys, arguments, mask, starts)


def run_model(key, name: str, *, sizes, seconds: float, num_test: int, steps, draws: int,
              quick: bool) -> dict:
    case = bf.CASES[name]
    setup_key, train_key, *size_keys = jax.random.split(key, 2 + len(sizes))
    guide = AutoAmortizedFlow(case.model, newton_steps=8)
    guide.setup(setup_key, case.design_fn, TRAIN_OBS)
    result = fit(train_key, guide, design_fn=case.design_fn, num_obs=TRAIN_OBS, loss="mixed",
                 num_steps=20 if quick else 100_000, max_seconds=seconds, progress=False)
    problem = guide.problem  # its standardization is the one the network was trained with
    flow_engine = guide.engine(result.params)
    base_guide = AutoIterativeAmortizedMultivariateNormal(case.model, batch_size=BATCH)
    base_guide.setup(setup_key, case.design_fn, TRAIN_OBS)
    base_engine = base_guide.engine(base_guide.init_params())
    out = {"train_steps": int(len(result.losses)), "train_seconds": result.seconds,
           "train_obs": list(TRAIN_OBS), "batch_size": BATCH, "sizes": {}}
    for num_obs, size_key in zip(sizes, size_keys):
        sim_key, ref_key, run_key, draw_key, c2st_key = jax.random.split(size_key, 5)
        sim = eqx.filter_jit(problem.simulator(None, num_obs))(sim_key, num_test)
        arguments, mask = sim.arguments, sim.mask
        truth = bf._flat(problem, {site: value[:, None] for site, value in
                                   problem.sites.constrain(sim.latents).items()}, 1)[:, 0]
        start = time.perf_counter()
        ref, ref_kind = bf._references(ref_key, case._replace(test_obs=num_obs), problem, sim,
                                       num_test)
        ref_seconds = (time.perf_counter() - start) / num_test
        keys = jax.random.split(run_key, num_test)
        draw_keys = jax.random.split(draw_key, num_test)
        gaussian_draws = jax.vmap(_gaussian_draws)
        per_pass = -(-num_obs // BATCH)
        # (unconstrained draws (B, S, D), seconds for all B data sets, gradient evaluations)
        runs = {}
        (lap_loc, lap_tril), t_laplace = _timed(laplace_fits, problem, arguments, mask)
        runs["laplace"] = (gaussian_draws(draw_keys, lap_loc, lap_tril), t_laplace, 0)
        (loc, tril), elapsed = _timed(base_fits, base_engine, base_guide.problem, keys,
                                      arguments, mask)
        runs["gauss_base"] = (gaussian_draws(draw_keys, loc, tril), elapsed,
                              BASE_PASSES * per_pass * 2 * problem.latent_dim)
        flows, t_amortized = _timed(amortized_flows, flow_engine, problem, arguments, mask)
        sample = eqx.filter_jit(jax.vmap(lambda k, q: q.sample(k, (NUM_DRAWS,))))
        runs["amortized_flow"] = (sample(draw_keys, flows), t_amortized, 0)
        starts = identity_starts(lap_loc, lap_tril)
        passes_for = {}
        for budget in steps:
            passes = passes_for[budget] = max(1, budget // per_pass)
            evals = passes * per_pass * draws
            (loc, tril), elapsed = _timed(svi_fits, problem, keys, arguments, mask, lap_loc,
                                          lap_tril, passes)
            runs[f"gauss_svi_{budget}"] = (gaussian_draws(draw_keys, loc, tril),
                                           elapsed + t_laplace,
                                           passes * per_pass * 2 * problem.latent_dim)
            u, elapsed = _timed(flow_fits, problem, keys, arguments, mask, starts, passes, draws)
            runs[f"flow_off_{budget}"] = (u, elapsed + t_laplace, evals)
            u, elapsed = _timed(flow_fits, problem, keys, arguments, mask, flows, passes, draws)
            runs[f"flow_learned_{budget}"] = (u, elapsed + t_amortized, evals)

        methods = {}
        for method, (draws_u, elapsed, evals) in runs.items():
            flat = bf._flat(problem, jax.vmap(problem.sites.constrain)(draws_u), 1)
            entry = bf._metrics(c2st_key, flat, ref, truth)
            entry["seconds_per_dataset"] = elapsed / num_test
            entry["gradient_evaluations"] = int(evals)
            methods[method] = entry
            print(f"{name} N={num_obs} {method:18s} err {entry['median_mean_error_sd']:.3f} "
                  f"sd {entry['median_sd_ratio']:.3f} c2st {entry['median_c2st']:.3f} "
                  f"{entry['seconds_per_dataset'] * 1e3:.1f} ms", flush=True)
        out["sizes"][str(num_obs)] = {"reference": ref_kind,
                                      "reference_seconds_per_dataset": ref_seconds,
                                      "passes": {str(b): p for b, p in passes_for.items()},
                                      "methods": methods}
    return out


def markdown_table(results: dict) -> str:
    steps = results["steps"]
    head = ("| model (N) | steps | Laplace | Gaussian base (16 passes) | Gaussian, Adam | "
            "flow from Laplace (network off) | amortized flow alone | flow from amortized |")
    rows = [head, "|---" * 8 + "|"]
    for name, model in results["models"].items():
        for num_obs, size in model["sizes"].items():
            def cell(method, scores=size["methods"]):
                e = scores[method]
                return (f"{e['median_mean_error_sd']:.3f} / {e['median_sd_ratio']:.2f} / "
                        f"{e['median_c2st']:.3f}")

            for budget in steps:
                rows.append(f"| {name} ({num_obs}) | {budget} | {cell('laplace')} | "
                            f"{cell('gauss_base')} | {cell(f'gauss_svi_{budget}')} | "
                            f"{cell(f'flow_off_{budget}')} | {cell('amortized_flow')} | "
                            f"{cell(f'flow_learned_{budget}')} |")
    return "\n".join(rows) + ("\n\n(median |mean error| in NUTS SDs / median SD ratio / "
                              "median C2ST against NUTS)")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--sizes", default="20,200")
    parser.add_argument("--num-test", type=int, default=10)
    parser.add_argument("--steps", default="100,1000",
                        help="Adam step budgets of the refinements (rounded to whole passes)")
    parser.add_argument("--draws", type=int, default=16, help="draws (gradients) per Adam step")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="training budget of the amortized flow guide, per model")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 20 training steps")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                             "iterative_flow.json"))
    parser.add_argument("--table", metavar="RESULTS_JSON",
                        help="print a results file as a markdown table and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())))
        return {}
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in bf.CASES]
    if unknown:
        parser.error(f"unknown models {unknown}; known: {sorted(bf.CASES)}")
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
        steps = [int(s) for s in args.steps.split(",") if s]
    except ValueError as error:
        parser.error(f"--sizes and --steps take comma-separated integers ({error})")
    if not sizes or min(sizes) < 1 or not steps or min(steps) < 1:
        parser.error("--sizes and --steps need positive integers")
    start = time.perf_counter()
    results = {
        "command": "python benchmarks/bench_iterative_flow.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "device": str(jax.devices()[0]),
        "environment": {"python": platform.python_version(), "jax": jax.__version__,
                        "cpu_count": __import__("os").cpu_count()},
        "steps": steps, "draws_per_step": args.draws, "num_test": args.num_test,
        "seconds_per_guide": args.seconds, "models": {},
    }
    bf.run_models(names, lambda key, name: run_model(
        key, name, sizes=sizes, seconds=args.seconds, num_test=args.num_test, steps=steps,
        draws=args.draws, quick=args.quick), results, args.out, start)
    return results


if __name__ == "__main__":
    main()
