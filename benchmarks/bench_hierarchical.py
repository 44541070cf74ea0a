"""Hierarchical models: the amortized engine against NUTS, Laplace and NumPyro's SVI autoguides.

Issue 18's side-by-side run. Per model, a network (groups as sets of sets) is trained by forward
KL on simulations for ``--train-seconds``, then every method runs on the same 20 held-out data
sets (simulated from the prior at the evaluation layout, seed fixed by the model's place in
``CASES``) in one process:

- ``nuts``: the reference, blackjax NUTS (4 chains x 1,000 after 500 warm-up; eight schools'
  reference is the non-centred model, whose posterior is the same, at target_accept 0.95);
- ``amortized``: the product: the network's ``q(global | data)`` and per-group starts, damped
  Newton on the globals' Laplace marginal (:func:`fit_marginal`), then a defensive mixture
  (half the network's Gaussian, half the Gaussian at the marginal mode) as the globals' proposal,
  per-group Newton conditionals for the locals, PSIS importance resampling;
- ``network_off``: the same pipeline with the network's last layers zeroed (the prior's robust
  Gaussians as starts and as the mixture's second half);
- ``network_alone``: the network's ``q(global) q(local | global)`` with no density at all;
- ``laplace``: damped Newton on the joint log density of all latents, the Gaussian at the mode;
- ``svi_normal``, ``svi_mvn``: NumPyro SVI with ``AutoNormal`` and ``AutoMultivariateNormal``
  (Adam 0.01, 1 particle) run per data set for each of ``--svi-steps``.

Scores against NUTS, in unconstrained space: per data set the median over coordinates of
|mean error| / NUTS SD and of SD ratio, for globals and locals separately; then the median over
data sets. Eight schools also get C2ST on (mu, log tau) against NUTS on data sets simulated with
tau < 1 (the funnel's neck). Seconds per data set are warm (the first data set, which compiles,
is left out), measured in this run on this machine.

    .venv/bin/python benchmarks/bench_hierarchical.py           # results/hierarchical.json
    .venv/bin/python benchmarks/bench_hierarchical.py --table benchmarks/results/hierarchical.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amortized_ppl import linalg  # noqa: E402
from amortized_ppl.diagnostics.c2st import c2st  # noqa: E402
from amortized_ppl.hierarchy import (  # noqa: E402
    HierarchicalNetwork,
    fit_hierarchical,
    fit_marginal,
    flatten,
    inspect_hierarchical_problem,
    log_joint,
    sample_hierarchical,
)
from amortized_ppl.hierarchy.layout import simulate  # noqa: E402
from amortized_ppl.hierarchy.problem import random_mask  # noqa: E402
from amortized_ppl.models import hierarchical as h  # noqa: E402
from amortized_ppl.reference import reference_posterior  # noqa: E402
from amortized_ppl.results_file import write_results  # noqa: E402

CASES = {
    "eight_schools": dict(model=h.eight_schools, design=h.eight_schools_design,
                          num_groups=(4, 12), group_sizes=(1, 1), eval_groups=8,
                          reference=h.eight_schools_noncentered, funnel=True, batch_size=64,
                          train_seconds=300.0),
    "eight_schools_noncentered": dict(model=h.eight_schools_noncentered,
                                      design=h.eight_schools_design, num_groups=(4, 12),
                                      group_sizes=(1, 1), eval_groups=8,
                                      reference=h.eight_schools_noncentered, funnel=True,
                                      batch_size=64, train_seconds=300.0),
    "varying_slopes": dict(model=h.varying_slopes, design=h.regression_design,
                           num_groups=(20, 200), group_sizes=(2, 50), eval_groups=200,
                           batch_size=8, train_seconds=600.0),
    "multilevel_logistic": dict(model=h.multilevel_logistic, design=h.regression_design,
                                num_groups=(20, 200), group_sizes=(2, 50), eval_groups=200,
                                batch_size=8, train_seconds=600.0),
}
NUM_DRAWS = 4000
NEWTON_STEPS = 4


def _held_out(key, problem, case, count, small_tau=False):
    """``count`` data sets at the evaluation layout; with ``small_tau``, only those with
    ``tau < 1`` (eight schools' funnel neck), found by rejection."""
    sizes = problem.setup.group_sizes
    out, index = [], 0
    while len(out) < count:
        k = jax.random.fold_in(key, index)
        index += 1
        mask = random_mask(jax.random.fold_in(k, 0), (case["eval_groups"],) * 2, sizes)
        design = dict(case["design"](jax.random.fold_in(k, 1), mask), mask=mask)
        data, g, _ = simulate(jax.random.fold_in(k, 2), case["model"], problem.structure, design)
        if small_tau and not float(g[1]) < 0.0:  # log tau < 0
            continue
        out.append(data)
    return out


def _reference(key, problem, case, data):
    """NUTS draws as ``(g (S, dg), u (S, G, k))`` in the case model's parametrization."""
    ref = reference_posterior(key, case.get("reference", case["model"]), num_chains=4,
                              num_warmup=500, num_samples=1000,
                              target_accept=0.95 if case.get("funnel") else 0.8, **data)
    samples = {k: np.asarray(v).reshape((-1,) + np.shape(v)[2:]) for k, v in
               ref.samples.items()}
    if case.get("funnel"):
        tau = samples["tau"].reshape(-1, 1, 1)
        samples["theta"] = samples["mu"].reshape(-1, 1, 1) + tau * samples["theta_decentered"]
    names = problem.structure.global_names + problem.structure.local_names
    g, u = jax.vmap(lambda v: flatten(problem.structure, v))(
        {k: jnp.asarray(samples[k]) for k in names})
    rhat_max = max(float(np.max(v)) for v in ref.rhat.values())
    return np.asarray(g), np.asarray(u), {"rhat_max": rhat_max,
                                          "divergent": int(ref.num_divergent)}


def _scores(g, u, ref_g, ref_u) -> dict:
    def pair(x, ref):
        x, ref = x.reshape(x.shape[0], -1), ref.reshape(ref.shape[0], -1)
        sd = ref.std(0)
        return (float(np.median(np.abs(x.mean(0) - ref.mean(0)) / sd)),
                float(np.median(x.std(0) / sd)))

    g_err, g_sd = pair(np.asarray(g), ref_g)
    u_err, u_sd = pair(np.asarray(u), ref_u)
    return {"global_error": g_err, "global_sd_ratio": g_sd, "local_error": u_err,
            "local_sd_ratio": u_sd}


def _joint_laplace(problem):
    """Damped Newton on the joint log density of all latents, from the prior's robust centre."""
    model, structure = problem.setup.model, problem.structure
    dg, k = structure.global_dim, structure.local_dim

    @jax.jit
    def run(key, data):
        num_groups = data[structure.mask].shape[0]

        def f(x):
            return log_joint(model, structure, data, x[:dg], x[dg:].reshape(num_groups, k))

        x0 = jnp.concatenate([problem.global_loc, jnp.tile(problem.local_loc, num_groups)])
        eye = jnp.eye(x0.shape[0])

        def step(x, _):
            grad, hess = jax.grad(f)(x), jax.hessian(f)(x)
            level = jnp.mean(jnp.abs(jnp.diagonal(hess))) + 1e-6
            factors = [linalg.cholesky(-hess + c * level * eye) for c in (0.0, 0.01, 0.1, 1.0)]
            oks = jnp.array([jnp.all(jnp.isfinite(fa)) for fa in factors])
            factor = jnp.stack(factors)[jnp.argmax(oks)]
            d = jnp.clip(linalg.cho_solve(factor, grad), -3.0, 3.0)
            new = x + d
            better = jnp.isfinite(f(new)) & (f(new) >= f(x))
            return jnp.where(better & oks.any(), new, x + 0.1 * d), None

        x, _ = jax.lax.scan(step, x0, None, length=30)
        factor = linalg.cholesky(-jax.hessian(f)(x))
        z = jax.random.normal(key, (NUM_DRAWS, x.shape[0]))
        draws = x + jax.vmap(lambda zz: linalg.solve_upper_transposed(factor, zz))(z)
        return draws[:, :dg], draws[:, dg:].reshape(NUM_DRAWS, num_groups, k)

    return run


def _svi(problem, guide_class, num_steps):
    model, structure = problem.setup.model, problem.structure

    @jax.jit
    def run(key, data):
        guide = guide_class(model)
        svi = SVI(model, guide, numpyro.optim.Adam(0.01), Trace_ELBO())
        init_key, run_key, draw_key = jax.random.split(key, 3)
        state = svi.init(init_key, **data)

        def body(i, s):
            return svi.update(s, **data)[0]

        state = jax.lax.fori_loop(0, num_steps, body, state)
        params = svi.get_params(state)
        values = guide.sample_posterior(draw_key, params, sample_shape=(NUM_DRAWS,), **data)
        names = structure.global_names + structure.local_names
        return jax.vmap(lambda v: flatten(structure, v))({n: values[n] for n in names})

    return run


def _timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def _summary(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float))]
    out = {k: float(np.median([r[k] for r in rows])) for k in keys}
    warm = [r["seconds"] for r in rows[1:]] or [rows[0]["seconds"]]
    out["seconds"] = float(np.median(warm))
    out["first_seconds"] = rows[0]["seconds"]
    return out


