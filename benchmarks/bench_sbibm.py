"""The sbibm tasks: C2ST against each task's reference at fixed simulation budgets.

Issue 19's yardstick. Per task (``--tasks``) and budget (``--budgets``, default 10^3, 10^4,
10^5 simulations), one :class:`~amortized_ppl.AutoAmortizedFlow` (the network alone: no Newton
steps) is trained on that many simulations, spent once (:func:`simulation_budget`; 10% held out
to keep the parameters of the best held-out loss), for ``--epochs`` passes over them on
mini-batches of ``--batch-size`` with the learning rate decayed to zero over those passes
(``fit``'s cosine schedule); its encoder is an MLP on the concatenated rows
(:class:`~amortized_ppl.encoders.FlatEncoder`, ``--encoder flat``) since the sbibm data have a
fixed size. Both choices were measured on two_moons at 10^4 simulations (the
``sbibm_design_*.json`` results and ``benchmarks/README.md``): the decay is what counts. Then,
on each of the task's 10 observations, 10,000 draws are scored by
:func:`~amortized_ppl.diagnostics.c2st.c2st_sbibm` (sbibm's C2ST) against 10,000 reference
draws:

- ``amortized``: the network's draws alone (what simulation-only tools offer);
- ``psis``: likelihood-assisted, ``--psis-proposals`` (100,000) of the same network's draws
  weighted by the model's joint density (Pareto-smoothed; k-hat and ESS reported) and 10,000
  resampled from them: what only a tool with the model's density can do. Resampling 10,000 from
  as many proposals repeats draws wherever the ESS is far below 10,000, and the C2ST's classifier
  tells repeated draws apart (a first run, with as many proposals as draws, scored the resampled
  draws worse than the network's on gaussian_linear): hence ten proposals per draw;
- ``untrained``, ``untrained_psis``: the same two with the guide untrained (the network off);
- ``laplace``, ``laplace_psis``: the Laplace approximation (Newton from the prior's median) and
  its PSIS resampling, no network at all (``--variants`` picks which are scored: each C2ST of
  10,000 draws in 10 dimensions takes minutes on 2 CPU cores).

References are computed here (closed form, exact rejection, or checked NUTS; see
:mod:`amortized_ppl.models.sbibm`) and cached under ``benchmarks/.cache/sbibm`` (not committed;
deleting it recomputes them). Each (task, budget) is written to the results file as soon as it
is done, so the benchmark runs in parts (``--merge`` keeps the parts already there).

    .venv/bin/python benchmarks/bench_sbibm.py --tasks two_moons --budgets 1000,10000
    .venv/bin/python benchmarks/bench_sbibm.py --table benchmarks/results/sbibm.json \
        --peer benchmarks/results/sbibm_sbi.json --peer benchmarks/results/sbibm_bayesflow.json
    .venv/bin/python benchmarks/bench_sbibm.py --plot benchmarks/results/sbibm.json --peer ...
"""

from __future__ import annotations

import argparse
import dataclasses
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
import numpyro.distributions as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amortized_ppl import (  # noqa: E402
    AutoAmortizedFlow,
    EarlyStopping,
    Flow,
    fit,
    from_budget,
    simulation_budget,
)
from amortized_ppl.diagnostics.c2st import c2st_sbibm  # noqa: E402
from amortized_ppl.diagnostics.importance import log_importance_weights  # noqa: E402
from amortized_ppl.diagnostics.psis import importance_resample, psis_diagnose  # noqa: E402
from amortized_ppl.encoders import FlatEncoder  # noqa: E402
from amortized_ppl.laplace import newton_laplace  # noqa: E402
from amortized_ppl.models.sbibm import (  # noqa: E402
    NUM_OBSERVATIONS,
    TASKS,
    ReferenceCheckError,
    get_task,
    observation,
    reference_draws,
)
from amortized_ppl.results_file import write_results  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache" / "sbibm"
NUM_DRAWS = 10_000
# Each scored on every observation: the trained network's draws, their PSIS resampling, the same
# two with the untrained network (the network off), and the Laplace approximation with and
# without PSIS (no network at all).
VARIANTS = ("amortized", "psis", "untrained", "untrained_psis", "laplace", "laplace_psis")
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


