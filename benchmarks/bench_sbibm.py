"""The sbibm tasks: C2ST against each task's reference at fixed simulation budgets.

Issue 19's yardstick. Per task (``--tasks``) and budget (``--budgets``, default 10^3, 10^4,
10^5 simulations), one :class:`~amortized_ppl.AutoAmortizedFlow` (the network alone: no Newton
steps) is trained on that many simulations, spent once (:func:`simulation_budget`: 10% held out
for early stopping after ``--patience`` epochs without improvement, as sbi's NPE does), on
mini-batches of ``--batch-size``; then, on each of the task's 10 observations, 10,000 draws are
scored by :func:`~amortized_ppl.diagnostics.c2st.c2st_sbibm` (sbibm's C2ST) against 10,000
reference draws:

- ``amortized``: the network's draws alone (what simulation-only tools offer);
- ``psis``: likelihood-assisted, ``--psis-proposals`` (100,000) of the same network's draws
  weighted by the model's joint density (Pareto-smoothed; k-hat and ESS reported) and 10,000
  resampled from them: what only a tool with the model's density can do. Resampling 10,000 from
  as many proposals repeats draws wherever the ESS is far below 10,000, and the C2ST's classifier
  tells repeated draws apart (a first run, with as many proposals as draws, scored the resampled
  draws worse than the network's on gaussian_linear): hence ten proposals per draw.

References are computed here (closed form, exact rejection, or checked NUTS; see
:mod:`amortized_ppl.models.sbibm`) and cached under ``benchmarks/.cache/sbibm`` (not committed;
deleting it recomputes them). Each (task, budget) is written to the results file as soon as it
is done, so the benchmark runs in parts (``--merge`` keeps the parts already there).

    .venv/bin/python benchmarks/bench_sbibm.py --tasks two_moons --budgets 1000,10000
    .venv/bin/python benchmarks/bench_sbibm.py --table benchmarks/results/sbibm.json
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amortized_ppl import (  # noqa: E402
    AutoAmortizedFlow,
    EarlyStopping,
    fit,
    from_budget,
    simulation_budget,
)
from amortized_ppl.diagnostics.c2st import c2st_sbibm  # noqa: E402
from amortized_ppl.diagnostics.importance import importance_weights, resample_draws  # noqa: E402
from amortized_ppl.models.sbibm import (  # noqa: E402
    NUM_OBSERVATIONS,
    TASKS,
    get_task,
    observation,
    reference_draws,
)
from amortized_ppl.results_file import write_results  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache" / "sbibm"
NUM_DRAWS = 10_000
# sbibm's NPE figures (Lueckmann et al. 2021; the sbi-benchmark/results repository's
# main_paper.csv, mean over the 10 observations) at 10^3 / 10^4 / 10^5 simulations.
PUBLISHED_NPE = {
    "two_moons": (0.725, 0.606, 0.542),
    "slcp": (0.975, 0.901, 0.831),
    "gaussian_linear": (0.694, 0.552, 0.506),
    "gaussian_linear_uniform": (0.696, 0.553, 0.509),
    "gaussian_mixture": (0.716, 0.615, 0.548),
    "slcp_distractors": (0.982, 0.970, 0.863),
    "bernoulli_glm": (0.863, 0.678, 0.559),
}


def _design_fn(key, num_obs):
    del key
    return (), {"num_obs": int(num_obs)}


def reference(task, index: int, num_draws: int, cache: Path = CACHE) -> np.ndarray:
    """The cached reference draws of observation ``index`` (computed and cached if absent)."""
    path = cache / f"{task.name}_{index}_{num_draws}.npy"
    if path.exists():
        return np.load(path)
    _, x = observation(task, index)
    draws = np.asarray(reference_draws(jax.random.fold_in(jax.random.key(7), index), task, x,
                                       num_draws))
    cache.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp.npy")
    np.save(temporary, draws)
    os.replace(temporary, path)  # a killed run leaves no half-written reference
    return draws


def train(key, task, budget: int, *, batch_size: int, patience: int, max_seconds: float,
          max_steps: int):
    """One guide trained on ``budget`` simulations; ``(guide, params, info)``."""
    setup_key, budget_key, fit_key = jax.random.split(key, 3)
    guide = AutoAmortizedFlow(task.model)
    guide.setup(setup_key, _design_fn, task.num_obs)
    spent = simulation_budget(budget_key, guide.problem.simulator(), budget)
    num_train = int(spent.train.latents.shape[0])
    batch = min(batch_size, num_train)
    epoch = max(1, num_train // batch)
    start = time.perf_counter()
    result = fit(fit_key, guide, num_steps=max_steps, batch_size=batch, chunk_size=epoch,
                 progress=False, max_seconds=max_seconds, simulate=from_budget(spent.train),
                 early_stopping=EarlyStopping(held_out=spent.held_out, patience=patience))
    info = {"seconds": time.perf_counter() - start, "steps": int(result.losses.shape[0]),
            "epochs": float(result.losses.shape[0] / epoch), "batch_size": batch,
            "reason": result.reason, "best_step": int(result.validation.best_step),
            "best_held_out_loss": float(result.validation.best_loss)}
    return guide, result.params, info


def evaluate(key, task, guide, params, index: int, num_draws: int, cache: Path,
             num_proposals: int) -> dict:
    """C2ST of both variants on observation ``index``."""
    _, x = observation(task, index)
    ref = jnp.asarray(reference(task, index, num_draws, cache))
    draw_key, weight_key, resample_key, c2st_key = jax.random.split(key, 4)
    start = time.perf_counter()
    plain = jax.block_until_ready(
        guide.sample_posterior(draw_key, params, x=x, sample_shape=(num_draws,))["theta"])
    plain_seconds = time.perf_counter() - start
    start = time.perf_counter()
    weighted = importance_weights(weight_key, guide, params, x=x, num_draws=num_proposals)
    flat = resample_draws(resample_key, weighted, num_draws)[0]
    assisted = jax.vmap(guide.problem.sites.constrain)(flat)["theta"]
    assisted = jax.block_until_ready(assisted)
    assisted_seconds = time.perf_counter() - start
    out = {}
    for name, draws, seconds in (("amortized", plain, plain_seconds),
                                 ("psis", assisted, assisted_seconds)):
        ok = bool(jnp.all(jnp.isfinite(draws)))
        # Non-finite draws score 1 (told apart always) and are flagged, never dropped.
        accuracy = float(c2st_sbibm(c2st_key, draws, ref)) if ok else 1.0
        out[name] = {"c2st": accuracy, "seconds": seconds, "finite": ok}
    out["psis"]["khat"] = float(weighted.psis.khat[0])
    out["psis"]["ess"] = float(weighted.psis.ess[0])
    return out


def run(key, task, budget: int, args) -> dict:
    guide, params, info = train(key, task, budget, batch_size=args.batch_size,
                                patience=args.patience, max_seconds=args.max_train_seconds,
                                max_steps=args.max_steps)
    print(f"[{task.name} {budget}] trained {info['steps']} steps ({info['epochs']:.0f} epochs, "
          f"{info['reason']}) in {info['seconds']:.0f} s", flush=True)
    rows = [evaluate(jax.random.fold_in(key, 100 + i), task, guide, params, i, args.num_draws,
                     Path(args.cache_dir), args.psis_proposals)
            for i in range(args.num_observations)]
    summary = {"training": info}
    for variant in ("amortized", "psis"):
        values = np.array([r[variant]["c2st"] for r in rows])
        summary[variant] = {"c2st_mean": float(values.mean()), "c2st_sd": float(values.std()),
                            "c2st": values.tolist(),
                            "seconds_per_observation": float(np.median(
                                [r[variant]["seconds"] for r in rows]))}
    khat = np.array([r["psis"]["khat"] for r in rows])
    summary["psis"].update(khat_median=float(np.median(khat)), khat_max=float(khat.max()),
                           ess_median=float(np.median([r["psis"]["ess"] for r in rows])))
    print(f"[{task.name} {budget}] C2ST amortized {summary['amortized']['c2st_mean']:.3f}, "
          f"psis {summary['psis']['c2st_mean']:.3f}", flush=True)
    return summary


def markdown_table(results: dict) -> str:
    lines = ["| task | simulations | amortized C2ST | likelihood-assisted (PSIS) C2ST | "
             "k-hat median | sbibm NPE (published) | training s | epochs |",
             "|---|---|---|---|---|---|---|---|"]
    budgets = (1000, 10_000, 100_000)
    for name, per_budget in results["tasks"].items():
        for budget, row in sorted(per_budget.items(), key=lambda kv: int(kv[0])):
            published = PUBLISHED_NPE.get(name)
            npe = (f"{published[budgets.index(int(budget))]:.3f}"
                   if published and int(budget) in budgets else "")
            lines.append(
                f"| {name} | {int(budget):,} | {row['amortized']['c2st_mean']:.3f} ± "
                f"{row['amortized']['c2st_sd']:.3f} | {row['psis']['c2st_mean']:.3f} ± "
                f"{row['psis']['c2st_sd']:.3f} | {row['psis']['khat_median']:.2f} | {npe} | "
                f"{row['training']['seconds']:.0f} | {row['training']['epochs']:.0f} |")
    return "\n".join(lines)


def build_parser(description: str, out: str) -> argparse.ArgumentParser:
    """The options of this benchmark and of its peers (``benchmarks/peers/bench_sbi.py``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help=f"comma-separated task names [all: {','.join(TASKS)}]")
    parser.add_argument("--budgets", default="1000,10000,100000",
                        help="simulation budgets, comma-separated [1000,10000,100000]")
    parser.add_argument("--num-observations", type=int, default=NUM_OBSERVATIONS,
                        help=f"observations per task [{NUM_OBSERVATIONS}]")
    parser.add_argument("--num-draws", type=int, default=NUM_DRAWS,
                        help=f"draws per side of the C2ST [{NUM_DRAWS}]")
    parser.add_argument("--psis-proposals", type=int, default=10 * NUM_DRAWS,
                        help="network draws weighted for the PSIS variant, of which --num-draws "
                             "are resampled [100000]")
    parser.add_argument("--batch-size", type=int, default=200,
                        help="simulations per step (sbi's default) [200]")
    parser.add_argument("--patience", type=int, default=20,
                        help="epochs without a better held-out loss before stopping [20]")
    parser.add_argument("--max-steps", type=int, default=200_000,
                        help="training steps at most [200000]")
    parser.add_argument("--max-train-seconds", type=float, default=1800.0,
                        help="training time per task and budget at most [1800]")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / out))
    parser.add_argument("--cache-dir", default=str(CACHE),
                        help="where reference draws are cached [benchmarks/.cache/sbibm]")
    parser.add_argument("--merge", action="store_true",
                        help="keep the (task, budget) parts already in --out")
    return parser


