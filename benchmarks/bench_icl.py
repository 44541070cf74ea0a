"""In-context learners in the implicit and explicit regimes on d = 1 linear regression, and
prequential code length.

Section ``table`` (the comparison of Mittal et al. 2024, their table for d = 1 linear tasks with
noise 0): each learner trains with Adam on the MSE of fresh tasks (``n ~ U{16..128}`` context
points, as many queries), then its query MSE is measured on ``--eval-tasks`` fresh tasks with
queries in distribution (*iid*), *far* (``0.1 x_q + 3 u``) and *wide* (``3 x_q``). Rows:
implicit, explicit with a Transformer, an MLP or the known linear form as predictor (each with a
linear probe from ``stop_gradient(z)`` to ``w``, probe MSE reported), the exact Bayesian
predictor (posterior mean; noise SD 1e-3 stands in for 0) and the untrained implicit learner.
The parametric rows infer the right model's latents (the zoo's known-noise linear regression,
noise SD 1e-3) with our amortized guide and predict through its likelihood
(:func:`amortized_ppl.icl.parametric_moments`): the network alone, the Laplace-refined guide,
and that guide with its network off (the Laplace fit), each trained for ``--guide-steps``.
The paper's figures are stored beside ours.

Section ``prequential``: on d = 1 linear tasks with noise 0.1, an implicit learner trained on the
Gaussian NLL with contexts down to 0 points, and the exact Bayesian predictor, each code
``--preq-tasks`` data sets of ``--preq-n`` points; the mean cumulative code length against n is
stored for both (for the exact predictor it is the negative log evidence).

Section ``code_length`` (Elmoznino et al. 2024's comparison, on x_dim 3 linear tasks with
``w ~ N(0, I / (d + 1))`` and noise 0.2): prequential code length of ``--code-tasks`` data sets
of ``--code-n`` points under the exact Bayesian predictive (the negative log evidence),
prequential ICL (an implicit learner trained on next-point NLL, contexts from 0 points),
train-risk ICL (the same learner trained to predict points already in its context), the same
learner untrained, and the SGD learner (MLPs of 5 x 64 trained by Adam with early stopping on
each prefix, blocks starting at log-spaced sizes from 5). Mean curves and their areas (the mean
total code length) are stored, with the excess over the exact code at a few n.

Section ``iterative``: on d = 1 linear tasks with noise 0.1, the iterative explicit learner
(bottleneck refined over mini-batches of ``--iter-batch`` points, known linear predictor) and
the one-shot explicit learner with the same predictor both train on contexts of
``--iter-context`` points; query MSE at that length and at ten times it, beside the untrained
iterative learner and the exact Bayesian predictor.

The sizes are CPU-feasible, far below the paper's (their z_dim 256 and long training): the
figures show the ordering, not the paper's precision. Sizes, steps and times are recorded.

Usage::

    nice -n 10 .venv/bin/python benchmarks/bench_icl.py            # default, ~15 min on 2 cores
    nice -n 10 .venv/bin/python benchmarks/bench_icl.py --quick    # smoke run, ~1 min

Writes ``benchmarks/results/icl.json`` and ``icl_prequential.png`` beside it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from amortized_ppl import AutoAmortizedMultivariateNormal, fit  # noqa: E402
from amortized_ppl.correction import without_correction  # noqa: E402
from amortized_ppl.icl import (  # noqa: E402
    ImplicitLearner,
    SGDLearner,
    as_log_predictive,
    bayesian_linear_predictor,
    build_explicit_learner,
    build_iterative_learner,
    evaluate_learner,
    fit_icl,
    linear_regression,
    log_spaced_boundaries,
    parametric_moments,
    prequential_code_length,
    sample_tasks,
    sgd_prequential_code_length,
)
from amortized_ppl.models.linear_regression import model_known_noise  # noqa: E402
from amortized_ppl.results_file import write_results  # noqa: E402

PAPER = {  # Mittal et al. (2024), d = 1 linear, noise 0: MSE iid / far / wide.
    "implicit": (1.9e-4, 3.3e-3, 0.315),
    "explicit_transformer": (3.2e-4, 3.9e-3, 0.368),
    "explicit_mlp": (3.2e-4, 3.8e-3, 0.194),
    "explicit_known": (1.7e-4, 9.0e-4, 8.4e-4),
}
SHIFTS = ("iid", "far", "wide")


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--num-blocks", type=int, default=3)
    parser.add_argument("--z-dim", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--max-context", type=int, default=128)
    parser.add_argument("--eval-tasks", type=int, default=512)
    parser.add_argument("--guide-steps", type=int, default=2000,
                        help="table: training steps of the parametric rows' guides")
    parser.add_argument("--preq-tasks", type=int, default=64)
    parser.add_argument("--preq-n", type=int, default=128)
    parser.add_argument("--preq-noise", type=float, default=0.1)
    parser.add_argument("--code-tasks", type=int, default=16)
    parser.add_argument("--code-n", type=int, default=256)
    parser.add_argument("--sgd-steps", type=int, default=500)
    parser.add_argument("--code-learners", nargs="+", default=["icl", "sgd"],
                        choices=["icl", "sgd"],
                        help="code_length: the ICL learners (trained here), the SGD learner, or "
                             "both; the data sets and the exact code are the same either way")
    parser.add_argument("--iter-context", type=int, default=32)
    parser.add_argument("--iter-batch", type=int, default=8)
    parser.add_argument("--sections", nargs="+", default=["table", "prequential"],
                        choices=["table", "prequential", "code_length", "iterative"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "icl.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.size, args.num_blocks, args.z_dim = 40, 16, 1, 8
        args.max_context, args.eval_tasks, args.preq_tasks, args.preq_n = 32, 64, 8, 32
        args.code_tasks, args.code_n, args.sgd_steps = 2, 24, 20
        args.guide_steps = 30
        args.iter_context, args.iter_batch = 8, 4
    return args


def _evaluate(key, predictor, family, args):
    out = {}
    for shift in SHIFTS:
        metrics = evaluate_learner(
            key,
            predictor,
            family,
            shift=shift,
            num_tasks=args.eval_tasks,
            max_context=args.max_context,
            min_context=16,
        )
        out[shift] = metrics["mse"]
        if shift == "iid":
            out["probe_mse"] = None if np.isnan(metrics["probe_mse"]) else metrics["probe_mse"]
    return out


def _learners(key, args):
    kwargs = dict(size=args.size, num_heads=4, num_blocks=args.num_blocks)
    keys = jax.random.split(key, 4)
    yield "implicit", ImplicitLearner(1, key=keys[0], **kwargs)
    for k, predictor in zip(keys[1:], ("transformer", "mlp", "known")):
        yield (
            f"explicit_{predictor}",
            build_explicit_learner(1, 2, predictor=predictor, z_dim=args.z_dim, key=k, **kwargs),
        )


PARAMETRIC_SIGMA = 1e-3
"""The parametric rows' model noise SD: the noise-free tasks' stand-in, as for the exact row."""


def noise_free_linear(x, y=None):
    """The zoo's known-noise linear regression with the table's noise SD (the right model)."""
    return model_known_noise(x, y, sigma=PARAMETRIC_SIGMA)


def _design(key, num_obs):
    return (jax.random.normal(key, (num_obs, 1)),), {}


def _evaluate_parametric(key, guide, params, family, args) -> dict:
    """Query MSE per shift on the tasks ``_evaluate`` draws (same keys, batches of 64), and the
    posterior mean's MSE to the true latent (the parametric regime's probe)."""
    out = {}
    num_batches = -(-args.eval_tasks // 64)
    for shift in SHIFTS:
        mse, probe = [], []
        for k in jax.random.split(key, num_batches):
            batch = sample_tasks(k, family, 64, max_context=args.max_context, min_context=16,
                                 shift=shift)
            mean, _ = parametric_moments(jax.random.fold_in(k, 1), guide, params,
                                         batch.context_x, batch.context_y, batch.context_mask,
                                         batch.query_x)
            mask = np.asarray(batch.query_mask)
            mse.append(np.sum(np.where(mask, (np.asarray(mean) - batch.query_y) ** 2, 0.0))
                       / mask.sum())
            if shift == "iid":
                draws = guide.sample_posterior(jax.random.fold_in(k, 2), params,
                                               x=batch.context_x, y=batch.context_y,
                                               data_mask=batch.context_mask, sample_shape=(64,))
                w = np.concatenate([np.asarray(draws["w"]).mean(1),
                                    np.asarray(draws["b"]).mean(1)[:, None]], axis=1)
                probe.append(np.mean((w - np.asarray(batch.latent)) ** 2))
        out[shift] = float(np.mean(mse))
        if probe:
            out["probe_mse"] = float(np.mean(probe))
    return out


def parametric_rows(eval_key, family, args) -> dict:
    """Our guides on the right model, predicting through its likelihood: the network alone, the
    Laplace-refined guide (network on) and the same guide with the network off (the Laplace fit,
    exact for this linear-Gaussian model), all trained and evaluated in this run."""
    rows = {}
    for name, newton_steps in (("parametric_network", 0), ("parametric_refined", 8)):
        guide = AutoAmortizedMultivariateNormal(noise_free_linear, newton_steps=newton_steps)
        result = fit(jax.random.key(5), guide, design_fn=_design,
                     num_obs=(16, args.max_context), num_steps=args.guide_steps,
                     batch_size=64, progress=False)
        row = _evaluate_parametric(eval_key, guide, result.params, family, args)
        row["train_seconds"] = result.seconds
        rows[name] = row
        print(name, row, flush=True)
        if newton_steps:
            engine = without_correction(guide.engine(result.params))
            params = {guide.param_name: eqx.filter(engine, eqx.is_inexact_array)}
            rows["parametric_laplace"] = _evaluate_parametric(eval_key, guide, params, family,
                                                              args)
            print("parametric_laplace", rows["parametric_laplace"], flush=True)
    return rows


def table(args) -> dict:
    family = linear_regression(1, noise_scale=0.0)
    eval_key = jax.random.key(100)
    rows = {}
    exact = bayesian_linear_predictor(1e-3, return_moments=True)
    rows["exact_bayes"] = _evaluate(eval_key, exact, family, args)
    print("exact_bayes", rows["exact_bayes"], flush=True)
    for name, learner in _learners(jax.random.key(0), args):
        if name == "implicit":
            rows["untrained"] = _evaluate(eval_key, learner, family, args)
            print("untrained", rows["untrained"], flush=True)
        fit = fit_icl(
            jax.random.key(1),
            learner,
            family,
            num_steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            max_context=args.max_context,
            min_context=16,
            objective="mse",
            chunk_size=50,
        )
        row = _evaluate(eval_key, fit.learner, family, args)
        row["train_seconds"] = fit.seconds
        row["final_train_mse"] = float(np.mean(fit.infos.mse[-50:]))
        if name in PAPER:
            row["paper"] = dict(zip(SHIFTS, PAPER[name]))
        rows[name] = row
        print(name, row, flush=True)
    rows.update(parametric_rows(eval_key, family, args))
    return rows


def prequential(args) -> dict:
    family = linear_regression(1, noise_scale=args.preq_noise)
    learner = ImplicitLearner(
        1, size=args.size, num_heads=4, num_blocks=args.num_blocks, key=jax.random.key(2)
    )
    fit = fit_icl(
        jax.random.key(3),
        learner,
        family,
        num_steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_context=args.preq_n,
        min_context=0,
        objective="nll",
        chunk_size=50,
    )
    data = sample_tasks(
        jax.random.key(4), family, args.preq_tasks, max_context=args.preq_n, min_context=args.preq_n
    )
    predictors = {
        "exact_bayes": bayesian_linear_predictor(args.preq_noise),
        "implicit": as_log_predictive(fit.learner),
    }
    out = {
        "train_seconds": fit.seconds,
        "noise_scale": args.preq_noise,
        "n": args.preq_n,
        "num_tasks": args.preq_tasks,
    }
    for name, predictor in predictors.items():
        code = jax.jit(jax.vmap(lambda x, y, p=predictor: prequential_code_length(p, x, y)))
        result = code(data.context_x, data.context_y)
        curve = np.asarray(result.curve_nats).mean(0)
        out[name] = {
            "mean_total_nats": float(curve[-1]),
            "mean_total_bits": float(np.asarray(result.total_bits).mean()),
            "mean_curve_nats": curve.round(4).tolist(),
        }
        print(name, "prequential nats", curve[-1], flush=True)
    gap = np.array(out["implicit"]["mean_curve_nats"]) - np.array(
        out["exact_bayes"]["mean_curve_nats"]
    )
    out["excess_nats_at"] = {
        str(n): float(gap[n - 1]) for n in (1, 4, 16, 64, args.preq_n) if n <= args.preq_n
    }
    return out


def _mean_code(predictor, data) -> np.ndarray:
    code = jax.jit(jax.vmap(lambda x, y: prequential_code_length(predictor, x, y)))
    return np.asarray(code(data.context_x, data.context_y).per_point_nats).mean(0)


def code_length(args) -> dict:
    """Prequential code length: exact Bayes, prequential and train-risk ICL, untrained, SGD."""
    x_dim, noise = 3, 0.2
    prior = 1.0 / np.sqrt(x_dim + 1)
    family = linear_regression(x_dim, noise_scale=noise, prior_scale=prior)
    data = sample_tasks(jax.random.key(14), family, args.code_tasks, max_context=args.code_n,
                        min_context=args.code_n)
    learner = ImplicitLearner(x_dim, size=args.size, num_heads=4, num_blocks=args.num_blocks,
                              key=jax.random.key(12))
    per_point = {"exact_bayes": _mean_code(bayesian_linear_predictor(noise, prior_scale=prior),
                                           data)}
    out = {"x_dim": x_dim, "noise_scale": noise, "prior_scale": float(prior), "n": args.code_n,
           "num_tasks": args.code_tasks, "train_seconds": {}}
    icl = (("prequential_icl", "nll"), ("train_risk_icl", "train_risk"))
    if "icl" in args.code_learners:
        per_point["untrained_icl"] = _mean_code(as_log_predictive(learner), data)
    for name, objective in icl if "icl" in args.code_learners else ():
        fit = fit_icl(jax.random.key(13), learner, family, num_steps=args.steps,
                      batch_size=args.batch_size, learning_rate=args.learning_rate,
                      max_context=args.code_n, min_context=0, objective=objective,
                      chunk_size=50)
        out["train_seconds"][name] = fit.seconds
        per_point[name] = _mean_code(as_log_predictive(fit.learner), data)
        print(name, "trained in", round(fit.seconds), "s", flush=True)
    if "sgd" in args.code_learners:
        settings = SGDLearner(num_steps=args.sgd_steps)
        boundaries = log_spaced_boundaries(args.code_n, first=5)
        start = time.perf_counter()
        sgd = [np.asarray(sgd_prequential_code_length(
            jax.random.fold_in(jax.random.key(15), i), data.context_x[i], data.context_y[i],
            boundaries, settings).per_point_nats) for i in range(args.code_tasks)]
        per_point["sgd_mlp"] = np.mean(sgd, axis=0)
        out["sgd"] = {"settings": settings._asdict(), "boundaries": boundaries.tolist(),
                      "seconds": time.perf_counter() - start}
    exact_curve = np.cumsum(per_point["exact_bayes"])
    for name, code in per_point.items():
        curve = np.cumsum(code)
        out[name] = {"mean_total_nats": float(curve[-1]),
                     "mean_total_bits": float(curve[-1] / np.log(2.0)),
                     "mean_curve_nats": curve.round(4).tolist(),
                     "excess_nats_at": {str(n): float(curve[n - 1] - exact_curve[n - 1])
                                        for n in (1, 5, 16, 64, args.code_n)
                                        if n <= args.code_n}}
        print(name, "code length", round(float(curve[-1]), 2), "nats", flush=True)
    return out


def iterative(args) -> dict:
    """Query MSE at the trained context length and at ten times it."""
    noise = 0.1
    family = linear_regression(1, noise_scale=noise)
    lengths = (args.iter_context, 10 * args.iter_context)
    kwargs = dict(z_dim=args.z_dim, size=args.size, num_blocks=args.num_blocks)
    learners = {
        "iterative": build_iterative_learner(1, 2, predictor="known", batch_size=args.iter_batch,
                                             key=jax.random.key(20), **kwargs),
        "one_shot": build_explicit_learner(1, 2, predictor="known", key=jax.random.key(21),
                                           **kwargs),
    }
    rows = {"untrained_iterative": learners["iterative"],
            "exact_bayes": bayesian_linear_predictor(noise, return_moments=True)}
    out = {"noise_scale": noise, "lengths": list(lengths), "batch": args.iter_batch,
           "train_seconds": {}}
    for name, learner in learners.items():
        fit = fit_icl(jax.random.key(22), learner, family, num_steps=args.steps,
                      batch_size=args.batch_size, learning_rate=args.learning_rate,
                      max_context=args.iter_context, min_context=1, objective="mse",
                      chunk_size=50)
        out["train_seconds"][name] = fit.seconds
        rows[name] = fit.learner
    for name, predictor in rows.items():
        out[name] = {str(n): evaluate_learner(jax.random.key(23), predictor, family,
                                              num_tasks=args.eval_tasks, batch_size=32,
                                              max_context=n, min_context=n)["mse"]
                     for n in lengths}
        print(name, out[name], flush=True)
    return out


def _plot_code(out, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    exact = np.array(out["exact_bayes"]["mean_curve_nats"])
    n = np.arange(1, exact.size + 1)
    for name in ("prequential_icl", "train_risk_icl", "sgd_mlp", "untrained_icl"):
        if name not in out:
            continue
        ax.plot(n, np.array(out[name]["mean_curve_nats"]) - exact,
                label=f"{name} (area {out[name]['mean_total_nats']:.0f} nats)")
    ax.set_xscale("log")
    ax.set_yscale("symlog")
    ax.set_xlabel("n (points coded)")
    ax.set_ylabel("code length - exact Bayes (nats)")
    ax.set_title(f"prequential code, x_dim {out['x_dim']} linear, noise {out['noise_scale']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot(out, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in ("exact_bayes", "implicit"):
        curve = out[name]["mean_curve_nats"]
        ax.plot(np.arange(1, len(curve) + 1), curve, label=name)
    ax.set_xlabel("n (points coded)")
    ax.set_ylabel("cumulative code length (nats)")
    ax.set_title(f"prequential code, d = 1 linear, noise {out['noise_scale']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    argv_used = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv_used)
    start = time.perf_counter()
    results = {
        "command": " ".join([".venv/bin/python benchmarks/bench_icl.py", *argv_used]),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "device": str(jax.devices()[0]),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
    }
    if "table" in args.sections:
        results["table"] = table(args)
    if "prequential" in args.sections:
        results["prequential"] = prequential(args)
        _plot(
            results["prequential"],
            Path(args.out).with_name(Path(args.out).stem + "_prequential.png"),
        )
    if "code_length" in args.sections:
        results["code_length"] = code_length(args)
        _plot_code(results["code_length"],
                   Path(args.out).with_name(Path(args.out).stem + "_curves.png"))
    if "iterative" in args.sections:
        results["iterative"] = iterative(args)
    results["seconds"] = time.perf_counter() - start
    write_results(args.out, results)
    print("wrote", args.out, f"in {results['seconds']:.0f} s")


if __name__ == "__main__":
    main()