def flow_recipe(text: str) -> Flow:
    """``"num_layers=8,depth=2"`` -> ``Flow(num_layers=8, depth=2)`` (numbers parsed; an
    unknown or malformed setting raises ``ValueError``)."""
    settings = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep or name not in {f.name for f in dataclasses.fields(Flow)} - {"gaussian"}:
            raise ValueError(f"--flow: {item!r} is not NAME=VALUE with NAME a Flow setting.")
        try:
            settings[name] = float(value) if name == "interval" else int(value)
        except ValueError:
            settings[name] = value
    return Flow(**settings)


def train(key, task, budget: int, *, batch_size: int, epochs: int, patience: int | None,
          max_seconds: float, flow: Flow | None = None, encoder: str = "flat"):
    """One guide trained on ``budget`` simulations for ``epochs`` passes (the learning rate
    decayed to zero over them; stopped earlier after ``patience`` epochs without a better
    held-out loss, if given); ``(guide, params, info)``."""
    setup_key, budget_key, fit_key = jax.random.split(key, 3)
    guide = AutoAmortizedFlow(task.model, flow=flow, encoder=(
        FlatEncoder(num_rows=task.num_obs) if encoder == "flat" else encoder))
    guide.setup(setup_key, _design_fn, task.num_obs)
    spent = simulation_budget(budget_key, guide.problem.simulator(), budget)
    num_train = int(spent.train.latents.shape[0])
    batch = min(batch_size, num_train)
    epoch = max(1, num_train // batch)
    start = time.perf_counter()
    result = fit(fit_key, guide, num_steps=epochs * epoch, batch_size=batch, chunk_size=epoch,
                 progress=False, max_seconds=max_seconds, simulate=from_budget(spent.train),
                 early_stopping=EarlyStopping(held_out=spent.held_out,
                                              patience=patience or epochs))
    info = {"seconds": time.perf_counter() - start, "steps": int(result.losses.shape[0]),
            "epochs": float(result.losses.shape[0] / epoch), "batch_size": batch,
            "reason": result.reason, "best_step": int(result.validation.best_step),
            "best_held_out_loss": float(result.validation.best_loss)}
    return guide, result.params, info


def laplace_posterior(problem, arguments, mask, num_steps: int = 20):
    """The Laplace approximation of one data set (``arguments`` with a leading axis of 1): Newton
    steps on the model's unconstrained log joint from the prior's median, a Gaussian over the
    flat latents there. The method with no network at all."""
    one = {k: v[0] if isinstance(v, jax.Array) else v for k, v in arguments.items()}
    fit_ = newton_laplace(lambda u: problem.log_density(u, one, mask[0]), problem.latent_anchor,
                          num_steps=num_steps)
    return dist.MultivariateNormal(fit_.loc, scale_tril=fit_.scale_tril)


def draws_of(key, problem, arguments, mask, posterior, num_draws: int,
             num_proposals: int) -> dict:
    """``q``'s own draws (constrained, ``(num_draws, D)``) and, likelihood-assisted,
    ``num_proposals`` of them weighted by the model's joint density (Pareto-smoothed) and
    ``num_draws`` resampled; ``q`` is any distribution over the flat unconstrained latents."""
    plain_key, proposal_key, resample_key = jax.random.split(key, 3)
    constrain = jax.vmap(problem.sites.constrain)
    start = time.perf_counter()
    plain = jax.block_until_ready(constrain(posterior.sample(plain_key, (num_draws,)))["theta"])
    plain_seconds = time.perf_counter() - start
    start = time.perf_counter()
    proposals = posterior.sample(proposal_key, (num_proposals,))
    log_weights = (log_importance_weights(problem, arguments, mask, proposals[None])[0]
                   - posterior.log_prob(proposals))
    # A non-finite q density counts as a zero weight (as in `importance_weights`).
    psis = psis_diagnose(jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights))
    index = importance_resample(resample_key, psis.log_weights, num_draws)
    assisted = jax.block_until_ready(constrain(proposals[index])["theta"])
    return {"plain": {"draws": plain, "seconds": plain_seconds},
            "psis": {"draws": assisted, "seconds": time.perf_counter() - start,
                     "khat": float(psis.khat), "ess": float(psis.ess)}}


