"""Summaries of reference (NUTS) runs: convergence diagnostics, moments and InferenceData.

For the draws that :mod:`amortized_ppl.reference` produces, in three pure pieces and their
composition :func:`summarize` (host side, NumPy):

- :func:`convergence_diagnostics`: rank-normalized split R-hat and bulk effective sample sizes
  (ArviZ's implementations of Vehtari et al. 2021) per site;
- :func:`warn_if_not_converged`: a ``RuntimeWarning`` per site whose R-hat exceeds
  :data:`RHAT_THRESHOLD`, and one for divergent transitions;
- :func:`run_inference_data`: the ArviZ object (posterior and sample statistics).

References:
    Vehtari, A., Gelman, A., Simpson, D., Carpenter, B. and Bürkner, P.-C. (2021).
    Rank-normalization, folding, and localization: an improved R-hat. *Bayesian Analysis* 16(2).
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Moments",
    "RHAT_THRESHOLD",
    "ReferenceInfo",
    "ReferenceResult",
    "convergence_diagnostics",
    "flatten_samples",
    "reference_moments",
    "run_inference_data",
    "summarize",
    "warn_if_not_converged",
]

RHAT_THRESHOLD = 1.01
"""Rank-normalized R-hat above which :func:`reference_posterior` warns (Vehtari et al., 2021)."""


class ReferenceInfo(NamedTuple):
    """Adaptation results and per-transition statistics of a reference run.

    ``C`` is the number of chains, ``S`` the number of post-warm-up samples per chain and ``D``
    the size of the flattened unconstrained position (sites in sorted name order, as
    :func:`jax.flatten_util.ravel_pytree` flattens a dict).

    Attributes:
        step_size: Adapted step size of each chain, shape ``(C,)``.
        inverse_mass_matrix: Inverse mass matrix of each chain: adapted and diagonal, shape
            ``(C, D)``; or, for a warm start given a metric, that metric, ``(C, D)`` or
            ``(C, D, D)``.
        is_divergent: Whether each transition diverged, shape ``(C, S)``, bool.
        acceptance_rate: Mean Metropolis acceptance probability of each trajectory, ``(C, S)``.
        num_integration_steps: Leapfrog steps of each trajectory, ``(C, S)``.
        tree_depth: Number of trajectory doublings of each transition, ``(C, S)``.
        logdensity: Unconstrained log density (with log-Jacobian) of each sample, ``(C, S)``.
        last_position: Unconstrained position of the last sample of each chain, a dict
            site -> ``(C, *unconstrained_shape)``; pass it as ``init_params`` to warm-start.
    """

    step_size: jax.Array
    inverse_mass_matrix: jax.Array
    is_divergent: jax.Array
    acceptance_rate: jax.Array
    num_integration_steps: jax.Array
    tree_depth: jax.Array
    logdensity: jax.Array
    last_position: dict


class ReferenceResult(NamedTuple):
    """Reference posterior samples with convergence diagnostics.

    Attributes:
        samples: Constrained samples, a dict site -> array of shape
            ``(num_chains, num_samples, *site_shape)``; latent sample sites and deterministic sites.
        rhat: Rank-normalized split R-hat per site, a dict site -> NumPy array of shape ``site_shape``.
        ess: Bulk effective sample size per site (all chains together), same layout as ``rhat``.
        num_divergent: Total number of divergent transitions after warm-up.
        inference_data: ArviZ object with a ``posterior`` and a ``sample_stats`` group
            (``InferenceData`` with ArviZ 0.x, ``DataTree`` with ArviZ 1.x).
        info: Adaptation results and per-transition statistics, a :class:`ReferenceInfo`.
    """

    samples: dict
    rhat: dict
    ess: dict
    num_divergent: int
    inference_data: Any
    info: ReferenceInfo


class Moments(NamedTuple):
    """Per-site posterior means and SDs, each a dict site -> array of shape ``site_shape``."""

    mean: dict
    sd: dict


def convergence_diagnostics(samples: dict) -> tuple[dict, dict]:
    """Compute rank-normalized split R-hat and bulk ESS per site, on the host in float64.

    Both are ArviZ's (``az.rhat(method="rank")``, ``az.ess(method="bulk")``): the R-hat of
    Vehtari et al. (2021) is the larger of the split R-hats of the rank-normalized draws and of
    their folded ranks, so it also flags chains that agree in location but not in scale, which
    classic split R-hat misses.

    Args:
        samples: A dict site -> ``(num_chains, num_samples, *site_shape)``.

    Returns:
        ``(rhat, ess)``: dicts site -> NumPy array of shape ``site_shape`` (ESS counts all chains
        together; NaN for a constant site).
    """
    az = _arviz()
    dataset = az.convert_to_dataset(_to_host(samples))
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant sites give NaN, kept
        rhat = az.rhat(dataset, method="rank")
        ess = az.ess(dataset, method="bulk")
    return ({site: np.asarray(rhat[site].values) for site in samples},
            {site: np.asarray(ess[site].values) for site in samples})


def _arviz():
    with warnings.catch_warnings():
        # ArviZ 0.2x announces its 1.0 refactor with a FutureWarning on import.
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az


def warn_if_not_converged(rhat: dict, is_divergent, *, stacklevel: int = 2) -> int:
    """Warn when a site's R-hat exceeds :data:`RHAT_THRESHOLD` or a transition diverged.

    Args:
        rhat: R-hat per site, a dict site -> array (NaN entries, e.g. of constant
            deterministic sites, are ignored).
        is_divergent: Whether each post-warm-up transition diverged, ``(C, S)`` bool.
        stacklevel: As for :func:`warnings.warn`; the default points at the caller.

    Returns:
        The number of divergent transitions.

    Warns:
        RuntimeWarning: Once per site whose R-hat is too high (naming the site and the value), and
            once when there are divergent transitions.
    """
    for site, value in rhat.items():
        finite = value[np.isfinite(value)]
        if finite.size and finite.max() > RHAT_THRESHOLD:
            warnings.warn(
                f"R-hat (rank-normalized) of site '{site}' is {finite.max():.4f} > {RHAT_THRESHOLD}: the "
                "chains have not converged to a common distribution. Increase num_warmup and "
                "num_samples, or check the model for multimodality.",
                RuntimeWarning,
                stacklevel=stacklevel + 1,
            )
    divergent = np.asarray(is_divergent)
    num_divergent = int(divergent.sum())
    if num_divergent:
        warnings.warn(
            f"NUTS had {num_divergent} divergent transitions after warm-up "
            f"(of {divergent.size}): the reference may be biased. Raise target_accept or "
            "reparameterize the model (e.g. non-centred).",
            RuntimeWarning,
            stacklevel=stacklevel + 1,
        )
    return num_divergent


def run_inference_data(samples: dict, info: ReferenceInfo):
    """Build the ArviZ object of a run: a ``posterior`` and a ``sample_stats`` group.

    Uses the group-dict layout of ArviZ 1.x (a ``DataTree``), or the 0.x keywords
    (an ``InferenceData``).

    Args:
        samples: Constrained samples, a dict site -> ``(C, S, *site_shape)``.
        info: The run's :class:`ReferenceInfo`.
    """
    az = _arviz()
    posterior = _to_host(samples)
    num_chains, num_samples = np.shape(info.is_divergent)
    sample_stats = {
        "diverging": np.asarray(info.is_divergent),
        "acceptance_rate": np.asarray(info.acceptance_rate),
        "n_steps": np.asarray(info.num_integration_steps),
        "tree_depth": np.asarray(info.tree_depth),
        "lp": np.asarray(info.logdensity),
        "step_size": np.broadcast_to(
            np.asarray(info.step_size)[:, None], (num_chains, num_samples)
        ),
    }
    if int(az.__version__.split(".")[0]) >= 1:
        return az.from_dict({"posterior": posterior, "sample_stats": sample_stats})
    return az.from_dict(posterior=posterior, sample_stats=sample_stats)


def summarize(samples: dict, info: ReferenceInfo) -> ReferenceResult:
    """Compute R-hat/ESS on the host, warn on non-convergence and build the ArviZ object.

    Composes :func:`convergence_diagnostics`, :func:`warn_if_not_converged` (its warnings point
    at the caller's caller, e.g. the line calling ``reference_posterior``) and
    :func:`run_inference_data`.
    """
    rhat, ess = convergence_diagnostics(samples)
    num_divergent = warn_if_not_converged(rhat, info.is_divergent, stacklevel=3)
    return ReferenceResult(
        samples=samples,
        rhat=rhat,
        ess=ess,
        num_divergent=num_divergent,
        inference_data=run_inference_data(samples, info),
        info=info,
    )


def _to_host(samples: dict) -> dict:
    """Copy each site's samples to a float64 NumPy array."""
    return {site: np.asarray(value, dtype=np.float64) for site, value in samples.items()}


def flatten_samples(samples: dict) -> dict:
    """Merge the chain and draw axes: site -> ``(num_chains * num_samples, *site_shape)``."""
    return {
        site: jnp.reshape(value, (-1,) + jnp.shape(value)[2:]) for site, value in samples.items()
    }


def reference_moments(samples: dict) -> Moments:
    """Compute per-site posterior means and SDs over chains and draws.

    Args:
        samples: A dict site -> ``(num_chains, num_samples, *site_shape)``, as in
            :attr:`ReferenceResult.samples`.

    Returns:
        :class:`Moments` with ``mean`` and ``sd`` (``ddof=1``), each site -> ``site_shape``.
    """
    flat = flatten_samples(samples)
    return Moments(
        mean={site: jnp.mean(value, axis=0) for site, value in flat.items()},
        sd={site: jnp.std(value, axis=0, ddof=1) for site, value in flat.items()},
    )
