"""Data files for the command line: read a data set from CSV or ``.npz``, write posterior draws.

CSV layout: the header names the model's arguments, one row per observation. A column named
like an argument (``y``) gives a vector ``(N,)``; columns sharing an argument's name with an index
suffix, ``x_0, x_1, ..., x_{k-1}`` or ``x[0], x[1], ..., x[k-1]``, give one matrix ``(N, k)`` in
index order (the indices must run from 0 without gaps). Cells must be numbers; a column (or group
of columns) whose every cell is an integer gives an integer array, any other a float array.
Arguments that are not per-observation (sizes, scalars) keep the model's defaults; give them, or
arrays of other shapes, in an ``.npz`` file instead: one array per model argument, named after it
(0-d arrays become Python scalars).

Draws are written as ``.npz`` (one array per latent site, ``(num_samples, *site_shape)``, or
``(num_datasets, num_samples, *site_shape)`` for a batch) or as an ArviZ netCDF file (``.nc``,
through :func:`amortized_ppl.diagnostics.to_inference_data`).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["DRAW_SUFFIXES", "check_draws_path", "group_columns", "read_data", "write_draws"]

DRAW_SUFFIXES = (".npz", ".nc")
_INDEXED = re.compile(r"^(?P<name>.+?)(?:_(?P<i>\d+)|\[(?P<j>\d+)\])$")
_CONVENTION = "a matrix argument x is given as columns x_0, x_1, ... or x[0], x[1], ..."


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "none"


def group_columns(
    header: Sequence[str], argument_names: Sequence[str], where: str
) -> dict[str, list[int] | int]:
    """Which CSV columns give which model argument.

    Args:
        header: the column names.
        argument_names: the model's argument names.
        where: the file, named in errors.

    Returns:
        argument -> the column's position (a vector argument), or the positions of its
        ``x_0, x_1, ...`` columns in index order (a matrix argument).

    Raises:
        ValueError: a repeated or empty column name, a column that is no argument of the model,
            an argument given both as one column and as indexed columns, or indices with gaps.
    """
    names = [name.strip() for name in header]
    seen: set[str] = set()
    vectors: dict[str, int] = {}
    matrices: dict[str, dict[int, int]] = {}
    for position, name in enumerate(names):
        if not name or name in seen:
            what = "an empty column name" if not name else f"the column {name!r} twice"
            raise ValueError(f"--data: {where} has {what} in its header.")
        seen.add(name)
        match = _INDEXED.match(name)
        if name in argument_names:
            vectors[name] = position
        elif match and match["name"] in argument_names:
            index = int(match["i"] if match["i"] is not None else match["j"])
            matrices.setdefault(match["name"], {})[index] = position
        else:
            raise ValueError(
                f"--data: column {name!r} of {where} is not an argument of the model (its "
                f"arguments: {_listed(argument_names)}; {_CONVENTION})."
            )
    groups: dict[str, list[int] | int] = dict(vectors)
    for argument, columns in matrices.items():
        if argument in vectors:
            raise ValueError(
                f"--data: {where} gives argument {argument!r} twice: as the column {argument!r} "
                f"and as indexed columns ({_CONVENTION})."
            )
        indices = sorted(columns)
        if indices != list(range(len(indices))):
            raise ValueError(
                f"--data: the columns of {argument!r} in {where}: expected indices 0 to "
                f"{len(indices) - 1}, got {indices}."
            )
        groups[argument] = [columns[i] for i in indices]
    return groups


def _number(cell: str, row: int, column: str, where: str) -> int | float:
    text = cell.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        what = "an empty cell" if not text else f"{text!r}, not a number,"
        raise ValueError(f"--data: row {row} of {where} has {what} in column {column!r}.") from None


def _array(values: list[list[int | float]]) -> np.ndarray:
    """Cells as ``int32`` when every one is an integer, else ``float32`` (JAX's defaults)."""
    is_int = all(isinstance(v, int) for row in values for v in row)
    return np.asarray(values, np.int32 if is_int else np.float32)


def read_csv(path: Path, argument_names: Sequence[str]) -> dict[str, np.ndarray]:
    """A data set from a CSV file (see the module docstring for the layout).

    Returns:
        argument -> ``(N,)`` for a single column, ``(N, k)`` for indexed columns.
    """
    with open(path, newline="", encoding="utf-8-sig") as file:
        rows = [row for row in csv.reader(file) if any(cell.strip() for cell in row)]
    if len(rows) < 2:
        raise ValueError(
            f"--data: {path} has no data rows (expected a header and one row per observation)."
        )
    header, body = rows[0], rows[1:]
    names = [name.strip() for name in header]
    groups = group_columns(header, argument_names, str(path))
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise ValueError(
                f"--data: row {number} of {path} has {len(row)} cells, the header {len(header)}."
            )
    cells = [
        [_number(c, n, names[i], str(path)) for i, c in enumerate(row)]
        for n, row in enumerate(body, start=2)
    ]
    data = {}
    for argument, columns in groups.items():
        if isinstance(columns, int):
            data[argument] = _array([[row[columns]] for row in cells])[:, 0]
        else:
            data[argument] = _array([[row[c] for c in columns] for row in cells])
    return data


def read_npz(path: Path, argument_names: Sequence[str]) -> dict[str, Any]:
    """A data set from an ``.npz`` file: one array per model argument (0-d: a Python scalar)."""
    try:
        with np.load(path, allow_pickle=False) as file:
            arrays = {name: file[name] for name in file.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"--data: {path} is not a readable .npz file ({error}).") from None
    unknown = [name for name in arrays if name not in argument_names]
    if unknown:
        raise ValueError(
            f"--data: {path} holds {_listed(unknown)}, not arguments of the model (its "
            f"arguments: {_listed(argument_names)})."
        )
    return {name: a.item() if a.ndim == 0 else a for name, a in arrays.items()}


def read_data(path: str | Path, argument_names: Sequence[str]) -> dict[str, Any]:
    """A data set from ``path`` (``.csv`` or ``.npz``) as the model's arguments by name.

    Raises:
        FileNotFoundError: no such file.
        ValueError: another suffix, or a file that does not fit the model (see
            :func:`group_columns`, :func:`read_npz`).
    """
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".npz"):
        raise ValueError(f"--data: expected a .csv or .npz file, got {str(path)!r}.")
    if not path.is_file():
        raise FileNotFoundError(f"--data: no file {str(path)!r}.")
    if path.suffix.lower() == ".csv":
        return read_csv(path, argument_names)
    return read_npz(path, argument_names)