def evaluate(key, task, guide, params, index: int, num_draws: int, cache: Path,
             num_proposals: int, variants=VARIANTS) -> dict:
    """C2ST of each of ``variants`` on observation ``index``: the trained guide's draws and
    their PSIS resampling (``amortized``, ``psis``), the same with the untrained guide
    (``untrained``, ``untrained_psis``: the network off), and the Laplace approximation
    (``laplace``, ``laplace_psis``)."""
    _, x = observation(task, index)
    ref = jnp.asarray(reference(task, index, num_draws, cache))
    arguments, mask, _ = guide.prepare(x=x)
    mask = jnp.asarray(mask)
    sources = {"amortized": lambda: guide.get_posterior(params, x=x),
               "untrained": lambda: guide.get_posterior(guide.init_params(), x=x),
               "laplace": lambda: laplace_posterior(guide.problem, arguments, mask)}
    draw_key, c2st_key = jax.random.split(key)
    out = {}
    for number, (source, make) in enumerate(sources.items()):
        names = (source, "psis" if source == "amortized" else f"{source}_psis")
        if not any(name in variants for name in names):
            continue
        # Each source's key is fixed by its place, whatever --variants leaves out.
        got = draws_of(jax.random.fold_in(draw_key, 2 * number), guide.problem, arguments,
                       mask, make(), num_draws, num_proposals)
        for name, part in zip(names, ("plain", "psis")):
            if name not in variants:
                continue
            row = dict(got[part])
            draws = row.pop("draws")
            ok = bool(jnp.all(jnp.isfinite(draws)))
            # Non-finite draws score 1 (told apart always) and are flagged, never dropped.
            accuracy = float(c2st_sbibm(c2st_key, draws, ref)) if ok else 1.0
            out[name] = {"c2st": accuracy, "finite": ok, **row}
    return out


def each_observation(task, num_observations: int, score_fn) -> tuple[list, dict]:
    """``score_fn(i)`` for every observation whose reference passes its checks: the rows, and
    ``{"observations": [...], "reference_failures": [...]}`` naming every observation left out
    and why (a reference that fails its convergence checks is refused, never scored against; the
    other observations are kept). Raises when no observation is left."""
    rows, scored, failed = [], [], []
    for i in range(num_observations):
        try:
            rows.append(score_fn(i))
            scored.append(i)
        except ReferenceCheckError as err:
            failed.append({"observation": i, "error": str(err)})
            print(f"[{task.name}] observation {i} left out: {err}", flush=True)
    if not rows:
        raise ReferenceCheckError(f"{task.name}: no observation has a reference that passes its "
                                  f"checks: {failed}")
    return rows, {"observations": scored, "reference_failures": failed}


