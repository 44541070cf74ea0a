"""The diagnose job: can this trained guide be trusted, and where not?

Given a trained guide and its training simulator, it runs the whole trust suite and writes a
report (``diagnostics.json``) and plots to a folder:

1. Simulation-based calibration over many simulated data sets (ECDF bands, rank histograms,
   coverage curves, recovery), and the same test on two deliberately broken copies of the guide
   (posterior SD halved; mean shifted by 0.5 SD), which it must reject.
2. Per-data-set trust without MCMC on three groups of test data sets: in distribution,
   covariates scaled by 10 and heavy outliers (10% of observations moved by 10 SDs): PSIS k-hat
   of the importance weights and the out-of-distribution flag.
3. The trust ladder on every test data set (with posterior predictive checks of its final draws:
   model misfit), and the accuracy of its final posterior against the
   exact posterior (``exact_fn``) or a cold NUTS reference.
4. Distances (moment errors, MMD, C2ST) of the guide to NUTS on a few in-distribution data sets,
   with marginal and pair plots.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl._checks import check_output_dir
from amortized_ppl._cli_defaults import OOD_LEVEL, DiagnoseConfig
from amortized_ppl.data import select_dataset
from amortized_ppl.diagnostics import plots
from amortized_ppl.diagnostics.compare import compare_guide_to_reference
from amortized_ppl.diagnostics.importance import importance_weights
from amortized_ppl.diagnostics.metrics import flatten_draws
from amortized_ppl.diagnostics.ood import fit_ood_detector
from amortized_ppl.diagnostics.sbc import perturb_posterior, sbc
from amortized_ppl.ladder import trust_ladder
from amortized_ppl.reference import flatten_samples, reference_posterior

__all__ = ["DiagnoseConfig", "run_diagnose", "test_groups"]

def _log(progress: bool, *parts) -> None:
    if progress:
        print(*parts, flush=True)


def _scaled_design(design_fn: Callable, factor: float) -> Callable:
    def design(key, num_obs):
        args, kwargs = design_fn(key, num_obs)
        scale = lambda v: v * factor if jnp.issubdtype(jnp.result_type(v), jnp.floating) else v  # noqa: E731
        return tuple(jax.tree.map(scale, tuple(args))), jax.tree.map(scale, dict(kwargs))

    return design


def test_groups(key, guide, design_fn, num_obs, config: DiagnoseConfig) -> dict[str, dict]:
    """Test data sets: in distribution, covariates scaled by 10, heavy outliers.

    Returns:
        group name -> ``{"arguments": ..., "mask": (B, N), "truth": (B, D)}`` (arguments carry
        a leading data-set axis; truth is the flat unconstrained latent).
    """
    in_key, scaled_key, outlier_key = jax.random.split(key, 3)
    problem = guide.problem
    spec = problem.spec
    groups = {}
    batch = problem.simulator(design_fn, num_obs)(in_key, config.num_in)
    groups["in_distribution"] = (batch.arguments, batch.mask, batch.latents)
    # Out-of-distribution data sets at ood_num_obs, within the sizes the guide accepts.
    size = min(config.ood_num_obs, problem.max_obs)
    fixed = (size, size)
    design_fn = design_fn or problem.design_fn
    if spec.covariates:
        scaled = problem.simulator(_scaled_design(design_fn, 10.0), fixed)
        batch = scaled(scaled_key, config.num_ood)
        groups["covariates_x10"] = (batch.arguments, batch.mask, batch.latents)
    batch = problem.simulator(design_fn, fixed)(outlier_key, config.num_ood)
    arguments = dict(batch.arguments)
    num_outliers = max(1, size // 10)
    for arg in spec.observed.values():
        y = arguments[arg]
        spread = jnp.std(y.astype(jnp.float32), axis=1, keepdims=True)
        shift = 10.0 * spread[:, :1]
        if not jnp.issubdtype(y.dtype, jnp.inexact):  # counts stay counts: a rounded outlier
            shift = jnp.ceil(shift).astype(y.dtype)
        arguments[arg] = y.at[:, :num_outliers].add(shift)
    groups["outliers"] = (arguments, batch.mask, batch.latents)
    return {
        name: {"arguments": a, "mask": np.asarray(m), "truth": np.asarray(t)}
        for name, (a, m, t) in groups.items()
    }


def _reference_moments(key, guide, data: dict, exact_fn, config) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and SD ``(D,)`` in the guide's flat constrained order."""
    if exact_fn is not None:
        mean, sd = exact_fn(data)
        return np.asarray(mean), np.asarray(sd)
    ref = reference_posterior(
        key,
        guide.problem.model,
        num_warmup=config.reference_warmup,
        num_samples=config.reference_samples,
        **data,
    )
    flat = flatten_draws(flatten_samples(ref.samples), list(guide.problem.sites.names))
    return np.asarray(flat.mean(0)), np.asarray(flat.std(0))


