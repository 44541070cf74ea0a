"""How far draws are from reference draws: moments, MMD and C2ST in one report.

Where :mod:`amortized_ppl.diagnostics.metrics` compares the first two moments of each dimension,
the distances compare whole joint distributions, so they also see wrong correlations, skew and
multimodality: :mod:`~amortized_ppl.diagnostics.mmd` (kernel) and
:mod:`~amortized_ppl.diagnostics.c2st` (classifier), on the draw layout of
:mod:`~amortized_ppl.diagnostics.two_sample`. :func:`compare_to_reference` runs them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
from jaxtyping import PRNGKeyArray

from amortized_ppl.diagnostics.c2st import NUM_FOLDS, c2st
from amortized_ppl.diagnostics.metrics import (
    SD_RATIO_BOUNDS,
    gaussian_moments_from_draws,
    moment_errors,
)
from amortized_ppl.diagnostics.mmd import median_bandwidth, mmd, mmd_test
from amortized_ppl.diagnostics.two_sample import check_draws_finite, check_pair

__all__ = [
    "DistanceReport",
    "c2st",
    "check_draws_finite",
    "compare_to_reference",
    "median_bandwidth",
    "mmd",
    "mmd_test",
]


class DistanceReport(NamedTuple):
    """How far draws are from reference draws, per data set (and per dimension for moments).

    Attributes:
        mean_error: ``|mean - ref_mean| / ref_sd``, shape ``(..., D)``.
        sd_ratio: ``sd / ref_sd``, shape ``(..., D)``.
        mmd2: Unbiased MMD^2 (median-heuristic Gaussian kernel), shape ``(...)``.
        mmd_p_value: Permutation p-value of the MMD test, shape ``(...)``.
        c2st_accuracy: Classifier two-sample test accuracy (0.5 = indistinguishable), ``(...)``.
    """

    mean_error: jax.Array
    sd_ratio: jax.Array
    mmd2: jax.Array
    mmd_p_value: jax.Array
    c2st_accuracy: jax.Array

    def to_dict(self, *, include_arrays: bool = False) -> dict[str, Any]:
        """Summarize over data sets (and dimensions) as JSON-ready Python floats.

        Medians describe the typical data set, maxima (minima for p-values and SD ratios) the
        worst; ``fraction_sd_ratio_ok`` counts SD ratios inside
        :data:`~amortized_ppl.diagnostics.metrics.SD_RATIO_BOUNDS`. With ``include_arrays``
        the raw arrays are added as nested lists.
        """
        arrays = {name: np.asarray(value) for name, value in self._asdict().items()}
        low, high = SD_RATIO_BOUNDS
        sd_ratio = arrays["sd_ratio"]
        out: dict[str, Any] = {
            "num_datasets": int(arrays["mmd2"].size),
            "median_mean_error": float(np.median(arrays["mean_error"])),
            "max_mean_error": float(np.max(arrays["mean_error"])),
            "median_sd_ratio": float(np.median(sd_ratio)),
            "min_sd_ratio": float(np.min(sd_ratio)),
            "max_sd_ratio": float(np.max(sd_ratio)),
            "fraction_sd_ratio_ok": float(np.mean((sd_ratio >= low) & (sd_ratio <= high))),
            "median_mmd2": float(np.median(arrays["mmd2"])),
            "max_mmd2": float(np.max(arrays["mmd2"])),
            "median_mmd_p_value": float(np.median(arrays["mmd_p_value"])),
            "min_mmd_p_value": float(np.min(arrays["mmd_p_value"])),
            "median_c2st_accuracy": float(np.median(arrays["c2st_accuracy"])),
            "max_c2st_accuracy": float(np.max(arrays["c2st_accuracy"])),
        }
        if include_arrays:
            out.update({name: value.tolist() for name, value in arrays.items()})
        return out


def compare_to_reference(
    key: PRNGKeyArray,
    draws: Any,
    reference: Any,
    *,
    mmd_kwargs: Mapping[str, Any] | None = None,
    c2st_kwargs: Mapping[str, Any] | None = None,
) -> DistanceReport:
    """Compare draws with reference draws per data set: moments, MMD test and C2ST.

    Args:
        key: PRNG key, split between the MMD permutations and the C2ST.
        draws: Draws to judge (e.g. a guide's), shape ``(..., n, D)``.
        reference: Reference draws (e.g. NUTS, chains merged), shape ``(..., m, D)``.
        mmd_kwargs: Keyword arguments for :func:`mmd_test` (``num_permutations``,
            ``bandwidth``).
        c2st_kwargs: Keyword arguments for :func:`c2st` (``num_folds``, ``hidden_size``,
            ``num_steps``, ``learning_rate``).

    Returns:
        A :class:`DistanceReport`; ``report.to_dict()`` is ready for ``json.dumps``.

    Examples:
        >>> guide = flatten_draws(guide_samples, sites, batch_ndim=1)  # doctest: +SKIP
        >>> nuts = flatten_draws(nuts_samples, sites, batch_ndim=1)  # doctest: +SKIP
        >>> report = compare_to_reference(jax.random.key(0), guide, nuts)  # doctest: +SKIP
        >>> print(json.dumps(report.to_dict(), indent=2))  # doctest: +SKIP
    """
    c2st_kwargs = dict(c2st_kwargs or {})
    num_folds = c2st_kwargs.get("num_folds", NUM_FOLDS)
    # Check the draw counts here too, so that errors name `draws` and `reference`, not x and y.
    min_draws = 2 * num_folds if isinstance(num_folds, int) else 2
    draws, reference = check_pair(
        draws,
        reference,
        min_draws=min_draws,
        names=("draws", "reference"),
        why=f" (2 * num_folds for the C2ST, num_folds={num_folds})",
    )
    mmd_key, c2st_key = jax.random.split(key)
    ref_mean, ref_sd = gaussian_moments_from_draws(reference)
    mean_error, sd_ratio = moment_errors(draws, ref_mean, ref_sd)
    mmd2, p_value = mmd_test(mmd_key, draws, reference, **dict(mmd_kwargs or {}))
    accuracy = c2st(c2st_key, draws, reference, **c2st_kwargs)
    return DistanceReport(
        mean_error=mean_error,
        sd_ratio=sd_ratio,
        mmd2=mmd2,
        mmd_p_value=p_value,
        c2st_accuracy=accuracy,
    )
