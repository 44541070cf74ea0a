"""Calibration plots over many simulated data sets: SBC ranks, ECDF bands, coverage, recovery."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import stats

from amortized_ppl.diagnostics.plots.common import (
    GUIDE_COLOR,
    IDEAL_COLOR,
    SHAPE_ERROR,
    as_finite,
    check_count,
    check_ranks,
    check_same_shape,
    make_panels,
    panel_legend,
    resolve_names,
    side_legend,
    single_axes,
)

__all__ = ["plot_coverage", "plot_ecdf_difference", "plot_rank_histograms", "plot_recovery"]


# ---------------------------------------------------------------------------------------------
# Simulation-based calibration
# ---------------------------------------------------------------------------------------------


def _default_num_bins(num_datasets: int, num_ranks: int) -> int:
    """About ``B / 20`` bins; the largest divisor of ``num_ranks`` below that when one is close."""
    target = max(1, min(num_datasets // 20, num_ranks))
    divisor = max(d for d in range(1, target + 1) if num_ranks % d == 0)
    return divisor if 2 * divisor >= target else target


def plot_rank_histograms(
    ranks: Any,
    num_draws: int,
    *,
    names: Sequence[str] | None = None,
    num_bins: int | None = None,
    axes: Any = None,
) -> Figure:
    """Plot one histogram of SBC ranks per dimension, with the band expected under uniformity.

    For a calibrated posterior the rank of the true parameter among ``num_draws`` posterior
    draws is uniform on ``{0, ..., num_draws}``. The ``num_draws + 1`` rank values are grouped
    into ``num_bins`` contiguous bins; the dashed line is the expected count per bin and the
    shaded band holds the central 99% of each bin's count (binomial) under uniformity. The band
    is pointwise: with many bins, a few counts outside it are expected.

    Args:
        ranks: Integer ranks of shape ``(B, D)`` with values in ``{0, ..., num_draws}``: ``B``
            data sets, ``D`` parameter dimensions.
        num_draws: Number of posterior draws each rank was computed against.
        names: ``D`` panel titles; defaults to ``theta[i]``.
        num_bins: Number of bins, in ``[1, num_draws + 1]``. Defaults to about ``B / 20`` (so
            about 20 data sets per bin), lowered to a divisor of ``num_draws + 1`` when one is
            within a factor of two, so that every bin covers equally many rank values.
        axes: ``D`` (or more) Axes to draw into; by default a new figure is created.

    Returns:
        The figure holding the panels.

    Raises:
        ValueError: for ranks not of shape ``(B, D)``, non-integer, non-finite or out-of-range
            ranks, a bad ``num_bins`` or ``names``, or too few ``axes``.

    Examples:
        >>> ranks = np.random.default_rng(0).integers(0, 100, size=(500, 3))
        >>> fig = plot_rank_histograms(ranks, num_draws=99)
        >>> len(fig.axes)
        3
    """
    ranks, num_draws = check_ranks(ranks, num_draws)
    num_datasets, num_dims = ranks.shape
    num_ranks = num_draws + 1
    if num_bins is None:
        num_bins = _default_num_bins(num_datasets, num_ranks)
    num_bins = check_count(num_bins, "num_bins")
    if num_bins > num_ranks:
        raise ValueError(
            f"num_bins: expected at most num_draws + 1 = {num_ranks} bins, got {num_bins}."
        )
    names = resolve_names(names, num_dims)
    figure, panels = make_panels(num_dims, axes)

    # Bin k holds the rank values [starts[k], starts[k + 1]); edges sit between integers.
    starts = np.unique(np.round(np.linspace(0, num_ranks, num_bins + 1)).astype(np.int64))
    widths = np.diff(starts)
    edges = starts - 0.5
    probs = widths / num_ranks
    expected = num_datasets * probs
    lower = stats.binom.ppf(0.005, num_datasets, probs)
    upper = stats.binom.ppf(0.995, num_datasets, probs)

    for i, (ax, name) in enumerate(zip(panels, names)):
        counts = np.add.reduceat(np.bincount(ranks[:, i], minlength=num_ranks), starts[:-1])
        ax.fill_between(
            edges,
            np.append(lower, lower[-1]),
            np.append(upper, upper[-1]),
            step="post",
            color="0.8",
            alpha=0.7,
            linewidth=0,
            label="99% band (uniform)",
        )
        ax.bar(
            edges[:-1],
            counts,
            width=widths,
            align="edge",
            color=GUIDE_COLOR,
            alpha=0.8,
            edgecolor="white",
            linewidth=0.5,
            label="observed",
        )
        ax.stairs(expected, edges, color=IDEAL_COLOR, linestyle="--", label="expected")
        ax.set_xlim(edges[0], edges[-1])
        ax.set_title(name)
        ax.set_xlabel("rank")
        ax.set_ylabel("count")
    panel_legend(figure, panels[0], is_new=axes is None)
    return figure


def _ecdf_difference(ranks: np.ndarray, num_draws: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``z`` of shape ``(num_draws + 2,)`` and ``ECDF(z) - z`` for one dimension's ranks.

    The fractional ranks ``u = (r + 1) / (num_draws + 1)`` lie on the grid
    ``z_k = k / (num_draws + 1)``, ``k = 0, ..., num_draws + 1``, where the ECDF jumps; it is
    evaluated there, as confidence bands for it are.
    """
    num_ranks = num_draws + 1
    z = np.arange(num_ranks + 1) / num_ranks
    counts = np.bincount(ranks, minlength=num_ranks)
    ecdf = np.concatenate([[0.0], np.cumsum(counts) / ranks.shape[0]])
    return z, ecdf - z


