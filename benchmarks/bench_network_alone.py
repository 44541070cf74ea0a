"""The network alone (no Newton steps): which recipe learns the posterior, on one budget.

Known-noise linear regression (d = 8 plus an intercept, N from 10 to 200), the demo's problem,
whose posterior is known in closed form. Each variant is a one-shot guide without the Laplace
stage, trained with forward KL (neural posterior estimation) on fresh simulations for the same
wall-time budget; the figures are on 100 held-out data sets (N uniform in the range): the median
|posterior-mean error| in exact posterior SDs, the median SD ratio and the share of dimensions
with a ratio in [0.8, 1.25], and the 90% coverage of the true coefficients.

Variants (every one beside the others in one run, one process):

- ``mvn``: today's network-alone guide, a full-rank Normal in the raw unconstrained frame;
- ``mvn_prior_frame``: the same in the prior's standardized frame (``PriorWhitened``);
- ``flow_prior_frame``: a spline flow over that Gaussian, in the same frame;
- ``flow_wide_encoder``, ``flow_wide_deep_encoder``, ``flow_batch_128``, ``flow_lr_3e-4``:
  ``flow_prior_frame`` with one knob of the recipe changed, run by name with ``--variants``: a
  wider encoder and summary (64 for 32: the posterior's sufficient statistics here are 55
  numbers, X'X and X'y, more than a 32-wide pooled summary holds), the same with a second
  attention block, twice the batch, a third of the learning rate;
- ``factors``: the :class:`~amortized_ppl.encoders.PseudoObservations` encoder (each observation a
  Gaussian factor of the latents, summed into the posterior's natural parameters) with the
  :class:`~amortized_ppl.families.GaussianFactors` family (a full-rank Normal correcting the
  Gaussian the factors imply); ``factors_flow``: the same with a spline flow on top;
- ``mvn_prior_frame_bf16``, ``flow_prior_frame_bf16``: those two with the encoder computed in
  bfloat16 (:class:`~amortized_ppl.encoders.MixedPrecision`; on a CPU bfloat16 is emulated and
  slower, so compare them at equal ``--steps`` with a ``--seconds`` that does not bind).

Beside them, in the same run (the rule of the round): Laplace per data set (Newton steps on the
model's density; exact for this model, so its row is the Monte Carlo floor of the metrics) and
each variant untrained (``untrained`` in its entry).

``--steps`` is the length of the learning-rate schedule (cosine decay); a run stopped by the
wall-time budget before it ends has not decayed its rate, so match ``--steps`` to the steps the
budget buys.

    python benchmarks/bench_network_alone.py [--seconds 300] [--steps 10000] [--quick]
        [--out benchmarks/results/network_alone.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl import (
    AutoAmortized,
    Flow,
    MultivariateNormal,
    OneShotPosterior,
    SetEncoder,
    fit,
    inspect_problem,
)
from amortized_ppl.encoders import MixedPrecision, PseudoObservations
from amortized_ppl.families import GaussianFactors, PriorWhitened
from amortized_ppl.laplace import newton_laplace
from amortized_ppl.models.linear_regression import design_fn, exact_posterior, model_known_noise
from amortized_ppl.results_file import write_results

NUM_OBS = (10, 200)


class Variant(NamedTuple):
    family: object
    encoder: object = SetEncoder(summary_size=32)
    batch_size: int = 64
    learning_rate: float = 1e-3


_FLOW = PriorWhitened(Flow(MultivariateNormal()))
VARIANTS = {
    "mvn": Variant(MultivariateNormal()),
    "mvn_prior_frame": Variant(PriorWhitened(MultivariateNormal())),
    "flow_prior_frame": Variant(_FLOW),
    # the recipe's knobs, one at a time from flow_prior_frame
    "flow_wide_encoder": Variant(_FLOW, SetEncoder(summary_size=64, hidden_size=64)),
    "flow_wide_deep_encoder": Variant(_FLOW, SetEncoder(summary_size=64, hidden_size=64,
                                                        num_blocks=2)),
    "flow_batch_128": Variant(_FLOW, batch_size=128),
    "flow_lr_3e-4": Variant(_FLOW, learning_rate=3e-4),
    # pseudo-observations summed into a Gaussian's natural parameters, corrected on top
    "factors": Variant(GaussianFactors(MultivariateNormal()), PseudoObservations()),
    "factors_flow": Variant(GaussianFactors(Flow(MultivariateNormal())), PseudoObservations()),
    # the encoder computed in bfloat16 (parameters, family and loss in float32)
    "mvn_prior_frame_bf16": Variant(PriorWhitened(MultivariateNormal()),
                                    MixedPrecision(SetEncoder(summary_size=32))),
    "flow_prior_frame_bf16": Variant(_FLOW, MixedPrecision(SetEncoder(summary_size=32))),
}


def _held_out(key, problem, num_test):
    sizes = jax.random.randint(jax.random.fold_in(key, 1), (num_test,), NUM_OBS[0],
                               NUM_OBS[1] + 1)
    sim = problem.simulator(None, NUM_OBS)(key, num_test)
    mask = np.arange(NUM_OBS[1])[None, :] < np.asarray(sizes)[:, None]
    return sim, mask


def _evaluate(key, guide, params, sim, mask) -> dict:
    x, y = sim.arguments["x"], sim.arguments["y"]
    draws = guide.sample_posterior(key, params, x, y, data_mask=jnp.asarray(mask),
                                   sample_shape=(2000,))
    flat = np.concatenate([np.asarray(draws["w"]), np.asarray(draws["b"])[..., None]], axis=-1)
    return _score(flat, sim, mask)


def _laplace(key, problem, sim, mask) -> dict:
    """Laplace per data set (Newton steps on the model's density; exact here up to Monte Carlo
    error, so this row is the floor the metrics reach), scored like the variants."""

    def one(arguments, m):
        fit = newton_laplace(lambda u: problem.log_density(u, arguments, m),
                             problem.latent_anchor, num_steps=8)
        return fit.loc, fit.scale_tril

    arguments = {"x": sim.arguments["x"], "y": sim.arguments["y"]}
    locs, trils = jax.vmap(one)(arguments, jnp.asarray(mask))
    noise = jax.random.normal(key, (locs.shape[0], 2000, locs.shape[1]))
    flat = np.asarray(locs[:, None, :] + jnp.einsum("bij,bsj->bsi", trils, noise))
    return _score(flat, sim, mask)  # flat latents are [w, b]: identity transforms


def _score(flat, sim, mask) -> dict:
    x, y = sim.arguments["x"], sim.arguments["y"]
    errors, ratios, covered = [], [], []
    truth = np.concatenate([np.asarray(sim.latents)], axis=-1)  # [w, b]: identity transforms
    for i in range(flat.shape[0]):
        n = int(mask[i].sum())
        post = exact_posterior(x[i, :n], y[i, :n])
        sd = np.sqrt(np.diag(np.asarray(post.cov)))
        errors.append(np.abs(flat[i].mean(0) - np.asarray(post.mean)) / sd)
        ratios.append(flat[i].std(0) / sd)
        lower, upper = np.quantile(flat[i], [0.05, 0.95], axis=0)
        covered.append((lower <= truth[i]) & (truth[i] <= upper))
    errors, ratios, covered = map(np.asarray, (errors, ratios, covered))
    return {
        "median_mean_error_sd": float(np.median(errors)),
        "worst_mean_error_sd": float(np.max(errors)),
        "median_sd_ratio": float(np.median(ratios)),
        "sd_ok": float(np.mean((ratios >= 0.8) & (ratios <= 1.25))),
        "coverage_90": float(np.mean(covered)),
    }


def markdown_table(paths) -> str:
    """Our variants (and, where a file has them, Laplace and the untrained networks) and any
    peer results files, one row each (the README's figures)."""
    rows = ["| variant | median err (SD) | worst err | median SD ratio | SD in [0.8, 1.25] "
            "| 90% cov. | steps | train s |", "|---" * 8 + "|"]

    def row(name, e):
        steps = e.get("steps", "-")
        seconds = f"{e['train_seconds']:.0f}" if "train_seconds" in e else "-"
        return (f"| {name} | {e['median_mean_error_sd']:.2f} | {e['worst_mean_error_sd']:.1f} | "
                f"{e['median_sd_ratio']:.2f} | {e['sd_ok']:.3f} | {e['coverage_90']:.3f} | "
                f"{steps} | {seconds} |")

    for path in paths:
        results = json.loads(Path(path).read_text())
        if "laplace" in results:
            rows.append(row("Laplace per data set (model density)", results["laplace"]))
        entries = results.get("variants") or {f"BayesFlow ({results.get('backend')})": results}
        for name, e in entries.items():
            if "untrained" in e:
                rows.append(row(f"{name}, untrained", e["untrained"]))
            rows.append(row(name, e))
    return "\n".join(rows) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="training budget each")
    parser.add_argument("--steps", type=int, default=10_000,
                        help="optimizer steps each (the learning-rate schedule's length)")
    parser.add_argument("--num-test", type=int, default=100)
    parser.add_argument("--variants", default="mvn,mvn_prior_frame,flow_prior_frame")
    parser.add_argument("--quick", action="store_true", help="30 steps each (a smoke test)")
    parser.add_argument("--out",
                        default=str(Path(__file__).parent / "results" / "network_alone.json"))
    parser.add_argument("--table", metavar="RESULTS_JSON,...",
                        help="print results files (ours, peers') as one markdown table and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(args.table.split(",")), end="")
        return {}
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    problem = inspect_problem(jax.random.key(0), model_known_noise, design_fn, NUM_OBS)
    sim, mask = _held_out(jax.random.key(1), problem, args.num_test)
    results = {
        "command": "python benchmarks/bench_network_alone.py " + " ".join(argv or sys.argv[1:]),
        "device": str(jax.devices()[0]),
        "environment": {"python": platform.python_version(), "jax": jax.__version__},
        "seconds_per_variant": args.seconds,
        "steps_planned": args.steps,
        "variants": {},
        # the rule of the round: the same run scores Laplace per data set (the model's density;
        # exact here, so its row is the Monte Carlo floor) and every variant untrained
        "laplace": _laplace(jax.random.key(5), problem, sim, mask),
    }
    for name in names:
        variant = VARIANTS[name]
        engine = OneShotPosterior(problem, encoder=variant.encoder, family=variant.family,
                                  key=jax.random.key(2))
        guide = AutoAmortized(problem, engine)
        untrained = _evaluate(jax.random.key(4), guide, guide.init_params(), sim, mask)
        start = time.perf_counter()
        result = fit(jax.random.key(3), guide, loss="forward_kl",
                     num_steps=30 if args.quick else args.steps, max_seconds=args.seconds,
                     batch_size=variant.batch_size, learning_rate=variant.learning_rate,
                     progress=False)
        entry = _evaluate(jax.random.key(4), guide, result.params, sim, mask)
        entry.update(steps=int(len(result.losses)), train_seconds=time.perf_counter() - start,
                     reason=result.reason, batch_size=variant.batch_size,
                     learning_rate=variant.learning_rate,
                     encoder=engine.describe()["encoder"], untrained=untrained)
        results["variants"][name] = entry
        print(name, json.dumps(entry), flush=True)
        write_results(args.out, results)  # after every variant: a run that dies keeps its work
    return results


if __name__ == "__main__":
    main()
