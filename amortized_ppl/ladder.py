"""The trust ladder: amortized draws where they can be trusted, NUTS warm-started from them elsewhere.

For each data set the ladder draws from the guide, weighs the draws by the model's joint density
and reads the Pareto k-hat of the weights (and, when a detector is given, the out-of-distribution
p-value of the data set's encoder summary):

1. ``"amortized"``: k-hat <= 0.5 and in distribution: the guide's draws as they are.
2. ``"corrected"``: 0.5 < k-hat <= 0.7: draws resampled by their Pareto-smoothed weights.
3. ``"nuts"``: k-hat > 0.7, or flagged out of distribution: blackjax NUTS, warm-started from the
   guide (initial positions from guide draws, the guide's covariance as the inverse mass matrix,
   so warm-up only tunes the step size). If the warm chains have not converged (R-hat), a cold
   run with full window adaptation replaces them.

The thresholds are those of Vehtari et al. (2024): below 0.5 importance sampling converges quickly,
up to 0.7 it is usable, beyond it not. The result reports the path each data set took and its
diagnostics, so a user sees at a glance which posteriors are amortized and which paid for MCMC.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from amortized_ppl._checks import check_key, list_some
from amortized_ppl._progress import resolve_progress
from amortized_ppl.data import select_dataset
from amortized_ppl.diagnostics.importance import importance_weights, resample_draws
from amortized_ppl.diagnostics.ood import ood_features
from amortized_ppl.diagnostics.ppc import posterior_predictive_check
from amortized_ppl.reference import RHAT_THRESHOLD, get_reference_sampler

__all__ = ["PATHS", "LadderResult", "trust_ladder", "warm_start"]

PATHS = ("amortized", "corrected", "nuts")


class LadderResult(NamedTuple):
    """Final draws and the path each data set took.

    Attributes:
        samples: constrained draws, site -> ``(B, S, *site_shape)`` (``B`` = 1 for one data set).
        paths: ``(B,)`` strings from :data:`PATHS`.
        khat: Pareto k-hat of the guide's importance weights, ``(B,)``.
        ess: importance-sampling effective sample size, ``(B,)``.
        ood_pvalue: out-of-distribution p-value, ``(B,)`` (NaN without a detector).
        nuts: per data set that went to NUTS (by index): R-hat and ESS extremes, divergences,
            whether the warm start was kept or a cold run replaced it, and seconds.
        seconds: ``{"importance": ..., "nuts": ..., "ppc": ...}`` wall times; the first covers
            all data sets at once (one compiled call).
        ppc: posterior predictive checks of the final draws
            (:class:`~amortized_ppl.diagnostics.ppc.PPCResult`): a flagged data set is one the
            model itself does not fit, whatever path its posterior took (None when turned off).
    """

    samples: dict[str, np.ndarray]
    paths: np.ndarray
    khat: np.ndarray
    ess: np.ndarray
    ood_pvalue: np.ndarray
    nuts: dict[int, dict[str, Any]]
    seconds: dict[str, float]
    ppc: Any = None

    def counts(self) -> dict[str, int]:
        """Number of data sets on each path."""
        return {path: int(np.sum(self.paths == path)) for path in PATHS}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "counts": self.counts(),
            "paths": [str(p) for p in self.paths],
            "khat": [float(k) for k in self.khat],
            "ess": [float(e) for e in self.ess],
            "ood_pvalue": [float(p) for p in self.ood_pvalue],
            "nuts": {str(i): info for i, info in self.nuts.items()},
            "seconds": dict(self.seconds),
            "ppc": None if self.ppc is None else self.ppc.to_dict(),
        }


def _ravel_order(sites) -> np.ndarray:
    """``order`` with ``raveled = guide_flat[order]``: blackjax ravels a dict by sorted keys."""
    index = sites.unflatten(jnp.arange(sites.latent_dim, dtype=jnp.float32))
    return np.asarray(ravel_pytree(index)[0]).round().astype(int)


def warm_start(sites, draws, cov, log_weights, num_chains: int):
    """NUTS initial positions and inverse mass matrix for one data set from its guide fit.

    Args:
        sites: the model's latent sites (``problem.sites``).
        draws: flat unconstrained guide draws ``(S, D)``.
        cov: the guide's covariance ``(D, D)`` in its flat order.
        log_weights: the draws' importance log weights ``(S,)``; draws where the model's density
            is zero or not finite are not used as starting points.
        num_chains: chains to start.

    Returns:
        ``(init_params, inverse_mass_matrix)``: a dict site -> ``(num_chains, *shape)`` and the
        ``(D, D)`` matrix in blackjax's order; ``(None, None)`` when fewer than ``num_chains``
        draws have a finite density or the covariance is not finite.
    """
    finite = np.flatnonzero(np.isfinite(np.asarray(log_weights)))
    cov = np.asarray(cov)
    if finite.size < num_chains or not np.all(np.isfinite(cov)):
        return None, None
    # Guide draws are independent, so the first finite ones are a random choice.
    starts = jnp.asarray(np.asarray(draws)[finite[:num_chains]])
    order = _ravel_order(sites)
    return sites.unflatten(starts), jnp.asarray(cov[np.ix_(order, order)])


def _nuts_summary(result) -> dict[str, Any]:
    return {
        "max_rhat": float(max(np.nanmax(v) for v in result.rhat.values())),
        "min_ess": float(min(np.nanmin(v) for v in result.ess.values())),
        "num_divergent": int(result.num_divergent),
    }


def _check_thresholds(khat_correct: float, khat_max: float) -> None:
    if not 0.0 < khat_correct <= khat_max:
        raise ValueError(
            f"khat thresholds: expected 0 < khat_correct <= khat_max, got {khat_correct} and "
            f"{khat_max}."
        )


def trust_ladder(
    key: jax.Array,
    guide,
    params,
    *args,
    num_draws: int = 1000,
    ood_detector=None,
    khat_correct: float = 0.5,
    khat_max: float = 0.7,
    escalate_ood: bool = True,
    num_chains: int = 4,
    num_warmup: int = 100,
    cold_num_warmup: int = 500,
    data_mask=None,
    progress: bool | None = None,
    ppc_level: float | None = 0.05,
    **kwargs,
) -> LadderResult:
    """Posterior draws for each data set, by the cheapest path its diagnostics allow.

    Args:
        key: PRNG key.
        guide, params: a trained amortized guide and its parameters.
        *args, **kwargs: the model's arguments for one data set or a batch (leading axis).
        num_draws: ``S``, final draws per data set; a multiple of ``num_chains``.
        ood_detector: an :class:`~amortized_ppl.diagnostics.ood.OODDetector` (default: the
            guide's ``ood_detector``, if set).
        khat_correct, khat_max: k-hat above ``khat_correct`` resamples by the smoothed weights;
            above ``khat_max`` runs NUTS.
        escalate_ood: send data sets flagged out of distribution to NUTS even when k-hat is low.
        num_chains: NUTS chains.
        num_warmup: step-size warm-up of the warm-started NUTS.
        cold_num_warmup: window-adaptation warm-up of the cold run used when the warm chains
            have not converged (R-hat above 1.01) or no warm start is possible.
        data_mask: mask of real observations, as in ``guide.sample_posterior``.
        progress: show a progress bar over the NUTS runs (default: in a terminal or notebook).
        ppc_level: family-wise level of the posterior predictive checks of the final draws
            (:func:`~amortized_ppl.diagnostics.ppc.posterior_predictive_check`); None skips them.

    Returns:
        A :class:`LadderResult`.

    Warns:
        RuntimeWarning: data sets that fail the posterior predictive checks (model misfit: no
            path of the ladder can repair that; revise the model).
    """
    check_key(key)
    _check_thresholds(float(khat_correct), float(khat_max))
    if int(num_draws) % int(num_chains):
        raise ValueError(
            f"num_draws: expected a multiple of num_chains={num_chains} (NUTS draws are split "
            f"evenly between chains), got {num_draws}."
        )
    weight_key, resample_key, nuts_key = jax.random.split(key, 3)
    start = time.perf_counter()
    weights = importance_weights(
        weight_key, guide, params, *args, num_draws=num_draws, data_mask=data_mask, **kwargs
    )
    corrected = resample_draws(resample_key, weights)
    khat = np.asarray(weights.khat)
    ess = np.asarray(weights.ess)
    detector = guide.ood_detector if ood_detector is None else ood_detector
    num_datasets = khat.shape[0]
    ood_pvalue = np.full(num_datasets, np.nan)
    flagged = np.zeros(num_datasets, bool)
    if detector is not None:
        features = ood_features(guide.problem, guide.engine(params), weights.arguments,
                                weights.mask)
        ood_pvalue = detector.p_values(features, weights.mask.sum(axis=1))
        flagged = ood_pvalue < detector.level
    paths = np.where(khat <= khat_correct, "amortized", "corrected").astype(object)
    paths[(khat > khat_max) | ~np.isfinite(khat) | (flagged & escalate_ood)] = "nuts"
    flat = np.where((paths == "corrected")[:, None, None], corrected, weights.draws)
    seconds = {"importance": time.perf_counter() - start, "nuts": 0.0}

    samples = {name: np.array(v) for name, v in guide.problem.sites.constrain(jnp.asarray(flat)).items()}
    nuts_info: dict[int, dict[str, Any]] = {}
    todo = np.flatnonzero(paths == "nuts")
    if resolve_progress(progress) and todo.size:
        from tqdm.auto import tqdm

        todo = tqdm(todo, desc="NUTS", unit="data set")
    config = dict(num_chains=int(num_chains), num_samples=int(num_draws) // int(num_chains))
    for index in todo:
        run_start = time.perf_counter()
        run_key = jax.random.fold_in(nuts_key, int(index))
        data = select_dataset(weights.arguments, weights.mask, index, guide.problem.data_arguments)
        init, metric = warm_start(
            guide.problem.sites,
            weights.draws[index],
            weights.cov[index],
            weights.log_weights[index],
            int(num_chains),
        )
        result, kept_warm = None, False
        if init is not None:
            sampler = get_reference_sampler(guide.model, num_warmup=int(num_warmup), **config)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # judged below, not warned
                result = sampler.sample(
                    run_key, init_params=init, inverse_mass_matrix=metric, **data
                )
            kept_warm = _nuts_summary(result)["max_rhat"] <= RHAT_THRESHOLD
        if not kept_warm:
            sampler = get_reference_sampler(guide.model, num_warmup=int(cold_num_warmup), **config)
            result = sampler.sample(jax.random.fold_in(run_key, 1), **data)
        for name in samples:
            value = np.asarray(result.samples[name])
            samples[name][index] = value.reshape((-1,) + value.shape[2:])
        nuts_info[int(index)] = dict(
            _nuts_summary(result),
            warm_start=kept_warm,
            seconds=time.perf_counter() - run_start,
        )
    seconds["nuts"] = float(sum(info["seconds"] for info in nuts_info.values()))
    ppc = None
    if ppc_level is not None:
        ppc_start = time.perf_counter()
        sites = guide.problem.sites
        final = jax.vmap(jax.vmap(sites.unconstrain))(
            {k: jnp.asarray(v) for k, v in samples.items()})
        ppc = posterior_predictive_check(jax.random.fold_in(key, 3), guide.problem,
                                         weights.arguments, weights.mask, final, level=ppc_level)
        seconds["ppc"] = time.perf_counter() - ppc_start
        _warn_misfit(ppc)
    return LadderResult(
        samples=samples,
        paths=np.asarray(paths, dtype=str),
        khat=khat,
        ess=ess,
        ood_pvalue=ood_pvalue,
        nuts=nuts_info,
        seconds=seconds,
        ppc=ppc,
    )


def _warn_misfit(ppc) -> None:
    flagged = np.flatnonzero(ppc.flagged)
    if flagged.size:
        listed = list_some([f"{i}: {', '.join(ppc.failing(i))}" for i in flagged])
        warnings.warn(
            f"{flagged.size} data set(s) fail posterior predictive checks ({listed}): the "
            "model does not reproduce these data (misspecification), whatever the posterior; "
            "revise the model before trusting any posterior of it.",
            RuntimeWarning, stacklevel=3)