def plot_ecdf_difference(
    ranks: Any,
    num_draws: int,
    *,
    band: tuple[Any, Any, Any] | None = None,
    p_values: Any = None,
    names: Sequence[str] | None = None,
    axes: Any = None,
) -> Figure:
    """Plot the ECDF of fractional SBC ranks minus the uniform CDF, one panel per dimension.

    With ranks ``r`` out of ``num_draws`` draws, the fractional ranks are
    ``u = (r + 1) / (num_draws + 1)`` and each panel shows ``ECDF(z) - z`` for ``z`` in
    ``[0, 1]``. A calibrated posterior stays near zero; a bump above zero means truths rank low
    (posterior biased upward), an S-shape means over- or under-dispersion. Unlike a histogram
    this needs no binning.

    Args:
        ranks: Integer ranks of shape ``(B, D)`` with values in ``{0, ..., num_draws}``.
        num_draws: Number of posterior draws each rank was computed against.
        band: Optional ``(z, lower, upper)``, each of shape ``(K,)``: a (simultaneous)
            confidence band for the ECDF itself at evaluation points ``z`` in ``[0, 1]``, as from
            Säilynoja et al. (2022). It is drawn as ``[lower - z, upper - z]`` in every panel.
        p_values: Optional ``(D,)`` p-values of a uniformity test, shown in the panel titles.
        names: ``D`` panel titles; defaults to ``theta[i]``.
        axes: ``D`` (or more) Axes to draw into; by default a new figure is created.

    Returns:
        The figure holding the panels.

    Raises:
        ValueError: for bad ranks (see :func:`plot_rank_histograms`), a ``band`` whose parts
            are not equal-length finite vectors with ``z`` in ``[0, 1]`` and ``lower <= upper``,
            ``p_values`` not of shape ``(D,)``, or bad ``names`` or ``axes``.

    Examples:
        >>> ranks = np.random.default_rng(0).integers(0, 100, size=(200, 2))
        >>> fig = plot_ecdf_difference(ranks, num_draws=99, p_values=[0.4, 0.8])
    """
    ranks, num_draws = check_ranks(ranks, num_draws)
    num_dims = ranks.shape[1]
    names = resolve_names(names, num_dims)
    if band is not None:
        band_z, band_lower, band_upper = _check_band(band)
    if p_values is not None:
        p_values = as_finite(p_values, "p_values", ndim=1, expected=f"({num_dims},)")
        if p_values.shape != (num_dims,):
            raise ValueError(
                SHAPE_ERROR.format(name="p_values", expected=(num_dims,), got=p_values.shape)
            )
    figure, panels = make_panels(num_dims, axes)

    for i, (ax, name) in enumerate(zip(panels, names)):
        if band is not None:
            ax.fill_between(
                band_z,
                band_lower - band_z,
                band_upper - band_z,
                color="0.8",
                alpha=0.7,
                linewidth=0,
                label="confidence band",
            )
        z, difference = _ecdf_difference(ranks[:, i], num_draws)
        ax.step(z, difference, where="post", color=GUIDE_COLOR, linewidth=1.2, label="ECDF(z) - z")
        ax.axhline(0.0, color=IDEAL_COLOR, linestyle="--", linewidth=0.8)
        ax.set_xlim(0.0, 1.0)
        title = name if p_values is None else f"{name} ({_format_p(p_values[i])})"
        ax.set_title(title)
        ax.set_xlabel("fractional rank z")
        ax.set_ylabel("ECDF(z) - z")
    panel_legend(figure, panels[0], is_new=axes is None)
    return figure