def run(key, task, budget: int, args) -> dict:
    guide, params, info = train(key, task, budget, batch_size=args.batch_size,
                                epochs=args.epochs, patience=args.patience,
                                max_seconds=args.max_train_seconds, flow=flow_recipe(args.flow),
                                encoder=args.encoder)
    print(f"[{task.name} {budget}] trained {info['steps']} steps ({info['epochs']:.0f} epochs, "
          f"{info['reason']}) in {info['seconds']:.0f} s", flush=True)
    variants = tuple(args.variants.split(","))
    rows, failures = each_observation(task, args.num_observations, lambda i: evaluate(
        jax.random.fold_in(key, 100 + i), task, guide, params, i, args.num_draws,
        Path(args.cache_dir), args.psis_proposals, variants))
    summary = {"training": info, **failures}
    for variant in variants:
        got = [r[variant] for r in rows]
        values = np.array([g["c2st"] for g in got])
        summary[variant] = {"c2st_mean": float(values.mean()), "c2st_sd": float(values.std()),
                            "c2st": values.tolist(),
                            "seconds_per_observation": float(np.median(
                                [g["seconds"] for g in got])),
                            "all_finite": all(g["finite"] for g in got)}
        if "khat" in got[0]:
            khat = np.array([g["khat"] for g in got])
            summary[variant].update(khat_median=float(np.median(khat)),
                                    khat_max=float(khat.max()),
                                    ess_median=float(np.median([g["ess"] for g in got])))
    print(f"[{task.name} {budget}] C2ST " + ", ".join(
        f"{v} {summary[v]['c2st_mean']:.3f}" for v in variants), flush=True)
    return summary


def _peer_label(peer: dict) -> str:
    environment = peer["environment"]
    if "bayesflow" in environment:
        return "BayesFlow " + environment["bayesflow"]
    return "NPE (sbi " + environment.get("sbi", "") + ")"


def markdown_table(results: dict, peers: tuple[dict, ...] = ()) -> str:
    """One row per (task, budget), one column per variant scored (C2ST mean ± SD over the
    observations), with the PSIS variants' median k-hat, the peers run here (their results
    files) and the published NPE figure."""
    budgets = (1000, 10_000, 100_000)
    rows = [(name, budget, row) for name, per_budget in results["tasks"].items()
            for budget, row in sorted(per_budget.items(), key=lambda kv: int(kv[0]))]
    variants = [v for v in VARIANTS if any(v in row for _, _, row in rows)]
    lines = ["| task | simulations | " + " | ".join(variants + [
        _peer_label(peer) + ", here" for peer in peers])
             + " | sbibm NPE (published) | training s | epochs |",
             "|---|---|" + "---|" * (len(variants) + len(peers) + 3)]
    for name, budget, row in rows:
        published = PUBLISHED_NPE.get(name)
        npe = (f"{published[budgets.index(int(budget))]:.3f}"
               if published and int(budget) in budgets else "")
        cells = []
        for v in variants:
            if v not in row:
                cells.append("")
                continue
            cell = f"{row[v]['c2st_mean']:.3f} ± {row[v]['c2st_sd']:.3f}"
            if "khat_median" in row[v]:
                cell += f" (k̂ {row[v]['khat_median']:.2f})"
            cells.append(cell)
        for peer in peers:
            got = peer.get("tasks", {}).get(name, {}).get(budget)
            cells.append(f"{got['npe']['c2st_mean']:.3f} ± {got['npe']['c2st_sd']:.3f}"
                         if got else "")
        left_out = len(row.get("reference_failures", []))
        label = f"{int(budget):,}" + (f" ({left_out} observation(s) left out)" if left_out else "")
        lines.append(f"| {name} | {label} | " + " | ".join(cells)
                     + f" | {npe} | {row['training']['seconds']:.0f} | "
                     f"{row['training']['epochs']:.0f} |")
    return "\n".join(lines)