def run_case(key, name: str, case: dict, *, train_seconds: float | None, num_test: int,
             svi_steps: list[int], batch_size: int | None, quick: bool) -> dict:
    train_seconds = case["train_seconds"] if train_seconds is None else train_seconds
    batch_size = case["batch_size"] if batch_size is None else batch_size
    problem_key, net_key, train_key, test_key, eval_key = jax.random.split(key, 5)
    problem = inspect_hierarchical_problem(problem_key, case["model"], case["design"],
                                           num_groups=case["num_groups"],
                                           group_sizes=case["group_sizes"])
    network = HierarchicalNetwork(net_key, problem)
    start = time.perf_counter()
    network, trained = fit_hierarchical(train_key, problem, network,
                                        num_steps=20 if quick else 1_000_000,
                                        batch_size=batch_size, max_seconds=train_seconds,
                                        progress=False)
    training = {"seconds": time.perf_counter() - start, "steps": int(len(trained.history)),
                "batch_size": batch_size,
                "final_loss": float(np.mean(trained.history[-50:])),
                "first_loss": float(np.mean(trained.history[:50]))}
    print(f"[{name}] trained {training['steps']} steps in {training['seconds']:.0f} s",
          flush=True)
    sets = {"held_out": _held_out(test_key, problem, case, num_test)}
    if case.get("funnel"):
        sets["small_tau"] = _held_out(jax.random.fold_in(test_key, 1), problem, case, num_test,
                                      small_tau=True)
    laplace = _joint_laplace(problem)
    svi_runs = {f"svi_{label}_{steps}": _svi(problem, cls, steps)
                for label, cls in (("normal", AutoNormal), ("mvn", AutoMultivariateNormal))
                for steps in svi_steps}
    off = network.network_off()

    def pipeline(net):
        def run(k, data):
            fit = fit_marginal(problem, net, data)
            draws = sample_hierarchical(k, problem, net, data, num_draws=NUM_DRAWS,
                                        newton_steps=NEWTON_STEPS, marginal=fit)
            return draws, fit
        return run

    methods = {
        "amortized": pipeline(network),
        "network_off": pipeline(off),
        "network_alone": lambda k, d: (sample_hierarchical(k, problem, network, d,
                                                           num_draws=NUM_DRAWS, correct=False),
                                       None),
    }
    results = {"training": training, "sets": {}}
    for set_name, datasets in sets.items():
        rows = {m: [] for m in ["nuts", *methods, "laplace", *svi_runs]}
        c2st_rows = {m: [] for m in rows if m != "nuts"}
        for i, data in enumerate(datasets):
            k = jax.random.fold_in(eval_key, i + 1000 * (set_name == "small_tau"))
            (ref_g, ref_u, info), seconds = _timed(_reference, k, problem, case, data)
            rows["nuts"].append({"seconds": seconds, "rhat_max": info["rhat_max"],
                                 "divergent": info["divergent"]})
            outputs = {}
            for m, fn in methods.items():
                (draws, fit), seconds = _timed(fn, k, data)
                row = dict(_scores(draws.g, draws.u, ref_g, ref_u), seconds=seconds,
                           khat=float(draws.khat), ess=float(draws.ess))
                if fit is not None:
                    row["marginal_steps"] = int(fit.num_steps)
                rows[m].append(row)
                outputs[m] = np.asarray(draws.g)
            (g, u), seconds = _timed(laplace, k, data)
            rows["laplace"].append(dict(_scores(g, u, ref_g, ref_u), seconds=seconds))
            outputs["laplace"] = np.asarray(g)
            for m, fn in svi_runs.items():
                (g, u), seconds = _timed(fn, k, data)
                rows[m].append(dict(_scores(g, u, ref_g, ref_u), seconds=seconds))
                outputs[m] = np.asarray(g)
            if case.get("funnel"):
                for m, g in outputs.items():
                    ok = np.all(np.isfinite(g))  # a failed fit scores 1: told apart always
                    c2st_rows[m].append(float(c2st(jax.random.fold_in(k, 7), jnp.asarray(
                        g[:, :2]), jnp.asarray(ref_g[:NUM_DRAWS, :2]))) if ok else 1.0)
            print(f"[{name}/{set_name}] data set {i + 1}/{len(datasets)}: amortized "
                  f"{rows['amortized'][-1]['global_error']:.3f} SD, NUTS "
                  f"{rows['nuts'][-1]['seconds']:.1f} s", flush=True)
        summary = {m: _summary(r) for m, r in rows.items()}
        for m, values in c2st_rows.items():
            if values:
                summary[m]["c2st_mu_log_tau"] = float(np.median(values))
                summary[m]["c2st_mu_log_tau_max"] = float(np.max(values))
        summary["per_dataset"] = rows
        results["sets"][set_name] = summary
    jax.clear_caches()
    return results


