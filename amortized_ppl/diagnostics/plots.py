"""Matplotlib plots for deciding whether to trust an amortized posterior.

Every function takes plain arrays (NumPy or JAX) and nothing else from the library:

* calibration over many simulated data sets: :func:`plot_rank_histograms` and
  :func:`plot_ecdf_difference` (simulation-based calibration ranks), :func:`plot_coverage`
  (credible-interval coverage) and :func:`plot_recovery` (truth against posterior mean);
* one data set against a reference posterior: :func:`plot_marginals` and :func:`plot_pairs`;
* importance-sampling reliability: :func:`plot_khat` (Pareto k-hat per data set).

The functions build :class:`matplotlib.figure.Figure` objects directly, never through
:mod:`matplotlib.pyplot`, so they hold no global state, open no window, and work headless and in
threads. Each takes an optional ``axes`` (or ``ax``) to draw into, and otherwise creates a figure
with a grid of at most four panels per row. Either way the figure is returned; write it with
:func:`save_figure`. Non-finite values (NaN, inf) in any input raise a :class:`ValueError`
rather than being dropped silently.

References:
    Talts, S., Betancourt, M., Simpson, D., Vehtari, A. and Gelman, A. (2018). Validating Bayesian
    inference algorithms with simulation-based calibration. arXiv:1804.06788.
    Säilynoja, T., Bürkner, P.-C. and Vehtari, A. (2022). Graphical test for discrete uniformity
    and its applications in goodness-of-fit evaluation and multiple sample comparison.
    *Statistics and Computing* 32, 32.
    Vehtari, A., Simpson, D., Gelman, A., Yao, Y. and Gabry, J. (2024). Pareto smoothed
    importance sampling. *JMLR* 25(72).
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from scipy import stats

__all__ = [
    "plot_coverage",
    "plot_ecdf_difference",
    "plot_khat",
    "plot_marginals",
    "plot_pairs",
    "plot_rank_histograms",
    "plot_recovery",
    "save_figure",
]

_SHAPE_ERROR = "{name}: expected shape {expected}, got {got}."
_MAX_COLUMNS = 4
_PANEL_SIZE = (3.2, 2.6)  # inches per panel (width, height)
_GUIDE_COLOR, _REFERENCE_COLOR, _IDEAL_COLOR = "C0", "C1", "0.2"


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------


def _as_finite(value: Any, name: str, *, ndim: int | tuple[int, ...], expected: str) -> np.ndarray:
    """Return ``value`` as a finite float array with ``ndim`` axes, none of them empty."""
    array = np.asarray(value)
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if array.ndim not in ndims or array.size == 0:
        raise ValueError(_SHAPE_ERROR.format(name=name, expected=expected, got=array.shape))
    if array.dtype.kind in "OSUMm":  # objects, strings, datetimes
        raise ValueError(f"{name}: expected numbers, got dtype {array.dtype}.")
    array = array.astype(float)
    if not np.all(np.isfinite(array)):
        num_bad = int(np.sum(~np.isfinite(array)))
        raise ValueError(
            f"{name}: contains {num_bad} NaN or infinite value(s); remove the affected data sets "
            "or draws before plotting."
        )
    return array


def _check_same_shape(value: np.ndarray, name: str, reference: np.ndarray, ref_name: str) -> None:
    if value.shape != reference.shape:
        raise ValueError(
            _SHAPE_ERROR.format(
                name=name, expected=f"{reference.shape} (as {ref_name})", got=value.shape
            )
        )


def _check_count(value: Any, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}.")
    return int(value)


def _check_ranks(ranks: Any, num_draws: Any) -> tuple[np.ndarray, int]:
    """Return ranks as an int array ``(B, D)`` with values in ``{0, ..., num_draws}``."""
    num_draws = _check_count(num_draws, "num_draws")
    values = _as_finite(ranks, "ranks", ndim=2, expected="(B, D)")
    as_int = np.rint(values)
    if not np.array_equal(as_int, values):
        raise ValueError("ranks: expected integer ranks, got non-integer values.")
    if as_int.min() < 0 or as_int.max() > num_draws:
        raise ValueError(
            f"ranks: expected integers in [0, num_draws={num_draws}], got values in "
            f"[{int(as_int.min())}, {int(as_int.max())}]."
        )
    return as_int.astype(np.int64), num_draws


def _resolve_names(names: Sequence[str] | None, num_dims: int) -> list[str]:
    if names is None:
        return [f"theta[{i}]" for i in range(num_dims)]
    if isinstance(names, str):
        raise ValueError(
            f"names: expected a sequence of {num_dims} strings, got the string {names!r}."
        )
    names = [str(name) for name in names]
    if len(names) != num_dims:
        raise ValueError(f"names: expected {num_dims} names (one per dimension), got {len(names)}.")
    return names


# ---------------------------------------------------------------------------------------------
# Figure helpers
# ---------------------------------------------------------------------------------------------


def _root_figure(ax: Axes) -> Figure:
    """Return the top-level :class:`Figure` holding ``ax``, also when it sits in a subfigure."""
    figure = ax.figure
    while isinstance(figure, SubFigure):  # a subfigure's ``figure`` is the root (matplotlib >= 3.4)
        figure = figure.figure
    return figure


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _panels(num_panels: int, axes: Any) -> tuple[Figure, list[Axes]]:
    """Return the figure and ``num_panels`` axes: from ``axes``, or a new grid of <= 4 columns."""
    if axes is None:
        num_cols = min(_MAX_COLUMNS, num_panels)
        num_rows = math.ceil(num_panels / num_cols)
        figure = _new_figure(_PANEL_SIZE[0] * num_cols, _PANEL_SIZE[1] * num_rows)
        grid = list(figure.subplots(num_rows, num_cols, squeeze=False).ravel())
        for extra in grid[num_panels:]:
            figure.delaxes(extra)
        return figure, grid[:num_panels]
    given = _flatten_axes(axes, "axes")
    if len(given) < num_panels:
        raise ValueError(
            f"axes: expected at least {num_panels} Axes (one per dimension), got {len(given)}."
        )
    return _root_figure(given[0]), given[:num_panels]


def _flatten_axes(axes: Any, name: str) -> list[Axes]:
    flat = [axes] if isinstance(axes, Axes) else list(np.ravel(np.asarray(axes, dtype=object)))
    for item in flat:
        if not isinstance(item, Axes):
            raise ValueError(f"{name}: expected matplotlib Axes, got {type(item).__name__}.")
    return flat


def _single_axes(ax: Axes | None, size: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is None:
        figure = _new_figure(*size)
        return figure, figure.subplots()
    if not isinstance(ax, Axes):
        raise ValueError(f"ax: expected a matplotlib Axes, got {type(ax).__name__}.")
    return _root_figure(ax), ax


def _panel_legend(figure: Figure, ax: Axes, *, is_new: bool) -> None:
    """Add ``ax``'s legend above a new figure's panels, or inside ``ax`` on given axes."""
    if is_new:
        handles, labels = ax.get_legend_handles_labels()
        figure.legend(
            handles,
            labels,
            loc="outside upper center",
            ncols=len(handles),
            fontsize="small",
            frameon=False,
        )
    else:
        ax.legend(fontsize="small")


def _side_legend(ax: Axes, *, is_new: bool) -> None:
    """Add the legend right of ``ax`` on a new figure, or inside it on a given axes."""
    if is_new:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize="small")


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
    ranks, num_draws = _check_ranks(ranks, num_draws)
    num_datasets, num_dims = ranks.shape
    num_ranks = num_draws + 1
    if num_bins is None:
        num_bins = _default_num_bins(num_datasets, num_ranks)
    num_bins = _check_count(num_bins, "num_bins")
    if num_bins > num_ranks:
        raise ValueError(
            f"num_bins: expected at most num_draws + 1 = {num_ranks} bins, got {num_bins}."
        )
    names = _resolve_names(names, num_dims)
    figure, panels = _panels(num_dims, axes)

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
            color=_GUIDE_COLOR,
            alpha=0.8,
            edgecolor="white",
            linewidth=0.5,
            label="observed",
        )
        ax.stairs(expected, edges, color=_IDEAL_COLOR, linestyle="--", label="expected")
        ax.set_xlim(edges[0], edges[-1])
        ax.set_title(name)
        ax.set_xlabel("rank")
        ax.set_ylabel("count")
    _panel_legend(figure, panels[0], is_new=axes is None)
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
    ranks, num_draws = _check_ranks(ranks, num_draws)
    num_dims = ranks.shape[1]
    names = _resolve_names(names, num_dims)
    if band is not None:
        band_z, band_lower, band_upper = _check_band(band)
    if p_values is not None:
        p_values = _as_finite(p_values, "p_values", ndim=1, expected=f"({num_dims},)")
        if p_values.shape != (num_dims,):
            raise ValueError(
                _SHAPE_ERROR.format(name="p_values", expected=(num_dims,), got=p_values.shape)
            )
    figure, panels = _panels(num_dims, axes)

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
        ax.step(z, difference, where="post", color=_GUIDE_COLOR, linewidth=1.2, label="ECDF(z) - z")
        ax.axhline(0.0, color=_IDEAL_COLOR, linestyle="--", linewidth=0.8)
        ax.set_xlim(0.0, 1.0)
        title = name if p_values is None else f"{name} ({_format_p(p_values[i])})"
        ax.set_title(title)
        ax.set_xlabel("fractional rank z")
        ax.set_ylabel("ECDF(z) - z")
    _panel_legend(figure, panels[0], is_new=axes is None)
    return figure


def _format_p(p_value: float) -> str:
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.3f}"


def _check_band(band: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(band, tuple | list) or len(band) != 3:
        raise ValueError("band: expected a tuple (z, lower, upper) of three (K,) arrays.")
    z, lower, upper = (
        _as_finite(part, f"band[{j}] ({label})", ndim=1, expected="(K,)")
        for j, (part, label) in enumerate(zip(band, ("z", "lower", "upper")))
    )
    _check_same_shape(lower, "band[1] (lower)", z, "band[0] (z)")
    _check_same_shape(upper, "band[2] (upper)", z, "band[0] (z)")
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
    levels = _as_finite(levels, "levels", ndim=1, expected="(M,)")
    if levels.min() <= 0.0 or levels.max() >= 1.0:
        raise ValueError(
            f"levels: expected credible levels in (0, 1), got [{levels.min()}, {levels.max()}]."
        )
    num_levels = levels.shape[0]
    expected = f"({num_levels},) or ({num_levels}, D)"
    coverage = _as_finite(coverage, "coverage", ndim=(1, 2), expected=expected)
    if coverage.shape[0] != num_levels:
        raise ValueError(
            _SHAPE_ERROR.format(name="coverage", expected=expected, got=coverage.shape)
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
        labels = _resolve_names(names, coverage.shape[1])
    is_new = ax is None
    figure, ax = _single_axes(ax, (5.8, 4.0))

    order = np.argsort(levels, kind="stable")
    levels, coverage = levels[order], coverage[order]
    if num_datasets is not None:
        num_datasets = _check_count(num_datasets, "num_datasets")
        grid = np.linspace(0.0, 1.0, 201)
        lower = stats.binom.ppf(0.025, num_datasets, grid) / num_datasets
        upper = stats.binom.ppf(0.975, num_datasets, grid) / num_datasets
        ax.fill_between(
            grid, lower, upper, color="0.85", linewidth=0, label=f"95% band (B = {num_datasets})"
        )
    ax.plot(
        [0.0, 1.0], [0.0, 1.0], color=_IDEAL_COLOR, linestyle="--", linewidth=0.8, label="ideal"
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
    _side_legend(ax, is_new=is_new)
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
    truth = _as_finite(truth, "truth", ndim=2, expected="(B, D)")
    mean = _as_finite(mean, "mean", ndim=2, expected="(B, D)")
    _check_same_shape(mean, "mean", truth, "truth")
    if (lower is None) != (upper is None):
        raise ValueError("lower, upper: give both interval ends or neither.")
    if lower is not None:
        lower = _as_finite(lower, "lower", ndim=2, expected="(B, D)")
        upper = _as_finite(upper, "upper", ndim=2, expected="(B, D)")
        _check_same_shape(lower, "lower", truth, "truth")
        _check_same_shape(upper, "upper", truth, "truth")
        if np.any(lower > upper):
            raise ValueError("lower, upper: expected lower <= upper everywhere.")
    num_dims = truth.shape[1]
    names = _resolve_names(names, num_dims)
    figure, panels = _panels(num_dims, axes)

    for i, (ax, name) in enumerate(zip(panels, names)):
        values = [truth[:, i], mean[:, i]]
        if lower is not None:
            ax.vlines(
                truth[:, i],
                lower[:, i],
                upper[:, i],
                color=_GUIDE_COLOR,
                alpha=0.35,
                linewidth=1.0,
                label="interval",
            )
            values += [lower[:, i], upper[:, i]]
        ax.scatter(
            truth[:, i], mean[:, i], s=10, color=_GUIDE_COLOR, zorder=3, label="posterior mean"
        )
        low, high = min(v.min() for v in values), max(v.max() for v in values)
        pad = 0.05 * (high - low) if high > low else 0.5
        ax.plot(
            [low - pad, high + pad],
            [low - pad, high + pad],
            color=_IDEAL_COLOR,
            linestyle="--",
            linewidth=0.8,
            label="y = x",
        )
        ax.set_title(f"{name} (r = {_correlation(truth[:, i], mean[:, i]):.2f})")
        ax.set_xlabel("true value")
        ax.set_ylabel("posterior mean")
    _panel_legend(figure, panels[0], is_new=axes is None)
    return figure


# ---------------------------------------------------------------------------------------------
# One data set against a reference posterior
# ---------------------------------------------------------------------------------------------


def _check_draws_pair(
    draws: Any, reference: Any, labels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, str]]:
    draws = _as_finite(draws, "draws", ndim=2, expected="(S, D)")
    if reference is not None:
        reference = _as_finite(reference, "reference", ndim=2, expected=f"(S2, {draws.shape[1]})")
        if reference.shape[1] != draws.shape[1]:
            raise ValueError(
                _SHAPE_ERROR.format(
                    name="reference", expected=f"(S2, {draws.shape[1]})", got=reference.shape
                )
            )
    if isinstance(labels, str) or len(labels) != 2:
        raise ValueError(f"labels: expected two strings (draws, reference), got {labels!r}.")
    return draws, reference, (str(labels[0]), str(labels[1]))


def plot_marginals(
    draws: Any,
    reference: Any = None,
    *,
    names: Sequence[str] | None = None,
    labels: Sequence[str] = ("guide", "reference"),
    num_bins: int = 40,
    axes: Any = None,
) -> Figure:
    """Plot marginal histograms of posterior draws, overlaid on reference draws when given.

    Both histograms of a dimension share bins spanning all draws and are normalised as
    densities, so different numbers of draws compare directly.

    Args:
        draws: Posterior draws of shape ``(S, D)`` for one data set.
        reference: Optional reference draws of shape ``(S2, D)`` (e.g. long NUTS).
        names: ``D`` panel titles; defaults to ``theta[i]``.
        labels: Legend labels for ``draws`` and ``reference``.
        num_bins: Number of shared bins per dimension.
        axes: ``D`` (or more) Axes to draw into; by default a new figure is created.

    Returns:
        The figure holding the panels.

    Raises:
        ValueError: for ``draws`` not ``(S, D)``, ``reference`` not ``(S2, D)``, non-finite
            values, or bad ``labels``, ``num_bins``, ``names`` or ``axes``.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> fig = plot_marginals(rng.normal(size=(500, 3)), rng.normal(size=(2000, 3)))
    """
    draws, reference, labels = _check_draws_pair(draws, reference, labels)
    num_bins = _check_count(num_bins, "num_bins")
    num_dims = draws.shape[1]
    names = _resolve_names(names, num_dims)
    figure, panels = _panels(num_dims, axes)

    for i, (ax, name) in enumerate(zip(panels, names)):
        _draw_marginal(
            ax, draws[:, i], None if reference is None else reference[:, i], labels, num_bins
        )
        ax.set_title(name)
        ax.set_xlabel("value")
        ax.set_ylabel("density")
    if reference is not None:
        _panel_legend(figure, panels[0], is_new=axes is None)
    return figure


def _draw_marginal(
    ax: Axes,
    values: np.ndarray,
    reference: np.ndarray | None,
    labels: tuple[str, str],
    num_bins: int,
) -> None:
    combined = values if reference is None else np.concatenate([values, reference])
    edges = np.histogram_bin_edges(combined, bins=num_bins)
    ax.hist(
        values,
        bins=edges,
        density=True,
        histtype="stepfilled",
        color=_GUIDE_COLOR,
        alpha=0.45,
        label=labels[0],
    )
    if reference is not None:
        ax.hist(
            reference,
            bins=edges,
            density=True,
            histtype="step",
            color=_REFERENCE_COLOR,
            linewidth=1.5,
            label=labels[1],
        )


def _thin(values: np.ndarray, max_points: int) -> np.ndarray:
    """Keep at most ``max_points`` rows, evenly spaced (deterministic)."""
    if values.shape[0] <= max_points:
        return values
    return values[np.linspace(0, values.shape[0] - 1, max_points).astype(np.int64)]


def plot_pairs(
    draws: Any,
    reference: Any = None,
    *,
    names: Sequence[str] | None = None,
    max_dims: int = 4,
    labels: Sequence[str] = ("guide", "reference"),
    max_points: int = 1000,
    num_bins: int = 30,
    axes: Any = None,
) -> Figure:
    """Plot a corner plot of the first ``max_dims`` dimensions, overlaid on reference draws.

    The lower triangle holds pairwise scatter plots (each thinned to ``max_points`` evenly
    spaced draws), the diagonal the marginal histograms; the upper triangle is left out. It
    shows correlations that a mean-field guide misses and that marginals cannot show.

    Args:
        draws: Posterior draws of shape ``(S, D)`` for one data set.
        reference: Optional reference draws of shape ``(S2, D)``.
        names: ``D`` axis labels; defaults to ``theta[i]``.
        max_dims: Plot at most this many leading dimensions, ``K = min(D, max_dims)``.
        labels: Legend labels for ``draws`` and ``reference``.
        max_points: Most points per scatter and source.
        num_bins: Number of shared bins of the diagonal histograms.
        axes: A ``(K, K)`` grid of Axes to draw into (upper triangle is switched off); by
            default a new figure with ``K (K + 1) / 2`` panels is created.

    Returns:
        The figure holding the panels.

    Raises:
        ValueError: for bad shapes (see :func:`plot_marginals`), bad ``max_dims``,
            ``max_points`` or ``num_bins``, or ``axes`` not ``K * K`` Axes.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> fig = plot_pairs(rng.normal(size=(500, 5)), max_dims=3)
        >>> len(fig.axes)
        6
    """
    draws, reference, labels = _check_draws_pair(draws, reference, labels)
    max_dims = _check_count(max_dims, "max_dims")
    max_points = _check_count(max_points, "max_points")
    num_bins = _check_count(num_bins, "num_bins")
    names = _resolve_names(names, draws.shape[1])
    k = min(draws.shape[1], max_dims)
    if axes is None:
        figure = _new_figure(2.4 * k + 0.6, 2.4 * k + 0.3)
        grid = figure.subplots(k, k, squeeze=False)
        for row in range(k):
            for col in range(row + 1, k):
                figure.delaxes(grid[row, col])
    else:
        flat = _flatten_axes(axes, "axes")
        if len(flat) != k * k:
            raise ValueError(
                f"axes: expected a ({k}, {k}) grid of Axes ({k * k} in all), got {len(flat)}."
            )
        figure = _root_figure(flat[0])
        grid = np.empty((k, k), dtype=object)
        for index, ax in enumerate(flat):
            grid[index // k, index % k] = ax
        for row in range(k):
            for col in range(row + 1, k):
                grid[row, col].set_axis_off()

    thinned = _thin(draws[:, :k], max_points)
    thinned_ref = None if reference is None else _thin(reference[:, :k], max_points)
    combined = (
        draws[:, :k] if reference is None else np.concatenate([draws[:, :k], reference[:, :k]])
    )
    low, high = combined.min(axis=0), combined.max(axis=0)
    pad = np.where(high > low, 0.03 * (high - low), 0.5)
    limits = np.stack([low - pad, high + pad], axis=1)
    for row in range(k):
        for col in range(row + 1):
            ax = grid[row, col]
            if row == col:
                _draw_marginal(
                    ax,
                    draws[:, col],
                    None if reference is None else reference[:, col],
                    labels,
                    num_bins,
                )
                ax.set_yticks([])
            else:
                if thinned_ref is not None:
                    ax.scatter(
                        thinned_ref[:, col],
                        thinned_ref[:, row],
                        s=3,
                        alpha=0.3,
                        color=_REFERENCE_COLOR,
                        linewidths=0,
                        label=labels[1],
                    )
                ax.scatter(
                    thinned[:, col],
                    thinned[:, row],
                    s=3,
                    alpha=0.3,
                    color=_GUIDE_COLOR,
                    linewidths=0,
                    label=labels[0],
                )
            ax.set_xlim(*limits[col])
            if row != col:
                ax.set_ylim(*limits[row])
            if row == k - 1:
                ax.set_xlabel(names[col])
            if col == 0 and row > 0:
                ax.set_ylabel(names[row])
    if reference is not None and axes is None and k > 1:
        handles, texts = grid[0, 0].get_legend_handles_labels()
        figure.legend(handles, texts, loc="upper right", fontsize="small")
    elif reference is not None:
        grid[0, 0].legend(fontsize="small")
    return figure


# ---------------------------------------------------------------------------------------------
# Importance-sampling reliability
# ---------------------------------------------------------------------------------------------


def plot_khat(
    khat: Any,
    *,
    paths: Sequence[str] | None = None,
    thresholds: Sequence[float] = (0.5, 0.7),
    ax: Axes | None = None,
) -> Figure:
    """Plot the Pareto k-hat of importance weights for each data set, with threshold lines.

    Below 0.5 importance sampling from the guide is reliable; above 0.7 the guide is too far
    from the posterior for importance weights to repair it, and a correction step or MCMC is
    needed.

    Args:
        khat: Pareto shape estimates of shape ``(B,)``, one per data set.
        paths: Optional ``(B,)`` strings naming how each data set was finally handled (e.g.
            ``"amortized"``, ``"corrected"``, ``"nuts"``); points are colored by path.
        thresholds: k-hat values drawn as horizontal lines.
        ax: Axes to draw into; by default a new figure is created.

    Returns:
        The figure holding the axes.

    Raises:
        ValueError: for ``khat`` not ``(B,)`` or non-finite, ``paths`` not ``B`` strings, or
            non-finite ``thresholds``.

    Examples:
        >>> fig = plot_khat([0.2, 0.6, 0.9], paths=["amortized", "corrected", "nuts"])
    """
    khat = _as_finite(khat, "khat", ndim=1, expected="(B,)")
    num_datasets = khat.shape[0]
    if paths is not None:
        paths = np.asarray(paths)
        if paths.shape != (num_datasets,):
            raise ValueError(
                _SHAPE_ERROR.format(name="paths", expected=(num_datasets,), got=paths.shape)
            )
        paths = [str(path) for path in paths]
    thresholds = np.asarray(thresholds, dtype=float).reshape(-1)
    if not np.all(np.isfinite(thresholds)):
        raise ValueError(f"thresholds: expected finite k-hat values, got {thresholds.tolist()}.")
    is_new = ax is None
    figure, ax = _single_axes(ax, (min(11.0, 6.0 + 0.02 * num_datasets), 3.2))

    index = np.arange(num_datasets)
    if paths is None:
        ax.scatter(index, khat, s=14, color=_GUIDE_COLOR, zorder=3)
    else:
        for j, path in enumerate(dict.fromkeys(paths)):  # first-appearance order
            mask = np.array([p == path for p in paths])
            ax.scatter(
                index[mask],
                khat[mask],
                s=14,
                color=f"C{j % 10}",
                zorder=3,
                label=f"{path} ({int(mask.sum())})",
            )
    styles = ["--", ":", "-."]
    for j, threshold in enumerate(thresholds):
        ax.axhline(
            threshold,
            color="0.35",
            linestyle=styles[j % len(styles)],
            linewidth=0.9,
            label=f"k-hat = {threshold:g}",
        )
    ax.set_title("Pareto k-hat per data set")
    ax.set_xlabel("data set")
    ax.set_ylabel("Pareto k-hat")
    if paths is not None or len(thresholds):
        _side_legend(ax, is_new=is_new)
    return figure


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` to ``path`` atomically, in the format named by the suffix.

    The figure is written to a temporary file in the target directory and moved over ``path``
    with :func:`os.replace`, so readers never see a half-written file. Missing parent
    directories are created.

    Args:
        fig: The figure to write.
        path: Destination, e.g. ``"out/sbc.png"``; the suffix (``.png``, ``.pdf``, ``.svg``, ...)
            picks the format.

    Returns:
        The destination as a :class:`pathlib.Path`.

    Raises:
        ValueError: for a path without a suffix or with a format matplotlib cannot write.

    Examples:
        >>> save_figure(plot_khat([0.2, 0.9]), "/tmp/khat.png")  # doctest: +SKIP
        PosixPath('/tmp/khat.png')
    """
    if not isinstance(fig, Figure):
        raise ValueError(f"fig: expected a matplotlib Figure, got {type(fig).__name__}.")
    path = Path(path)
    file_format = path.suffix[1:].lower()
    supported = fig.canvas.get_supported_filetypes()
    if file_format not in supported:
        raise ValueError(
            f"path: cannot infer a supported format from suffix {path.suffix!r}; "
            f"use one of {sorted(supported)}."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "xb") as handle:  # "x": never clobber; honours the umask
            fig.savefig(handle, format=file_format)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