def check_draws_path(path: str | Path, *, num_datasets: int | None = None) -> Path:
    """``path`` if draws can be written there: a known suffix, a folder that can be made, and
    ``.nc`` only for one data set (``num_datasets`` None)."""
    path = Path(path)
    if path.suffix.lower() not in DRAW_SUFFIXES:
        raise ValueError(f"--out: expected a file ending in .npz or .nc, got {str(path)!r}.")
    if num_datasets is not None and path.suffix.lower() == ".nc":
        raise ValueError(
            f"--out: a .nc file holds one data set's posterior, the data hold {num_datasets} "
            "data sets (a leading axis); write .npz instead."
        )
    if path.is_dir():
        raise ValueError(f"--out: {path} is a folder; expected a file ending in .npz or .nc.")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"--out: {path} cannot be created ({parent} is a file).")
    return path


def write_draws(
    path: Path,
    draws: Mapping[str, Any],
    *,
    observed_data: Mapping[str, Any] | None = None,
) -> Path:
    """Write draws (site -> array) to ``path``: ``.npz``, or ArviZ netCDF for ``.nc``.

    Args:
        path: the output file (checked with :func:`check_draws_path`).
        draws: site -> ``(num_samples, *site_shape)``, or with a leading data-set axis
            (``.npz`` only).
        observed_data: observed site -> observations, stored in the ``.nc`` file's
            ``observed_data`` group.
    """
    path = check_draws_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.asarray(value) for name, value in draws.items()}
    if path.suffix.lower() == ".npz":
        with open(path, "wb") as file:
            np.savez(file, **arrays)
        return path
    from amortized_ppl.diagnostics import to_inference_data

    observed = (
        None
        if observed_data is None
        else {site: np.asarray(value) for site, value in observed_data.items()}
    )
    to_inference_data(arrays, observed_data=observed).to_netcdf(str(path))
    return path
