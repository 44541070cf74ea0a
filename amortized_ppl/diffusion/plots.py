"""Plots of diffusion-posterior samplers: 2-D draws over the target, mode weights per method.

Both functions return a :class:`matplotlib.figure.Figure` built without pyplot (so they work
under any backend, Agg included, and never open a window); save it with
:func:`amortized_ppl.diagnostics.plots.save_figure`. They draw into given axes when asked, so
they compose into larger figures.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from amortized_ppl.diagnostics.plots.common import (
    IDEAL_COLOR,
    SHAPE_ERROR,
    as_finite,
    check_count,
    make_panels,
    side_legend,
    single_axes,
)

__all__ = ["plot_mode_weights", "plot_samples_2d"]


def _check_methods(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not value:
        got = "an empty dict" if isinstance(value, Mapping) else type(value).__name__
        raise ValueError(
            f"{name}: expected a non-empty dict from method name to values, got {got}."
        )
    return {str(method): values for method, values in value.items()}


def _check_extent(extent: Any) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in extent)
    except (TypeError, ValueError):
        raise ValueError(f"extent: expected (xmin, xmax, ymin, ymax), got {extent!r}.") from None
    if len(values) != 4 or not all(np.isfinite(values)):
        raise ValueError(
            f"extent: expected four finite numbers (xmin, xmax, ymin, ymax), got {extent!r}."
        )
    if not (values[0] < values[1] and values[2] < values[3]):
        raise ValueError(f"extent: expected xmin < xmax and ymin < ymax, got {extent!r}.")
    return values  # type: ignore[return-value]


def _default_extent(samples: Sequence[np.ndarray]) -> tuple[float, float, float, float]:
    """A square box around all draws, 5% padding, 1 unit when they all coincide."""
    combined = np.concatenate(samples)
    low, high = combined.min(axis=0), combined.max(axis=0)
    centre, half = (low + high) / 2, max(float(np.max(high - low)) / 2, 0.5) * 1.05
    return centre[0] - half, centre[0] + half, centre[1] - half, centre[1] + half


def _log_density_grid(
    log_density_fn: Callable, extent: tuple[float, float, float, float], grid_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs = np.linspace(extent[0], extent[1], grid_size)
    ys = np.linspace(extent[2], extent[3], grid_size)
    grid_x, grid_y = np.meshgrid(xs, ys)
    points = np.stack([grid_x.ravel(), grid_y.ravel()], axis=-1).astype(np.float32)
    values = np.asarray(log_density_fn(points), dtype=float)
    if values.shape != (points.shape[0],):
        raise ValueError(
            SHAPE_ERROR.format(
                name="log_density_fn(points)", expected=f"({points.shape[0]},)", got=values.shape
            )
        )
    if np.any(np.isnan(values) | (values == np.inf)) or not np.any(np.isfinite(values)):
        raise ValueError(
            "log_density_fn: returned NaN, +inf or no finite value on the plotting grid; it must "
            "map points (P, 2) to finite log densities (P,) (-inf allowed off the support)."
        )
    return grid_x, grid_y, values.reshape(grid_x.shape)


def plot_samples_2d(
    samples_by_method: Mapping[str, Any],
    log_density_fn: Callable[[np.ndarray], Any] | None = None,
    *,
    extent: Sequence[float] | None = None,
    grid_size: int = 200,
    log_density_range: float = 12.0,
    num_levels: int = 12,
    max_points: int = 2000,
    axes: Any = None,
) -> Figure:
    """Scatter each method's 2-D draws in its own panel, over contours of the target density.

    The (unnormalized) log density is evaluated once on a ``grid_size x grid_size`` grid over
    ``extent`` and drawn as ``num_levels`` filled contours from its maximum down to
    ``log_density_range`` nats below it (lower values are left blank): log-density contours
    show the small modes that density contours hide (the 2-D toy's corner modes are 64 times
    lighter than its centre). All panels share ``extent`` and an equal aspect ratio.

    Args:
        samples_by_method: Method name to draws of shape ``(n, 2)``, one panel each, in order.
        log_density_fn: ``points (P, 2) float32 -> (P,)`` log density up to a constant, e.g.
            ``problem.log_joint`` or ``problem.exact_posterior.log_prob``; ``None`` for no
            contours.
        extent: ``(xmin, xmax, ymin, ymax)`` of every panel; by default a square box around all
            draws.
        grid_size: Grid points per axis for the contours, at least 2.
        log_density_range: Nats below the maximum that the contours span, positive.
        num_levels: Number of contour levels, at least 2.
        max_points: Most draws shown per method (evenly spaced), at least 1.
        axes: As many Axes as methods (or more) to draw into; by default a new figure with a
            grid of at most 4 columns.

    Returns:
        The figure holding the panels.

    Raises:
        ValueError: naming the argument, for an empty ``samples_by_method``, draws not
            ``(n, 2)`` or with NaN/Inf, a bad ``extent``, counts or ``axes``, or a
            ``log_density_fn`` that returns the wrong shape or NaN.

    Examples:
        >>> from amortized_ppl.models.inverse_problems import toy_2d_problem  # doctest: +SKIP
        >>> problem = toy_2d_problem()  # doctest: +SKIP
        >>> fig = plot_samples_2d(  # doctest: +SKIP
        ...     {"exact": problem.exact_posterior.sample(jax.random.key(0), 2000), "rtb": draws},
        ...     problem.log_joint, extent=(-12, 12, -12, 12))
    """
    methods = _check_methods(samples_by_method, "samples_by_method")
    draws = {
        method: as_finite(values, f"samples_by_method[{method!r}]", ndim=2, expected="(n, 2)")
        for method, values in methods.items()
    }
    for method, values in draws.items():
        if values.shape[1] != 2:
            raise ValueError(
                SHAPE_ERROR.format(
                    name=f"samples_by_method[{method!r}]", expected="(n, 2)", got=values.shape
                )
            )
    grid_size = check_count(grid_size, "grid_size", minimum=2)
    num_levels = check_count(num_levels, "num_levels", minimum=2)
    max_points = check_count(max_points, "max_points")
    if not (np.isfinite(log_density_range) and float(log_density_range) > 0):
        raise ValueError(
            f"log_density_range: expected a positive number, got {log_density_range!r}."
        )
    if log_density_fn is not None and not callable(log_density_fn):
        raise ValueError(
            f"log_density_fn: expected a callable or None, got {type(log_density_fn).__name__}."
        )
    extent = _default_extent(list(draws.values())) if extent is None else _check_extent(extent)
    figure, panels = make_panels(len(draws), axes)

    grid = None
    if log_density_fn is not None:
        grid_x, grid_y, values = _log_density_grid(log_density_fn, extent, grid_size)
        top = float(np.max(values[np.isfinite(values)]))
        levels = np.linspace(top - float(log_density_range), top, num_levels)
        # -inf (off the support) becomes a finite value below the lowest level: left blank.
        grid = grid_x, grid_y, np.where(np.isfinite(values), values, levels[0] - 1.0), levels

    for ax, (method, values) in zip(panels, draws.items()):
        if grid is not None:
            grid_x, grid_y, values_grid, levels = grid
            ax.contourf(grid_x, grid_y, values_grid, levels=levels, cmap="Greys", alpha=0.6)
        shown = values
        if values.shape[0] > max_points:
            shown = values[np.linspace(0, values.shape[0] - 1, max_points).astype(np.int64)]
        ax.scatter(shown[:, 0], shown[:, 1], s=3, alpha=0.5, color="C0", linewidths=0)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_aspect("equal")
        ax.set_title(f"{method} (n={values.shape[0]})")
        ax.set_xlabel("x[0]")
        ax.set_ylabel("x[1]")
    return figure


def plot_mode_weights(
    weights_by_method: Mapping[str, Any],
    exact_weights: Any,
    *,
    labels: Sequence[str] | None = None,
    top_k: int = 9,
    show_rest: bool = True,
    log_scale: bool = False,
    ax: Any = None,
) -> Figure:
    """Plot grouped bars of each method's mode weights next to the exact weights.

    Only the ``top_k`` components of largest exact weight are shown, heaviest first (for the
    2-D toy the default 9 are its centre modes, 99.92% of the mass); with ``show_rest`` a last
    group ``"rest"`` sums every other component, which shows mass a sampler put in modes the
    posterior leaves (nearly) empty. The exact weights are the first, dark bar of each group.

    Args:
        weights_by_method: Method name to weights of shape ``(K,)`` (e.g. from
            :func:`amortized_ppl.diffusion.metrics.mode_weights`).
        exact_weights: Exact weights of shape ``(K,)``.
        labels: ``K`` component names for the x axis (e.g. ``"(0, 5)"``); by default the
            component indices.
        top_k: Components shown, at least 1 (all of them when ``K <= top_k``).
        show_rest: Add the ``"rest"`` group when components are left out.
        log_scale: Logarithmic y axis (small modes become visible; zero bars vanish).
        ax: One Axes to draw into; by default a new figure.

    Returns:
        The figure holding the plot.

    Raises:
        ValueError: naming the argument, for an empty ``weights_by_method``, weights not
            ``(K,)`` or with NaN/Inf or negative entries, ``labels`` of the wrong length, or a bad
            ``top_k`` or ``ax``.

    Examples:
        >>> fig = plot_mode_weights({"rtb": [0.7, 0.2, 0.1]}, [0.6, 0.3, 0.1])
        >>> len(fig.axes)
        1
    """
    methods = _check_methods(weights_by_method, "weights_by_method")
    exact = as_finite(exact_weights, "exact_weights", ndim=1, expected="(K,)")
    num_components = exact.shape[0]
    weights = {}
    for method, values in methods.items():
        name = f"weights_by_method[{method!r}]"
        values = as_finite(values, name, ndim=1, expected=f"({num_components},)")
        if values.shape != exact.shape:
            raise ValueError(
                SHAPE_ERROR.format(name=name, expected=f"({num_components},)", got=values.shape)
            )
        weights[method] = values
    for name, values in [("exact_weights", exact)] + [
        (f"weights_by_method[{m!r}]", v) for m, v in weights.items()
    ]:
        if np.any(values < 0):
            raise ValueError(f"{name}: expected non-negative weights, got {values.min():.3g}.")
    if labels is None:
        labels = [str(k) for k in range(num_components)]
    elif isinstance(labels, str) or len(labels) != num_components:
        raise ValueError(
            f"labels: expected {num_components} component names, got "
            f"{labels!r}" + ("." if isinstance(labels, str) else f" ({len(labels)} names).")
        )
    top_k = check_count(top_k, "top_k")
    is_new = ax is None
    num_groups = min(top_k + 1, num_components)
    figure, ax = single_axes(ax, (1.5 + 0.22 * num_groups * (1 + len(weights)), 3.2))

    order = np.argsort(-exact, kind="stable")
    shown, rest = order[:top_k], order[top_k:]
    names = [str(labels[k]) for k in shown]
    has_rest = show_rest and rest.size > 0
    if has_rest:
        names.append("rest")

    def grouped(values: np.ndarray) -> np.ndarray:
        out = values[shown]
        return np.append(out, values[rest].sum()) if has_rest else out

    series = [("exact", grouped(exact), IDEAL_COLOR)] + [
        (method, grouped(values), f"C{i}") for i, (method, values) in enumerate(weights.items())
    ]
    positions = np.arange(len(names))
    width = 0.8 / len(series)
    for i, (label, heights, color) in enumerate(series):
        offset = (i - (len(series) - 1) / 2) * width
        ax.bar(positions + offset, heights, width=width, color=color, label=label)
    ax.set_xticks(positions, names, rotation=45 if max(map(len, names)) > 4 else 0)
    ax.set_xlabel("component (by exact weight)")
    ax.set_ylabel("weight")
    if log_scale:
        ax.set_yscale("log")
    side_legend(ax, is_new=is_new)
    return figure