def run_diagnose(
    guide,
    params,
    *,
    design_fn: Callable | None = None,
    num_obs=None,
    out: str | Path,
    config: DiagnoseConfig = DiagnoseConfig(),
    exact_fn: Callable[[dict], tuple[Any, Any]] | None = None,
) -> dict:
    """Run the trust suite on a trained guide; write ``diagnostics.json`` and plots to ``out``.

    Args:
        guide, params: the trained guide and its parameters.
        design_fn, num_obs: the training simulator's design function and size range (default:
            the problem's own).
        out: output folder (created).
        config: sizes.
        exact_fn: optional ``exact_fn(arguments_of_one_data_set) -> (mean (D,), sd (D,))`` of
            the exact posterior in the guide's flat constrained order; without it, cold NUTS
            runs are the reference.

    Returns:
        The report (also written as JSON).
    """
    config = config.checked()
    out = check_output_dir(out)
    num_obs = guide.problem.num_obs if num_obs is None else num_obs
    names = guide.problem.sites.flat_names
    key = jax.random.key(config.seed)
    sbc_key, ood_key, group_key, ladder_key, ref_key, dist_key = jax.random.split(key, 6)
    report: dict[str, Any] = {"config": config._asdict()}

    # 1. Calibration.
    _log(config.progress, f"SBC over {config.num_sbc} simulated data sets...")
    start = time.perf_counter()
    sbc_kwargs = dict(
        design_fn=design_fn, num_obs=num_obs, num_datasets=config.num_sbc,
        num_draws=config.sbc_draws,
    )
    calibration = sbc(sbc_key, guide, params, **sbc_kwargs)
    report["sbc"] = calibration.to_dict()
    report["calibration_suite_seconds"] = time.perf_counter() - start
    broken = {"sd_halved": dict(sd_factor=0.5), "mean_shift_half_sd": dict(shift_sd=0.5)}
    report["sbc_broken"] = {}
    for label, change in broken.items():
        bad = sbc(
            sbc_key, guide, params,
            posterior_transform=lambda q, change=change: perturb_posterior(q, **change),
            **sbc_kwargs,
        )
        report["sbc_broken"][label] = {"p_value": bad.p_value, "rejects_at_1pct": bad.rejects()}
    _log(config.progress, f"  p-value {calibration.p_value:.3g} (broken copies: " + ", ".join(
        f"{k} {v['p_value']:.2g}" for k, v in report["sbc_broken"].items()) + ")")
    _calibration_plots(out, calibration, names)

    # 2-3. Per-data-set trust and the ladder.
    _log(config.progress, "Fitting the out-of-distribution detector...")
    detector = fit_ood_detector(
        ood_key, guide, params, design_fn=design_fn, num_obs=num_obs,
        num_simulations=config.num_ood_simulations, level=OOD_LEVEL,
    )
    groups = test_groups(group_key, guide, design_fn, num_obs, config)
    report["groups"] = {}
    all_khat, all_paths = [], []
    for g, (name, group) in enumerate(groups.items()):
        _log(config.progress, f"Trust ladder on {name} ({len(group['truth'])} data sets)...")
        amortized_seconds = _time_importance(
            jax.random.fold_in(ladder_key, 100 + g), guide, params, group, config
        )
        result = trust_ladder(
            jax.random.fold_in(ladder_key, g), guide, params, data_mask=group["mask"],
            num_draws=config.num_draws, ood_detector=detector, **group["arguments"],
        )
        all_khat.append(result.khat)
        all_paths.append(result.paths)
        report["groups"][name] = _group_report(
            jax.random.fold_in(ref_key, g), guide, group, result, exact_fn, config
        )
        report["groups"][name]["summary"]["amortized_seconds_per_dataset"] = amortized_seconds
        _log(config.progress, "  " + json.dumps(report["groups"][name]["summary"]))
    fig = plots.plot_khat(np.concatenate(all_khat), paths=np.concatenate(all_paths))
    plots.save_figure(fig, out / "khat.png")

    # 4. Distances to NUTS (num_reference=0 skips them).
    if config.num_reference > 0:
        report["vs_nuts"] = _distances(
            dist_key, guide, params, groups["in_distribution"], config, out
        )
    (out / "diagnostics.json").write_text(json.dumps(report, indent=2, default=float))
    _log(config.progress, f"Wrote diagnostics.json and plots to {out}/")
    return report


def _time_importance(key, guide, params, group, config) -> float:
    """Seconds per data set of draws + importance weights + PSIS for the group, compiled."""
    run = lambda: importance_weights(  # noqa: E731
        key, guide, params, data_mask=group["mask"], num_draws=config.num_draws,
        **group["arguments"],
    )
    jax.block_until_ready(run().psis)  # compiles
    start = time.perf_counter()
    jax.block_until_ready(run().psis)
    return (time.perf_counter() - start) / len(group["truth"])


