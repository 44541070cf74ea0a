"""From a data frame's flat layout (one row per observation, a group index) to padded groups."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

__all__ = ["pad_groups", "unpad_groups"]


def pad_groups(group_index: Any, *, num_groups: int | None = None, mask: str = "mask",
               **arrays: Any) -> dict:
    """Pad per-observation arrays into ``(num_groups, max_size, ...)`` with a boolean mask.

    Args:
        group_index: ``(N,)`` integer group of each observation, in ``0 .. num_groups - 1``.
        num_groups: the number of groups (default: ``max(group_index) + 1``). Every group must
            have at least one observation.
        mask: the name the mask gets in the output.
        **arrays: ``(N, ...)`` arrays (covariates and observations), in the rows' order.

    Returns:
        ``{name: padded array, mask: (num_groups, max_size) bool}``; within a group, rows keep
        their order. Padded entries are zero.

    Raises:
        ValueError: naming the argument: a non-integer or non-1-D index, an index out of
            ``[0, num_groups)``, a group with no observation (non-contiguous labels), an array
            whose length is not the index's, or NaN/Inf in an array.
    """
    index = np.asarray(group_index)
    if index.ndim != 1 or index.size == 0:
        raise ValueError(f"group_index must be a non-empty 1-D array; got shape {index.shape}.")
    if not np.issubdtype(index.dtype, np.integer):
        if not (np.issubdtype(index.dtype, np.floating) and np.all(index == np.round(index))):
            raise ValueError(f"group_index must hold integers; got dtype {index.dtype}.")
        index = index.astype(np.int64)
    count = int(index.max()) + 1 if num_groups is None else int(num_groups)
    bad = np.flatnonzero((index < 0) | (index >= count))
    if bad.size:
        raise ValueError(
            f"group_index out of range [0, {count}) at rows {bad[:10].tolist()} (values "
            f"{index[bad[:10]].tolist()}).")
    sizes = np.bincount(index, minlength=count)
    empty = np.flatnonzero(sizes == 0)
    if empty.size:
        raise ValueError(
            f"Groups {empty[:10].tolist()} have no observation: group labels must be contiguous "
            f"0 .. {count - 1} (relabel, e.g. with np.unique(..., return_inverse=True)).")
    order = np.argsort(index, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    position = np.arange(index.size) - starts[index[order]]
    max_size = int(sizes.max())
    out = {}
    for name, value in arrays.items():
        value = np.asarray(value)
        if value.shape[:1] != index.shape:
            raise ValueError(f"{name} must have {index.size} rows (one per observation); got "
                             f"shape {value.shape}.")
        if np.issubdtype(value.dtype, np.number) and not np.all(np.isfinite(value)):
            raise ValueError(f"{name} contains NaN or Inf.")
        padded = np.zeros((count, max_size) + value.shape[1:], value.dtype)
        padded[index[order], position] = value[order]
        out[name] = jnp.asarray(padded)
    out[mask] = jnp.asarray(np.arange(max_size)[None, :] < sizes[:, None])
    return out


def unpad_groups(padded: Any, mask: Any) -> np.ndarray:
    """The real entries of a padded ``(num_groups, max_size, ...)`` array, group by group."""
    return np.asarray(padded)[np.asarray(mask)]