def plot(results: dict, path: str | Path, peers: tuple[dict, ...] = ()) -> None:
    """C2ST against simulation budget, one panel per task: each variant of ours scored, sbibm's
    published NPE curve and the peers run here (their results files: sbi's NPE, BayesFlow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["tasks"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        per_budget = results["tasks"][name]
        budgets = sorted(int(b) for b in per_budget)
        for number, variant in enumerate(VARIANTS):
            points = [(b, per_budget[str(b)][variant]["c2st_mean"]) for b in budgets
                      if variant in per_budget[str(b)]]
            if points:  # one colour per variant in every panel, whichever variants it has
                ax.plot(*zip(*points), marker="o", color=f"C{number}",
                        label=variant.replace("_", " + "))
        if name in PUBLISHED_NPE:
            ax.plot((1000, 10_000, 100_000), PUBLISHED_NPE[name], "k--", marker="s",
                    label="NPE (sbibm, published)")
        for peer, style in zip(peers, ("k-", "k:")):
            if name in peer.get("tasks", {}):
                points = sorted((int(b), row["npe"]["c2st_mean"])
                                for b, row in peer["tasks"][name].items())
                ax.plot(*zip(*points), style, marker="^", label=_peer_label(peer) + ", here")
        ax.axhline(0.5, color="grey", lw=0.8)
        ax.set(xscale="log", ylim=(0.45, 1.02), xlabel="simulations", ylabel="C2ST",
               title=name)
    # One legend for every line any panel drew (a panel may lack some variants or peers).
    labelled = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labelled.setdefault(label, handle)
    fig.legend(labelled.values(), labelled.keys(), fontsize=7, loc="center right")
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    parser.add_argument("--epochs", type=int, default=200,
                        help="passes over the training simulations; the learning rate decays "
                             "to zero over them [200]")
    parser.add_argument("--patience", type=int, default=None,
                        help="stop after this many epochs without a better held-out loss "
                             "[none: train every epoch, keep the best]")
    parser.add_argument("--max-train-seconds", type=float, default=1800.0,
                        help="training time per task and budget at most [1800]")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"what of ours to score, comma-separated [{','.join(VARIANTS)}]")
    parser.add_argument("--flow", default="",
                        help="our guide's Flow settings, NAME=VALUE,... (e.g. num_layers=8,"
                             "depth=2) [Flow()'s defaults]")
    parser.add_argument("--encoder", choices=("set", "flat"), default="flat",
                        help="our guide's encoder: an MLP on the concatenated rows "
                             "(FlatEncoder), or the Set Transformer over rows [flat]")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / out))
    parser.add_argument("--cache-dir", default=str(CACHE),
                        help="where reference draws are cached [benchmarks/.cache/sbibm]")
    parser.add_argument("--merge", action="store_true",
                        help="keep the (task, budget) parts already in --out")
    return parser


def parts(parser: argparse.ArgumentParser, args) -> tuple[list, list[int]]:
    """The tasks and budgets asked for (the other options checked), or a parser error naming
    the bad one."""
    try:
        tasks = [get_task(name) for name in args.tasks.split(",") if name]
        budgets = [int(b) for b in args.budgets.split(",") if b]
    except ValueError as err:
        parser.error(str(err))
    try:
        flow_recipe(args.flow)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if unknown or not args.variants:
        parser.error(f"--variants: unknown {unknown}; expected some of {', '.join(VARIANTS)}.")
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
    parser.add_argument("--plot", metavar="RESULTS_JSON",
                        help="draw a results file (next to it, as .png) and exit")
    parser.add_argument("--peer", metavar="PEER_JSON", action="append", default=[],
                        help="with --table or --plot: a peer's results file (sbi's NPE, "
                             "BayesFlow), repeatable")
    args = parser.parse_args(argv)
    peers = tuple(json.loads(Path(p).read_text()) for p in args.peer)
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text()), peers))
        return {}
    if args.plot:
        path = Path(args.plot).with_suffix(".png")
        plot(json.loads(Path(args.plot).read_text()), path, peers)
        print(f"figure: {path}")
        return {}
    tasks, budgets = parts(parser, args)
    command = "python benchmarks/bench_sbibm.py " + " ".join(argv or sys.argv[1:])
    results = {"device": str(jax.devices()[0]),
               "environment": {"python": platform.python_version(), "jax": jax.__version__,
                               "numpyro": numpyro.__version__, "cpu_count": os.cpu_count(),
                               "load_average_at_start": list(os.getloadavg())},
               "settings": {k: getattr(args, k) for k in (
                   "num_observations", "num_draws", "psis_proposals", "batch_size", "epochs",
                   "patience", "max_train_seconds", "flow", "encoder")}}
    return run_parts(args, results, command, tasks, budgets,
                     lambda key, task, budget: run(key, task, budget, args))


if __name__ == "__main__":
    main()
