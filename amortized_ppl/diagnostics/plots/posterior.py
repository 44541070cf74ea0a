"""Posterior plots for one data set against a reference, and Pareto k-hat per data set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from amortized_ppl.diagnostics.plots.common import (
    GUIDE_COLOR,
    REFERENCE_COLOR,
    SHAPE_ERROR,
    as_finite,
    check_count,
    flatten_axes,
    make_panels,
    new_figure,
    panel_legend,
    resolve_names,
    root_figure,
    side_legend,
    single_axes,
)

__all__ = ["plot_khat", "plot_marginals", "plot_pairs"]


# One data set against a reference posterior
# ---------------------------------------------------------------------------------------------


def _check_draws_pair(
    draws: Any, reference: Any, labels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, str]]:
    draws = as_finite(draws, "draws", ndim=2, expected="(S, D)")
    if reference is not None:
        reference = as_finite(reference, "reference", ndim=2, expected=f"(S2, {draws.shape[1]})")
        if reference.shape[1] != draws.shape[1]:
            raise ValueError(
                SHAPE_ERROR.format(
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
    num_bins = check_count(num_bins, "num_bins")
    num_dims = draws.shape[1]
    names = resolve_names(names, num_dims)
    figure, panels = make_panels(num_dims, axes)

    for i, (ax, name) in enumerate(zip(panels, names)):
        _draw_marginal(
            ax, draws[:, i], None if reference is None else reference[:, i], labels, num_bins
        )
        ax.set_title(name)
        ax.set_xlabel("value")
        ax.set_ylabel("density")
    if reference is not None:
        panel_legend(figure, panels[0], is_new=axes is None)
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
        color=GUIDE_COLOR,
        alpha=0.45,
        label=labels[0],
    )
    if reference is not None:
        ax.hist(
            reference,
            bins=edges,
            density=True,
            histtype="step",
            color=REFERENCE_COLOR,
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
    max_dims = check_count(max_dims, "max_dims")
    max_points = check_count(max_points, "max_points")
    num_bins = check_count(num_bins, "num_bins")
    names = resolve_names(names, draws.shape[1])
    k = min(draws.shape[1], max_dims)
    if axes is None:
        figure = new_figure(2.4 * k + 0.6, 2.4 * k + 0.3)
        grid = figure.subplots(k, k, squeeze=False)
        for row in range(k):
            for col in range(row + 1, k):
                figure.delaxes(grid[row, col])
    else:
        flat = flatten_axes(axes, "axes")
        if len(flat) != k * k:
            raise ValueError(
                f"axes: expected a ({k}, {k}) grid of Axes ({k * k} in all), got {len(flat)}."
            )
        figure = root_figure(flat[0])
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
                        color=REFERENCE_COLOR,
                        linewidths=0,
                        label=labels[1],
                    )
                ax.scatter(
                    thinned[:, col],
                    thinned[:, row],
                    s=3,
                    alpha=0.3,
                    color=GUIDE_COLOR,
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
    khat = as_finite(khat, "khat", ndim=1, expected="(B,)")
    num_datasets = khat.shape[0]
    if paths is not None:
        paths = np.asarray(paths)
        if paths.shape != (num_datasets,):
            raise ValueError(
                SHAPE_ERROR.format(name="paths", expected=(num_datasets,), got=paths.shape)
            )
        paths = [str(path) for path in paths]
    thresholds = np.asarray(thresholds, dtype=float).reshape(-1)
    if not np.all(np.isfinite(thresholds)):
        raise ValueError(f"thresholds: expected finite k-hat values, got {thresholds.tolist()}.")
    is_new = ax is None
    figure, ax = single_axes(ax, (min(11.0, 6.0 + 0.02 * num_datasets), 3.2))

    index = np.arange(num_datasets)
    if paths is None:
        ax.scatter(index, khat, s=14, color=GUIDE_COLOR, zorder=3)
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
        side_legend(ax, is_new=is_new)
    return figure
