"""The demo: train an amortized guide on linear regression and check it against exact answers.

Trains ``AutoAmortizedMultivariateNormal`` on Bayesian linear regression (d = 8, N from 10 to 200),
then evaluates it on held-out data sets: against the closed-form posterior on 100 of them (known
noise), against blackjax NUTS on a few, with calibration of credible intervals against the true
parameters, timing per data set (amortized vs NUTS), plots and an ArviZ summary in a folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers

from amortized_ppl._checks import check_output_dir
from amortized_ppl._cli_defaults import DemoConfig
from amortized_ppl.checkpoint import load_guide, load_meta, save_params
from amortized_ppl.diagnose import DiagnoseConfig, run_diagnose
from amortized_ppl.diagnostics import accuracy_report, flatten_draws, summary, to_inference_data
from amortized_ppl.guides import AutoAmortizedMultivariateNormal
from amortized_ppl.reference import flatten_samples, reference_posterior
from amortized_ppl.train import fit

__all__ = ["DemoConfig", "load_demo", "run_demo", "simulate_datasets"]


def simulate_datasets(key, model, design_fn, num_datasets, num_obs, num_features):
    """Simulate held-out data sets of random sizes, padded to the largest size.

    Returns:
        ``(x (B, N_max, d), y (B, N_max), mask (B, N_max), truth {site: (B, ...)}, sizes (B,))``.
    """
    low, high = num_obs
    size_key, key = jax.random.split(key)
    sizes = np.asarray(jax.random.randint(size_key, (num_datasets,), low, high + 1))

    def one(k):
        (x,), _ = design_fn(k, high, num_features)
        trace = handlers.trace(handlers.seed(model, jax.random.fold_in(k, 1))).get_trace(x)
        latents = {n: s["value"] for n, s in trace.items() if s["type"] == "sample" and n != "y"}
        return x, trace["y"]["value"], latents

    x, y, truth = jax.vmap(one)(jax.random.split(key, num_datasets))
    mask = jnp.arange(high)[None, :] < sizes[:, None]
    return x, y, mask, truth, sizes


def _site_order(guide):
    return list(guide.problem.sites.names)


def _log(progress, *parts):
    if progress:
        print(*parts, flush=True)


def run_demo(config: DemoConfig = DemoConfig()) -> dict:
    """Run the demo and return its results (also written to ``config.out``)."""
    from amortized_ppl.models import linear_regression as lr

    config = config.checked()
    out = check_output_dir(config.out)
    model = lr.model_known_noise if config.noise == "known" else lr.model
    design = lambda k, n, d=config.num_features: lr.design_fn(k, n, d)  # noqa: E731
    key = jax.random.key(config.seed)
    train_key, test_key, draw_key, nuts_key = jax.random.split(key, 4)

    guide = AutoAmortizedMultivariateNormal(model, newton_steps=config.newton_steps)
    _log(config.progress, f"Training {type(guide).__name__} ({config.loss} loss, up to "
         f"{config.num_steps} steps or {config.train_seconds:.0f} s)...")
    result = fit(
        train_key, guide, design_fn=design, num_obs=config.num_obs, loss=config.loss,
        num_steps=config.num_steps, batch_size=config.batch_size, progress=config.progress,
        max_seconds=config.train_seconds,
    )
    if result.reason == "interrupt":
        # An interrupted demo is not a result: nothing is saved, an earlier run's files stay.
        _log(config.progress, f"Training interrupted; nothing written to {out}/.")
        raise KeyboardInterrupt
    save_params(out / "checkpoint", guide, result.params, metadata={"config": config._asdict()})

    x, y, mask, truth, sizes = simulate_datasets(
        test_key, model, design, config.num_test, config.num_obs, config.num_features
    )
    names = _site_order(guide)
    # Amortized posteriors for all held-out data sets in one call (first call compiles).
    guide.sample_posterior(draw_key, result.params, x, y, data_mask=mask,
                           sample_shape=(config.num_draws,))
    start = time.perf_counter()
    draws = guide.sample_posterior(draw_key, result.params, x, y, data_mask=mask,
                                   sample_shape=(config.num_draws,))
    jax.block_until_ready(draws)
    batch_seconds = (time.perf_counter() - start) / config.num_test
    flat = flatten_draws(draws, names, batch_ndim=1)  # (B, S, D)
    true_flat = flatten_draws({k: v[:, None] for k, v in truth.items()}, names, batch_ndim=1)[:, 0]

    results = {"config": config._asdict(), "train_seconds": result.seconds,
               "train_steps": int(result.losses.shape[0]),
               "final_loss": float(np.mean(result.losses[-50:])),
               "amortized_seconds_per_dataset_batched": batch_seconds}

    if config.noise == "known":
        exact = [lr.exact_posterior(x[i, : sizes[i]], y[i, : sizes[i]]) for i in range(config.num_test)]
        ref_mean = jnp.stack([e.mean for e in exact])
        ref_sd = jnp.sqrt(jnp.stack([jnp.diag(e.cov) for e in exact]))
        report = accuracy_report(flat, ref_mean, ref_sd, truth=true_flat, level=0.9)
        results["vs_closed_form"] = report.to_dict()
    else:
        report = accuracy_report(flat, jnp.mean(flat, 1), jnp.std(flat, 1), truth=true_flat)
        results["coverage_vs_truth"] = report.to_dict()["coverage"]

    levels = np.linspace(0.1, 0.9, 9)
    coverage_curve = []
    for level in levels:
        lo = jnp.quantile(flat, (1 - level) / 2, axis=1)
        hi = jnp.quantile(flat, (1 + level) / 2, axis=1)
        coverage_curve.append(float(jnp.mean((true_flat >= lo) & (true_flat <= hi))))
    results["coverage_curve"] = {f"{lv:.1f}": c for lv, c in zip(levels, coverage_curve)}

    # NUTS on a few data sets: accuracy of the guide against it and time per data set.
    nuts_rows, nuts_times, single_times = [], [], []
    for i in range(config.num_nuts):
        xi, yi = x[i, : sizes[i]], y[i, : sizes[i]]
        reference_posterior(nuts_key, model, xi, yi)  # compile for this shape (not timed)
        start = time.perf_counter()
        ref = reference_posterior(jax.random.fold_in(nuts_key, i), model, xi, yi)
        nuts_times.append(time.perf_counter() - start)
        guide.sample_posterior(draw_key, result.params, xi, yi, sample_shape=(config.num_draws,))
        start = time.perf_counter()
        one = guide.sample_posterior(draw_key, result.params, xi, yi,
                                     sample_shape=(config.num_draws,))
        jax.block_until_ready(one)
        single_times.append(time.perf_counter() - start)
        ref_flat = flatten_draws(flatten_samples(ref.samples), names)
        guide_flat = flatten_draws(one, names)
        rep = accuracy_report(guide_flat, jnp.mean(ref_flat, 0), jnp.std(ref_flat, 0))
        nuts_rows.append({"n": int(sizes[i]), "max_rhat": float(max(np.max(v) for v in ref.rhat.values())),
                          **rep.to_dict()})
        if i == 0:
            ref_for_plot, guide_for_plot = ref_flat, guide_flat
            _write_arviz_summary(out, one, ref)
        _log(config.progress, f"  NUTS data set {i + 1}/{config.num_nuts}: N={int(sizes[i])}, "
             f"{nuts_times[-1]:.2f} s")
    results["vs_nuts"] = {
        "median_mean_error": float(np.median([r["median_mean_error"] for r in nuts_rows])),
        "fraction_sd_ratio_ok": float(np.mean([r["fraction_sd_ratio_ok"] for r in nuts_rows])),
        "median_sd_ratio": float(np.median([r["median_sd_ratio"] for r in nuts_rows])),
        "per_dataset": nuts_rows,
    }
    results["nuts_seconds_per_dataset"] = float(np.median(nuts_times))
    results["amortized_seconds_single"] = float(np.median(single_times))
    results["speedup_single"] = results["nuts_seconds_per_dataset"] / results["amortized_seconds_single"]
    results["speedup_batched"] = results["nuts_seconds_per_dataset"] / batch_seconds

    _plots(out, names, flat, true_flat, levels, coverage_curve, ref_for_plot, guide_for_plot,
           result.losses)
    if config.diagnose:
        diagnose_config = DiagnoseConfig(
            num_sbc=config.num_sbc, num_in=config.num_test, num_ood=config.num_ood,
            num_reference=min(3, config.num_nuts), progress=config.progress,
        )
        exact_fn = _exact_fn(lr) if config.noise == "known" else None
        report = run_diagnose(guide, result.params, design_fn=design, num_obs=config.num_obs,
                              out=out / "diagnose", config=diagnose_config, exact_fn=exact_fn)
        results["trust"] = trust_summary(report)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    if config.progress:
        print(format_table(results))
        print(f"Wrote results, plots, ArviZ summary and a checkpoint to {out}/")
    return results


def _exact_fn(lr):
    def exact(data):
        post = lr.exact_posterior(data["x"], data["y"])
        return post.mean, jnp.sqrt(jnp.diag(post.cov))

    return exact


def trust_summary(report: dict) -> dict:
    """Headline figures of a diagnose report."""
    groups = {name: g["summary"] for name, g in report["groups"].items()}
    return {
        "sbc_p_value": report["sbc"]["p_value"],
        "sbc_broken_p_values": {k: v["p_value"] for k, v in report["sbc_broken"].items()},
        "calibration_suite_seconds": report["calibration_suite_seconds"],
        "groups": groups,
    }


def load_demo(run_dir: str | Path):
    """Rebuild the demo's guide from its run folder: ``(guide, params, config, design, exact_fn)``."""
    from amortized_ppl.models import linear_regression as lr

    checkpoint = Path(run_dir) / "checkpoint"
    if not checkpoint.is_dir():
        raise FileNotFoundError(
            f"No demo checkpoint at {checkpoint}; run `amortized-ppl demo --out {run_dir}` first."
        )
    metadata = load_meta(checkpoint)["metadata"]
    saved = metadata.get("config") if isinstance(metadata, dict) else None
    if not isinstance(saved, dict):
        raise ValueError(
            f"{checkpoint} was not written by the demo (its metadata has no demo 'config'); "
            "`diagnose` rebuilds the demo's guide from it. For a guide saved with save_params, "
            "call amortized_ppl.diagnose.run_diagnose from Python."
        )
    try:
        saved["num_obs"] = tuple(saved["num_obs"])
        config = DemoConfig(**{k: v for k, v in saved.items() if k in DemoConfig._fields}).checked()
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{checkpoint}: the demo settings in meta.json are damaged ({error}).") \
            from None
    model = lr.model_known_noise if config.noise == "known" else lr.model
    design = lambda k, n, d=config.num_features: lr.design_fn(k, n, d)  # noqa: E731
    guide, params = load_guide(checkpoint, model, design_fn=design)
    exact_fn = _exact_fn(lr) if config.noise == "known" else None
    return guide, params, config, design, exact_fn