def parts(parser: argparse.ArgumentParser, args) -> tuple[list, list[int]]:
    """The tasks and budgets asked for, or a parser error naming the bad one."""
    try:
        tasks = [get_task(name) for name in args.tasks.split(",") if name]
        budgets = [int(b) for b in args.budgets.split(",") if b]
    except ValueError as err:
        parser.error(str(err))
    too_small = [b for b in budgets if int(0.9 * b) < 2]
    if too_small:
        parser.error(f"--budgets {too_small} leave no simulations to train on.")
    return tasks, budgets


def run_parts(args, results: dict, command: str, tasks, budgets, row_fn) -> dict:
    """``row_fn(key, task, budget)`` for every part, each written to ``args.out`` when done
    (with ``args.merge``, the parts already there are kept)."""
    results.update(command=command, tasks={})
    if args.merge and Path(args.out).exists():
        earlier = json.loads(Path(args.out).read_text())
        results["tasks"] = earlier["tasks"]
        results["commands"] = earlier.get("commands", [earlier["command"]]) + [command]
    for task in tasks:
        for budget in budgets:
            key = jax.random.fold_in(jax.random.key(task.index), budget)
            results["tasks"].setdefault(task.name, {})[str(budget)] = row_fn(key, task, budget)
            results["environment"]["load_average_at_end"] = list(os.getloadavg())
            write_results(args.out, results)
    return results


def main(argv=None) -> dict:
    parser = build_parser(__doc__.splitlines()[0], "sbibm.json")
    parser.add_argument("--table", metavar="RESULTS_JSON",
                        help="print a results file as a markdown table and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())))
        return {}
    tasks, budgets = parts(parser, args)
    command = "python benchmarks/bench_sbibm.py " + " ".join(argv or sys.argv[1:])
    results = {"device": str(jax.devices()[0]),
               "environment": {"python": platform.python_version(), "jax": jax.__version__,
                               "numpyro": numpyro.__version__, "cpu_count": os.cpu_count(),
                               "load_average_at_start": list(os.getloadavg())},
               "settings": {k: getattr(args, k) for k in (
                   "num_observations", "num_draws", "psis_proposals", "batch_size", "patience",
                   "max_steps", "max_train_seconds")}}
    return run_parts(args, results, command, tasks, budgets,
                     lambda key, task, budget: run(key, task, budget, args))


if __name__ == "__main__":
    main()
