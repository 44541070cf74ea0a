"""Compare posterior draws with a reference posterior: moment errors, SD ratios, coverage.

Everything works on flat draws of shape ``(..., S, D)``: ``S`` draws of a ``D``-vector, with any
leading batch axes (typically data sets). :func:`flatten_draws` builds them from a dict of sites.
Reference moments have shape ``(..., D)``, the same batch axes without the draw axis. The
functions are written with :mod:`jax.numpy`, so they run under ``jit`` and ``vmap``; shapes are
checked at trace time.

The summary statistics of :func:`accuracy_report` follow the usual checks of a variational
approximation against a long MCMC run: the error of the posterior mean in units of the reference
posterior SD, the ratio of posterior SDs (under-dispersion below 1), and the frequentist coverage
of central credible intervals of the true parameters on simulated data sets.

References:
    Yao, Y., Vehtari, A., Simpson, D. and Gelman, A. (2018). Yes, but did it work?: Evaluating
    variational inference. *ICML*.
    Talts, S., Betancourt, M., Simpson, D., Vehtari, A. and Gelman, A. (2018). Validating Bayesian
    inference algorithms with simulation-based calibration. arXiv:1804.06788.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "SD_RATIO_BOUNDS",
    "AccuracyReport",
    "GaussianMoments",
    "MomentErrors",
    "accuracy_report",
    "flatten_draws",
    "gaussian_moments_from_draws",
    "interval_coverage",
    "moment_errors",
]

SD_RATIO_BOUNDS = (0.8, 1.25)
"""SD ratios in this closed interval count as acceptable in :func:`accuracy_report`."""

_SHAPE_ERROR = "{name}: expected shape {expected}, got {got}."


class GaussianMoments(NamedTuple):
    """Mean and SD (``ddof=1``) of draws over the draw axis, each of shape ``(..., D)``."""

    mean: jax.Array
    sd: jax.Array


class MomentErrors(NamedTuple):
    """Per-dimension errors of draws against reference moments, each of shape ``(..., D)``.

    Attributes:
        mean_error: ``|mean - ref_mean| / ref_sd``, the mean error in reference SD units.
        sd_ratio: ``sd / ref_sd``; below 1 the draws are under-dispersed.
    """

    mean_error: jax.Array
    sd_ratio: jax.Array


class AccuracyReport(NamedTuple):
    """Summary of how close draws are to a reference posterior.

    Medians and fractions run over every batch element and dimension together.

    Attributes:
        median_mean_error: Median of ``|mean - ref_mean| / ref_sd``.
        fraction_sd_ratio_ok: Fraction of dimensions with SD ratio in :data:`SD_RATIO_BOUNDS`.
        median_sd_ratio: Median of ``sd / ref_sd``.
        coverage: Fraction of dimensions whose central ``level`` interval contains the truth,
            or ``None`` without a truth.
        level: Probability mass of the central credible interval used for ``coverage``.
        mean_error: Raw ``|mean - ref_mean| / ref_sd``, shape ``(..., D)``.
        sd_ratio: Raw ``sd / ref_sd``, shape ``(..., D)``.
        is_covered: Raw coverage indicators, bool ``(..., D)``, or ``None`` without a truth.
    """

    median_mean_error: float
    fraction_sd_ratio_ok: float
    median_sd_ratio: float
    coverage: float | None
    level: float
    mean_error: np.ndarray
    sd_ratio: np.ndarray
    is_covered: np.ndarray | None

    def to_dict(self, *, include_arrays: bool = False) -> dict[str, Any]:
        """Return the summary as JSON-ready Python scalars (and nested lists of the raw arrays)."""
        out: dict[str, Any] = {
            "median_mean_error": self.median_mean_error,
            "fraction_sd_ratio_ok": self.fraction_sd_ratio_ok,
            "median_sd_ratio": self.median_sd_ratio,
            "coverage": self.coverage,
            "level": self.level,
        }
        if include_arrays:
            out["mean_error"] = np.asarray(self.mean_error).tolist()
            out["sd_ratio"] = np.asarray(self.sd_ratio).tolist()
            out["is_covered"] = (
                None if self.is_covered is None else np.asarray(self.is_covered).tolist()
            )
        return out


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------


def _check_draws(draws: Any, name: str = "draws") -> jax.Array:
    draws = jnp.asarray(draws)
    if draws.ndim < 2:
        raise ValueError(_SHAPE_ERROR.format(name=name, expected="(..., S, D)", got=draws.shape))
    if not jnp.issubdtype(draws.dtype, jnp.floating):
        draws = draws.astype(jnp.result_type(float))
    return draws


def _check_per_dim(value: Any, name: str, draws: jax.Array) -> jax.Array:
    value = jnp.asarray(value)
    expected = draws.shape[:-2] + draws.shape[-1:]
    if value.shape != expected:
        raise ValueError(_SHAPE_ERROR.format(name=name, expected=expected, got=value.shape))
    return value


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: expected a probability in (0, 1), got {level}.")
    return level


def _check_positive(value: jax.Array, name: str) -> None:
    """Reject non-positive SDs when the value is concrete (not traced under ``jit``)."""
    if isinstance(value, jax.core.Tracer):
        return
    if not bool(jnp.all(value > 0)):
        raise ValueError(f"{name}: expected positive values, got minimum {float(jnp.min(value))}.")


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def flatten_draws(
    samples: Mapping[str, Any], site_names: Sequence[str], *, batch_ndim: int = 0
) -> jax.Array:
    """Concatenate sites' trailing dimensions into one vector per draw.

    Args:
        samples: A dict site -> array of shape ``(*batch, S, *site_shape)``.
        site_names: The sites to take, in the order their flattened values are concatenated
            (each site row-major, as ``reshape`` flattens it).
        batch_ndim: Number of leading batch axes before the draw axis (``1`` for draws of several
            data sets, ``(num_datasets, S, ...)``). Reference draws ``(C, S, ...)`` must have
            their chain axis merged first (:func:`amortized_ppl.reference.flatten_samples`).

    Returns:
        Array of shape ``(*batch, S, D)`` with ``D`` the total size of the sites.

    Raises:
        TypeError: if ``samples`` is not a dict.
        KeyError: for a site missing from ``samples``.
        ValueError: for no sites, a negative ``batch_ndim``, too few axes, or sites whose
            ``(*batch, S)`` shapes differ (naming them).

    Examples:
        >>> flatten_draws({"w": jnp.zeros((100, 3)), "b": jnp.zeros(100)}, ["w", "b"]).shape
        (100, 4)
    """
    if not isinstance(samples, Mapping):
        raise TypeError(f"samples must be a dict site -> array, got {type(samples).__name__}.")
    if isinstance(site_names, str):
        raise TypeError(
            f"site_names must be a sequence of site names, got the string {site_names!r}."
        )
    site_names = list(site_names)
    if not site_names:
        raise ValueError("site_names: expected at least one site, got none.")
    if batch_ndim < 0:
        raise ValueError(f"batch_ndim: expected a non-negative integer, got {batch_ndim}.")
    missing = [site for site in site_names if site not in samples]
    if missing:
        raise KeyError(f"Sites {missing} are not in samples; it has {sorted(samples)}.")

    num_leading = batch_ndim + 1
    leading, parts = {}, []
    for site in site_names:
        value = jnp.asarray(samples[site])
        if value.ndim < num_leading:
            raise ValueError(
                _SHAPE_ERROR.format(
                    name=f"samples[{site!r}]",
                    expected=f"({'*batch, ' if batch_ndim else ''}S, *site_shape) with "
                    f"{num_leading} leading axes",
                    got=value.shape,
                )
            )
        leading[site] = value.shape[:num_leading]
        parts.append(jnp.reshape(value, value.shape[:num_leading] + (-1,)))
    if len(set(leading.values())) > 1:
        raise ValueError(
            f"samples: sites disagree on the leading (*batch, S) shape: {leading}. Every site "
            "must have the same batch shape and number of draws."
        )
    return jnp.concatenate(parts, axis=-1)


def gaussian_moments_from_draws(draws: Any) -> GaussianMoments:
    """Compute the mean and SD (``ddof=1``) of draws ``(..., S, D)`` over the draw axis.

    Returns:
        :class:`GaussianMoments` with ``mean`` and ``sd``, each of shape ``(..., D)``.
    """
    draws = _check_draws(draws)
    if draws.shape[-2] < 2:
        raise ValueError(
            _SHAPE_ERROR.format(name="draws", expected="(..., S, D) with S >= 2", got=draws.shape)
        )
    return GaussianMoments(mean=jnp.mean(draws, axis=-2), sd=jnp.std(draws, axis=-2, ddof=1))


def moment_errors(draws: Any, ref_mean: Any, ref_sd: Any) -> MomentErrors:
    """Compare the mean and SD of draws with reference moments, in reference SD units.

    Args:
        draws: Draws of shape ``(..., S, D)``.
        ref_mean: Reference posterior mean, shape ``(..., D)``.
        ref_sd: Reference posterior SD, shape ``(..., D)``, positive.

    Returns:
        :class:`MomentErrors`: ``|mean - ref_mean| / ref_sd`` and ``sd / ref_sd``, each of
        shape ``(..., D)``.
    """
    draws = _check_draws(draws)
    ref_mean = _check_per_dim(ref_mean, "ref_mean", draws)
    ref_sd = _check_per_dim(ref_sd, "ref_sd", draws)
    _check_positive(ref_sd, "ref_sd")
    mean, sd = gaussian_moments_from_draws(draws)
    return MomentErrors(mean_error=jnp.abs(mean - ref_mean) / ref_sd, sd_ratio=sd / ref_sd)


def interval_coverage(draws: Any, truth: Any, level: float = 0.9) -> jax.Array:
    """Say whether the central ``level`` credible interval of each dimension contains the truth.

    The interval runs from the ``(1 - level) / 2`` to the ``(1 + level) / 2`` quantile of the
    draws (linear interpolation), both ends included.

    Args:
        draws: Draws of shape ``(..., S, D)``.
        truth: True values, shape ``(..., D)``.
        level: Probability mass of the interval, in ``(0, 1)``.

    Returns:
        Bool array of shape ``(..., D)``.
    """
    draws = _check_draws(draws)
    truth = _check_per_dim(truth, "truth", draws)
    level = _check_level(level)
    probs = jnp.asarray([(1.0 - level) / 2.0, (1.0 + level) / 2.0], draws.dtype)
    lower, upper = jnp.quantile(draws, probs, axis=-2)
    return (lower <= truth) & (truth <= upper)


def accuracy_report(
    draws: Any,
    ref_mean: Any,
    ref_sd: Any,
    truth: Any | None = None,
    level: float = 0.9,
) -> AccuracyReport:
    """Summarize how close draws are to a reference posterior, and their coverage of the truth.

    Args:
        draws: Draws of shape ``(..., S, D)``, e.g. from :func:`flatten_draws`.
        ref_mean: Reference posterior mean, shape ``(..., D)``.
        ref_sd: Reference posterior SD, shape ``(..., D)``, positive.
        truth: Optional true parameter values, shape ``(..., D)``, for interval coverage.
        level: Probability mass of the central credible interval for coverage.

    Returns:
        An :class:`AccuracyReport` of host (NumPy / Python) values; ``report.to_dict()`` is ready
        for ``json.dumps``.

    Examples:
        >>> draws = flatten_draws(guide_draws, ["w", "b"], batch_ndim=1)  # doctest: +SKIP
        >>> report = accuracy_report(draws, ref_mean, ref_sd, truth=theta)  # doctest: +SKIP
        >>> print(json.dumps(report.to_dict(), indent=2))  # doctest: +SKIP
    """
    level = _check_level(level)
    mean_error, sd_ratio = moment_errors(draws, ref_mean, ref_sd)
    mean_error, sd_ratio = np.asarray(mean_error), np.asarray(sd_ratio)
    low, high = SD_RATIO_BOUNDS
    is_covered = coverage = None
    if truth is not None:
        is_covered = np.asarray(interval_coverage(draws, truth, level))
        coverage = float(np.mean(is_covered))
    return AccuracyReport(
        median_mean_error=float(np.median(mean_error)),
        fraction_sd_ratio_ok=float(np.mean((sd_ratio >= low) & (sd_ratio <= high))),
        median_sd_ratio=float(np.median(sd_ratio)),
        coverage=coverage,
        level=level,
        mean_error=mean_error,
        sd_ratio=sd_ratio,
        is_covered=is_covered,
    )