def _row_medians(rows: list[dict]) -> tuple[dict, int]:
    """Medians over the data sets where the method gave finite scores, and how many did not."""
    keys = ("global_error", "global_sd_ratio", "local_error", "local_sd_ratio")
    finite = [r for r in rows if all(np.isfinite(r[k]) for k in keys)]
    out = {k: float(np.median([r[k] for r in finite])) if finite else float("nan") for k in keys}
    return out, len(rows) - len(finite)


def markdown_table(results: dict) -> str:
    lines = []
    for name, model in results["models"].items():
        for set_name, summary in model["sets"].items():
            lines += [f"\n**{name}** ({set_name}; trained {model['training']['steps']} steps, "
                      f"{model['training']['seconds']:.0f} s)\n",
                      "| method | global err (SD) | global SD ratio | local err (SD) | "
                      "local SD ratio | C2ST (mu, log tau) | ESS of 4000 | k-hat | "
                      "s / data set |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for m, row in summary.items():
                if m == "per_dataset" or m == "nuts":
                    continue
                scores, failed = _row_medians(summary["per_dataset"][m])
                label = m if not failed else f"{m} (non-finite on {failed})"
                c2st_value = row.get("c2st_mu_log_tau")
                corrected = m in ("amortized", "network_off")
                ess = f"{row['ess']:.0f}" if corrected else ""
                khat = f"{row['khat']:.2f}" if corrected else ""
                lines.append(
                    f"| {label} | {scores['global_error']:.3f} | "
                    f"{scores['global_sd_ratio']:.2f} | {scores['local_error']:.3f} | "
                    f"{scores['local_sd_ratio']:.2f} | "
                    f"{'' if c2st_value is None else f'{c2st_value:.3f}'} | "
                    f"{ess} | {khat} | {row['seconds']:.3g} |")
            nuts = summary["nuts"]
            lines.append(f"| nuts (R-hat max {nuts['rhat_max']:.3f}, divergent "
                         f"{nuts['divergent']:.0f}: medians) | | | | | | | | "
                         f"{nuts['seconds']:.3g} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CASES))
    parser.add_argument("--train-seconds", type=float, default=None,
                        help="training budget per model [the model's: 300 s for eight schools, "
                             "600 s for the regressions]")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="simulations per step [the model's: 64 for eight schools, 8 for "
                             "the regressions]")
    parser.add_argument("--num-test", type=int, default=20, help="held-out data sets [20]")
    parser.add_argument("--svi-steps", default="500,2000,8000",
                        help="SVI step budgets, comma-separated [500,2000,8000]")
    parser.add_argument("--quick", action="store_true", help="20 training steps: a smoke test")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                             "hierarchical.json"))
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
    try:
        svi_steps = [int(s) for s in args.svi_steps.split(",") if s]
    except ValueError:
        parser.error(f"--svi-steps must be comma-separated integers; got {args.svi_steps!r}")
    command = "python benchmarks/bench_hierarchical.py " + " ".join(argv or sys.argv[1:])
    results = {"command": command, "device": str(jax.devices()[0]),
               "environment": {"python": platform.python_version(), "jax": jax.__version__,
                               "numpyro": numpyro.__version__, "cpu_count": os.cpu_count(),
                               "load_average_at_start": list(os.getloadavg())},
               "num_test": args.num_test, "num_draws": NUM_DRAWS, "svi_steps": svi_steps,
               "models": {}}
    if args.merge and Path(args.out).exists():
        earlier = json.loads(Path(args.out).read_text())
        results["models"] = {k: v for k, v in earlier["models"].items() if k not in names}
        results["commands"] = earlier.get("commands", [earlier["command"]]) + [command]
    start = time.perf_counter()
    for name in names:
        results["models"][name] = run_case(
            jax.random.key(list(CASES).index(name)), name, CASES[name],
            train_seconds=args.train_seconds, num_test=args.num_test, svi_steps=svi_steps,
            batch_size=args.batch_size, quick=args.quick)
        results["seconds"] = time.perf_counter() - start
        results["environment"]["load_average_at_end"] = list(os.getloadavg())
        write_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