def _group_report(key, guide, group, result, exact_fn, config) -> dict:
    names = list(guide.problem.sites.names)
    final = np.asarray(flatten_draws(result.samples, names, batch_ndim=1))  # (B, S, D)
    errors, median_errors, ratios = [], [], []
    for b in range(final.shape[0]):
        data = select_dataset(group["arguments"], group["mask"], b, guide.problem.data_arguments)
        mean, sd = _reference_moments(jax.random.fold_in(key, b), guide, data, exact_fn, config)
        error = np.abs(final[b].mean(0) - mean) / sd
        errors.append(np.max(error))
        median_errors.append(np.median(error))
        ratios.append(final[b].std(0) / sd)
    ratios = np.asarray(ratios)
    khat, flagged = result.khat, result.ood_pvalue < 0.01
    amortized = np.isin(result.paths, ("amortized", "corrected"))
    nuts_seconds = [info["seconds"] for info in result.nuts.values()]
    summary = {
        "num_datasets": int(final.shape[0]),
        "fraction_khat_above_0.7": float(np.mean(khat > 0.7)),
        "fraction_ood_flagged": float(np.mean(flagged)),
        "fraction_khat_or_ood": float(np.mean((khat > 0.7) | flagged)),
        "fraction_amortized_path": float(np.mean(amortized)),
        "paths": result.counts(),
        "final_median_mean_error": float(np.median(median_errors)),
        "final_max_mean_error_median": float(np.median(errors)),
        "final_max_mean_error_worst": float(np.max(errors)),
        "final_fraction_max_mean_error_le_0.1": float(np.mean(np.asarray(errors) <= 0.1)),
        "final_sd_ratio_range": [float(ratios.min()), float(ratios.max())],
        "final_fraction_sd_ratio_in_0.9_1.1": float(np.mean((ratios >= 0.9) & (ratios <= 1.1))),
        "reference": "closed form" if exact_fn is not None else "NUTS",
        "ladder_screening_seconds_per_dataset": result.seconds["importance"] / final.shape[0],
        "nuts_seconds_per_dataset_median": float(np.median(nuts_seconds)) if nuts_seconds else None,
        "fraction_ppc_flagged": (None if result.ppc is None
                                 else float(np.mean(result.ppc.flagged))),
    }
    return {
        "summary": summary,
        "khat": [float(k) for k in khat],
        "ood_pvalue": [float(p) for p in result.ood_pvalue],
        "paths": [str(p) for p in result.paths],
        "final_max_mean_error": [float(e) for e in errors],
        "nuts": {str(i): v for i, v in result.nuts.items()},
        "ppc": None if result.ppc is None else result.ppc.to_dict(),
    }


def _distances(key, guide, params, group, config, out) -> dict:
    reports, rows = [], []
    for b in range(config.num_reference):
        data = select_dataset(group["arguments"], group["mask"], b, guide.problem.data_arguments)
        ref = reference_posterior(
            jax.random.fold_in(key, b), guide.problem.model, num_warmup=config.reference_warmup,
            num_samples=config.reference_samples, **data,
        )
        report, guide_flat, ref_flat = compare_guide_to_reference(
            jax.random.fold_in(key, 1000 + b), guide, params, ref, num_draws=config.num_draws,
            **data,
        )
        reports.append(report)
        rows.append({"n": int(group["mask"][b].sum()),
                     "max_rhat": float(max(np.max(v) for v in ref.rhat.values()))})
        if b == 0:
            labels = guide.problem.sites.flat_names
            fig = plots.plot_marginals(guide_flat, ref_flat, names=labels,
                                       labels=("amortized", "NUTS"))
            plots.save_figure(fig, out / "marginals_vs_nuts.png")
            fig = plots.plot_pairs(guide_flat, ref_flat, names=labels,
                                   labels=("amortized", "NUTS"))
            plots.save_figure(fig, out / "pairs_vs_nuts.png")
    stacked = jax.tree.map(lambda *v: jnp.stack(v), *reports)
    return {"summary": stacked.to_dict(), "per_dataset": rows}


def _calibration_plots(out: Path, result, names) -> None:
    band = (result.band.z, result.band.lower, result.band.upper)
    fig = plots.plot_ecdf_difference(result.ranks, result.num_draws, band=band,
                                     p_values=result.p_values, names=names)
    plots.save_figure(fig, out / "sbc_ecdf.png")
    fig = plots.plot_rank_histograms(result.ranks, result.num_draws, names=names)
    plots.save_figure(fig, out / "sbc_ranks.png")
    coverage = np.concatenate([result.coverage, result.joint_coverage[:, None]], axis=1)
    fig = plots.plot_coverage(result.levels, coverage, names=list(names) + ["joint (HPD)"],
                              num_datasets=result.ranks.shape[0])
    plots.save_figure(fig, out / "coverage.png")
    half = 1.645 * result.posterior_sd
    fig = plots.plot_recovery(result.truth, result.posterior_mean,
                              result.posterior_mean - half, result.posterior_mean + half,
                              names=names)
    plots.save_figure(fig, out / "recovery.png")