def _write_arviz_summary(out: Path, guide_draws, ref):
    import arviz as az

    idata = to_inference_data(guide_draws)
    # Independent draws: R-hat and ESS say nothing here, so only the statistics.
    (out / "arviz_summary_amortized.txt").write_text(summary(idata).to_string())
    (out / "arviz_summary_nuts.txt").write_text(az.summary(ref.inference_data).to_string())


def _plots(out, names, flat, true_flat, levels, coverage_curve, ref_flat, guide_flat, losses):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    mean, sd = np.mean(flat, 1), np.std(flat, 1)
    axes[0].errorbar(np.ravel(true_flat), np.ravel(mean), yerr=1.645 * np.ravel(sd), fmt=".",
                     alpha=0.4)
    lim = [float(np.min(true_flat)), float(np.max(true_flat))]
    axes[0].plot(lim, lim, "k--", lw=1)
    axes[0].set(xlabel="true value", ylabel="posterior mean (90% interval)",
                title="Recovery on held-out data sets")
    axes[1].plot(levels, coverage_curve, "o-", label="amortized")
    axes[1].plot([0, 1], [0, 1], "k--", lw=1, label="ideal")
    axes[1].set(xlabel="credible level", ylabel="empirical coverage", title="Calibration")
    axes[1].legend()
    axes[2].plot(np.asarray(losses))
    axes[2].set(xlabel="step", ylabel="loss", title="Training loss")
    fig.tight_layout()
    fig.savefig(out / "calibration.png", dpi=100)
    plt.close(fig)

    d = ref_flat.shape[-1]
    fig, axes = plt.subplots(1, d, figsize=(2.2 * d, 2.4))
    for j in range(d):
        axes[j].hist(np.asarray(ref_flat[:, j]), bins=40, density=True, alpha=0.5, label="NUTS")
        axes[j].hist(np.asarray(guide_flat[:, j]), bins=40, density=True, alpha=0.5,
                     label="amortized")
        axes[j].set_yticks([])
        axes[j].set_title(f"dim {j}", fontsize=8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "posterior_vs_nuts.png", dpi=100)
    plt.close(fig)


