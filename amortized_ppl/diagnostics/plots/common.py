"""Shared pieces of the plots: input checks, panel grids, legends and atomic saving."""

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

__all__ = ["save_figure"]

SHAPE_ERROR = "{name}: expected shape {expected}, got {got}."
_MAX_COLUMNS = 4
_PANEL_SIZE = (3.2, 2.6)  # inches per panel (width, height)
GUIDE_COLOR, REFERENCE_COLOR, IDEAL_COLOR = "C0", "C1", "0.2"


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------


def as_finite(value: Any, name: str, *, ndim: int | tuple[int, ...], expected: str) -> np.ndarray:
    """Return ``value`` as a finite float array with ``ndim`` axes, none of them empty."""
    array = np.asarray(value)
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if array.ndim not in ndims or array.size == 0:
        raise ValueError(SHAPE_ERROR.format(name=name, expected=expected, got=array.shape))
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


def check_same_shape(value: np.ndarray, name: str, reference: np.ndarray, ref_name: str) -> None:
    if value.shape != reference.shape:
        raise ValueError(
            SHAPE_ERROR.format(
                name=name, expected=f"{reference.shape} (as {ref_name})", got=value.shape
            )
        )


def check_count(value: Any, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}.")
    return int(value)


def check_ranks(ranks: Any, num_draws: Any) -> tuple[np.ndarray, int]:
    """Return ranks as an int array ``(B, D)`` with values in ``{0, ..., num_draws}``."""
    num_draws = check_count(num_draws, "num_draws")
    values = as_finite(ranks, "ranks", ndim=2, expected="(B, D)")
    as_int = np.rint(values)
    if not np.array_equal(as_int, values):
        raise ValueError("ranks: expected integer ranks, got non-integer values.")
    if as_int.min() < 0 or as_int.max() > num_draws:
        raise ValueError(
            f"ranks: expected integers in [0, num_draws={num_draws}], got values in "
            f"[{int(as_int.min())}, {int(as_int.max())}]."
        )
    return as_int.astype(np.int64), num_draws


def resolve_names(names: Sequence[str] | None, num_dims: int) -> list[str]:
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


def root_figure(ax: Axes) -> Figure:
    """Return the top-level :class:`Figure` holding ``ax``, also when it sits in a subfigure."""
    figure = ax.figure
    while isinstance(figure, SubFigure):  # a subfigure's ``figure`` is the root (matplotlib >= 3.4)
        figure = figure.figure
    return figure


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def make_panels(num_panels: int, axes: Any) -> tuple[Figure, list[Axes]]:
    """Return the figure and ``num_panels`` axes: from ``axes``, or a new grid of <= 4 columns."""
    if axes is None:
        num_cols = min(_MAX_COLUMNS, num_panels)
        num_rows = math.ceil(num_panels / num_cols)
        figure = new_figure(_PANEL_SIZE[0] * num_cols, _PANEL_SIZE[1] * num_rows)
        grid = list(figure.subplots(num_rows, num_cols, squeeze=False).ravel())
        for extra in grid[num_panels:]:
            figure.delaxes(extra)
        return figure, grid[:num_panels]
    given = flatten_axes(axes, "axes")
    if len(given) < num_panels:
        raise ValueError(
            f"axes: expected at least {num_panels} Axes (one per dimension), got {len(given)}."
        )
    return root_figure(given[0]), given[:num_panels]


def flatten_axes(axes: Any, name: str) -> list[Axes]:
    flat = [axes] if isinstance(axes, Axes) else list(np.ravel(np.asarray(axes, dtype=object)))
    for item in flat:
        if not isinstance(item, Axes):
            raise ValueError(f"{name}: expected matplotlib Axes, got {type(item).__name__}.")
    return flat


def single_axes(ax: Axes | None, size: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is None:
        figure = new_figure(*size)
        return figure, figure.subplots()
    if not isinstance(ax, Axes):
        raise ValueError(f"ax: expected a matplotlib Axes, got {type(ax).__name__}.")
    return root_figure(ax), ax


def panel_legend(figure: Figure, ax: Axes, *, is_new: bool) -> None:
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


def side_legend(ax: Axes, *, is_new: bool) -> None:
    """Add the legend right of ``ax`` on a new figure, or inside it on a given axes."""
    if is_new:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize="small")


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