def _format_p(p_value: float) -> str:
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.3f}"


def _check_band(band: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(band, tuple | list) or len(band) != 3:
        raise ValueError("band: expected a tuple (z, lower, upper) of three (K,) arrays.")
    z, lower, upper = (
        as_finite(part, f"band[{j}] ({label})", ndim=1, expected="(K,)")
        for j, (part, label) in enumerate(zip(band, ("z", "lower", "upper")))
    )
    check_same_shape(lower, "band[1] (lower)", z, "band[0] (z)")
    check_same_shape(upper, "band[2] (upper)", z, "band[0] (z)")
    if z.min() < 0.0 or z.max() > 1.0:
        raise ValueError(f"band[0] (z): expected values in [0, 1], got [{z.min()}, {z.max()}].")
    if np.any(lower > upper):
        raise ValueError("band: expected lower <= upper at every evaluation point.")
    order = np.argsort(z, kind="stable")
    return z[order], lower[order], upper[order]


# ---------------------------------------------------------------------------------------------
# Coverage and parameter recovery
# ---------------------------------------------------------------------------------------------


def plot_coverage(
    levels: Any,
    coverage: Any,
    *,
    names: Sequence[str] | None = None,
    num_datasets: int | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Plot empirical coverage of central credible intervals against their nominal level.

    Points on the diagonal are calibrated; below it the intervals are too narrow
    (over-confident), above it too wide.

    Args:
        levels: Nominal credible levels of shape ``(M,)``, each in ``(0, 1)``.
        coverage: Empirical coverage of shape ``(M,)`` or ``(M, D)`` (one line per dimension),
            each in ``[0, 1]``: the fraction of data sets whose interval holds the truth.
        names: Legend labels, one per dimension of ``coverage``; defaults to ``theta[i]``
            (or "empirical" for a single line).
        num_datasets: Number of data sets behind each coverage value; when given, the central
            95% binomial band around the diagonal is shaded.
        ax: Axes to draw into; by default a new figure is created.

    Returns:
        The figure holding the axes.

    Raises:
        ValueError: for ``levels`` not ``(M,)`` in ``(0, 1)``, ``coverage`` not ``(M,)`` or
            ``(M, D)`` in ``[0, 1]``, bad ``names`` or ``num_datasets``, or non-finite values.

    Examples:
        >>> levels = np.array([0.5, 0.8, 0.9, 0.95])
        >>> fig = plot_coverage(levels, levels - 0.05, num_datasets=200)
    """
    levels = as_finite(levels, "levels", ndim=1, expected="(M,)")
    if levels.min() <= 0.0 or levels.max() >= 1.0:
        raise ValueError(
            f"levels: expected credible levels in (0, 1), got [{levels.min()}, {levels.max()}]."
        )
    num_levels = levels.shape[0]
    expected = f"({num_levels},) or ({num_levels}, D)"
    coverage = as_finite(coverage, "coverage", ndim=(1, 2), expected=expected)
    if coverage.shape[0] != num_levels:
        raise ValueError(
            SHAPE_ERROR.format(name="coverage", expected=expected, got=coverage.shape)
        )
    if coverage.min() < 0.0 or coverage.max() > 1.0:
        raise ValueError(
            f"coverage: expected fractions in [0, 1], got [{coverage.min()}, {coverage.max()}]."
        )
    is_single = coverage.ndim == 1
    coverage = coverage.reshape(num_levels, -1)
    if is_single and names is None:
        labels = ["empirical"]
    else:
        labels = resolve_names(names, coverage.shape[1])
    is_new = ax is None
    figure, ax = single_axes(ax, (5.8, 4.0))

    order = np.argsort(levels, kind="stable")
    levels, coverage = levels[order], coverage[order]
    if num_datasets is not None:
        num_datasets = check_count(num_datasets, "num_datasets")
        grid = np.linspace(0.0, 1.0, 201)
        lower = stats.binom.ppf(0.025, num_datasets, grid) / num_datasets
        upper = stats.binom.ppf(0.975, num_datasets, grid) / num_datasets
        ax.fill_between(
            grid, lower, upper, color="0.85", linewidth=0, label=f"95% band (B = {num_datasets})"
        )
    ax.plot(
        [0.0, 1.0], [0.0, 1.0], color=IDEAL_COLOR, linestyle="--", linewidth=0.8, label="ideal"
    )
    marker = "o" if num_levels <= 30 else None
    for j, label in enumerate(labels):
        ax.plot(levels, coverage[:, j], marker=marker, markersize=3, linewidth=1.2, label=label)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_aspect("equal")
    ax.set_title("Interval coverage")
    ax.set_xlabel("credible level")
    ax.set_ylabel("empirical coverage")
    side_legend(ax, is_new=is_new)
    return figure


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation, NaN when either input is constant (without a warning)."""
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(np.sum(dx**2) * np.sum(dy**2)))
    return float(np.sum(dx * dy) / denominator) if denominator > 0 else float("nan")


def plot_recovery(
    truth: Any,
    mean: Any,
    lower: Any = None,
    upper: Any = None,
    *,
    names: Sequence[str] | None = None,
    axes: Any = None,
) -> Figure:
    """Plot true parameters against posterior means over data sets, one panel per dimension.

    Points near the diagonal mean the guide recovers the parameter; shrinkage towards the prior
    mean flattens the cloud. The Pearson correlation ``r`` is shown in each title.

    Args:
        truth: True parameters of shape ``(B, D)``, one row per simulated data set.
        mean: Posterior means (or medians) of shape ``(B, D)``.
        lower: Optional lower interval ends ``(B, D)``; give together with ``upper``.
        upper: Optional upper interval ends ``(B, D)``, at least ``lower``.
        names: ``D`` panel titles; defaults to ``theta[i]``.
        axes: ``D`` (or more) Axes to draw into; by default a new figure is created.

    Returns:
        The figure holding the panels.

    Raises:
        ValueError: for arrays not of shape ``(B, D)`` or not matching ``truth``, only one of
            ``lower`` and ``upper``, ``lower > upper``, non-finite values, or bad ``names`` or
            ``axes``.

    Examples:
        >>> truth = np.random.default_rng(0).normal(size=(50, 2))
        >>> fig = plot_recovery(truth, 0.9 * truth, 0.9 * truth - 0.3, 0.9 * truth + 0.3)
    """
    truth = as_finite(truth, "truth", ndim=2, expected="(B, D)")
    mean = as_finite(mean, "mean", ndim=2, expected="(B, D)")
    check_same_shape(mean, "mean", truth, "truth")
    if (lower is None) != (upper is None):
        raise ValueError("lower, upper: give both interval ends or neither.")
    if lower is not None:
        lower = as_finite(lower, "lower", ndim=2, expected="(B, D)")
        upper = as_finite(upper, "upper", ndim=2, expected="(B, D)")
        check_same_shape(lower, "lower", truth, "truth")
        check_same_shape(upper, "upper", truth, "truth")
        if np.any(lower > upper):
            raise ValueError("lower, upper: expected lower <= upper everywhere.")
    num_dims = truth.shape[1]
    names = resolve_names(names, num_dims)
    figure, panels = make_panels(num_dims, axes)

    for i, (ax, name) in enumerate(zip(panels, names)):
        values = [truth[:, i], mean[:, i]]
        if lower is not None:
            ax.vlines(
                truth[:, i],
                lower[:, i],
                upper[:, i],
                color=GUIDE_COLOR,
                alpha=0.35,
                linewidth=1.0,
                label="interval",
            )
            values += [lower[:, i], upper[:, i]]
        ax.scatter(
            truth[:, i], mean[:, i], s=10, color=GUIDE_COLOR, zorder=3, label="posterior mean"
        )
        low, high = min(v.min() for v in values), max(v.max() for v in values)
        pad = 0.05 * (high - low) if high > low else 0.5
        ax.plot(
            [low - pad, high + pad],
            [low - pad, high + pad],
            color=IDEAL_COLOR,
            linestyle="--",
            linewidth=0.8,
            label="y = x",
        )
        ax.set_title(f"{name} (r = {_correlation(truth[:, i], mean[:, i]):.2f})")
        ax.set_xlabel("true value")
        ax.set_ylabel("posterior mean")
    panel_legend(figure, panels[0], is_new=axes is None)
    return figure