def format_table(results: dict) -> str:
    """A plain-text table of the demo's headline figures."""
    rows = [("training", f"{results['train_steps']} steps, {results['train_seconds']:.0f} s")]
    if "vs_closed_form" in results:
        r = results["vs_closed_form"]
        rows += [
            ("median |mean error| vs exact (SD)", f"{r['median_mean_error']:.3f}"),
            ("SD ratio in [0.8, 1.25]", f"{100 * r['fraction_sd_ratio_ok']:.1f}% of dims"),
            ("median SD ratio vs exact", f"{r['median_sd_ratio']:.3f}"),
            ("90% interval coverage of truth", f"{100 * r['coverage']:.1f}%"),
        ]
    else:
        rows += [("90% interval coverage of truth", f"{100 * results['coverage_vs_truth']:.1f}%")]
    n = results["vs_nuts"]
    rows += [
        ("median |mean error| vs NUTS (SD)", f"{n['median_mean_error']:.3f}"),
        ("SD ratio in [0.8, 1.25] vs NUTS", f"{100 * n['fraction_sd_ratio_ok']:.1f}% of dims"),
        ("NUTS, s per data set (warm)", f"{results['nuts_seconds_per_dataset']:.3f}"),
        ("amortized, s per data set (single)", f"{results['amortized_seconds_single']:.5f}"),
        ("amortized, s per data set (batched)", f"{results['amortized_seconds_per_dataset_batched']:.6f}"),
        ("speed-up single / batched", f"{results['speedup_single']:.0f}x / {results['speedup_batched']:.0f}x"),
    ]
    if "trust" in results:
        t = results["trust"]
        broken = ", ".join(f"{v:.2g}" for v in t["sbc_broken_p_values"].values())
        rows += [("SBC p-value (broken copies)", f"{t['sbc_p_value']:.3g} ({broken})")]
        for name, g in t["groups"].items():
            rows += [(f"{name}: k-hat>0.7 or OOD / amortized path",
                      f"{100 * g['fraction_khat_or_ood']:.0f}% / "
                      f"{100 * g['fraction_amortized_path']:.0f}%"),
                     (f"{name}: final worst mean error (SD)",
                      f"{g['final_max_mean_error_worst']:.3f}")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
