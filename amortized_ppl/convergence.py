"""Summaries of reference (NUTS) runs: convergence diagnostics, moments and InferenceData.

Split R-hat and effective sample sizes (NumPyro's implementations), warnings when a run has not
converged or diverged, and the ArviZ object, for the draws that :mod:`amortized_ppl.reference`
produces.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

__all__ = [
    "RHAT_THRESHOLD",
    "Moments",
    "ReferenceInfo",
    "ReferenceResult",
    "flatten_samples",
    "reference_moments",
    "summarize",
]

RHAT_THRESHOLD = 1.01
"""Split R-hat above which :func:`reference_posterior` warns (Vehtari et al., 2021)."""


class ReferenceInfo(NamedTuple):
    """Adaptation results and per-transition statistics of a reference run.

    ``C`` is the number of chains, ``S`` the number of post-warm-up samples per chain and ``D``
    the size of the flattened unconstrained position (sites in sorted name order, as
    :func:`jax.flatten_util.ravel_pytree` flattens a dict).

    Attributes:
        step_size: Adapted step size of each chain, shape ``(C,)``.
        inverse_mass_matrix: Adapted diagonal inverse mass matrix of each chain, shape ``(C, D)``.
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
        rhat: Split R-hat per site, a dict site -> NumPy array of shape ``site_shape``.
        ess: Effective sample size per site (all chains together), same layout as ``rhat``.
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


def summarize(samples: dict, info: ReferenceInfo) -> ReferenceResult:
    """Compute R-hat/ESS on the host, warn on non-convergence and build the ArviZ object."""
    host_samples = {site: np.asarray(value, dtype=np.float64) for site, value in samples.items()}
    rhat = {site: np.asarray(split_gelman_rubin(value)) for site, value in host_samples.items()}
    ess = {site: np.asarray(effective_sample_size(value)) for site, value in host_samples.items()}
    for site, value in rhat.items():
        finite = value[np.isfinite(value)]
        if finite.size and finite.max() > RHAT_THRESHOLD:
            warnings.warn(
                f"Split R-hat of site '{site}' is {finite.max():.4f} > {RHAT_THRESHOLD}: the "
                "chains have not converged to a common distribution. Increase num_warmup and "
                "num_samples, or check the model for multimodality.",
                RuntimeWarning,
                stacklevel=3,
            )
    divergent = np.asarray(info.is_divergent)
    num_divergent = int(divergent.sum())
    if num_divergent:
        warnings.warn(
            f"NUTS had {num_divergent} divergent transitions after warm-up "
            f"(of {divergent.size}): the reference may be biased. Raise target_accept or "
            "reparameterize the model (e.g. non-centred).",
            RuntimeWarning,
            stacklevel=3,
        )
    return ReferenceResult(
        samples=samples,
        rhat=rhat,
        ess=ess,
        num_divergent=num_divergent,
        inference_data=_to_inference_data(host_samples, info),
        info=info,
    )


def _to_inference_data(posterior: dict, info: ReferenceInfo):
    """Build the ArviZ object with the group-dict layout of ArviZ 1.x, or the 0.x keywords."""
    with warnings.catch_warnings():
        # ArviZ 0.2x announces its 1.0 refactor with a FutureWarning on import.
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az

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
