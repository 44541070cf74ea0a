"""Groups as the unit of streaming: one group's arguments, chunks of groups, default starts.

A data set's per-group arguments (the mask, covariates and observations) share a leading axis of
groups; every other argument is shared by all groups. These helpers slice one group out (keeping
a leading axis of size 1, so the model sees a data set of one group), run a function over chunks
of groups in bounded memory, and give the default Newton start of a group's locals.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from amortized_ppl.hierarchy.problem import HierarchicalProblem

__all__ = [
    "default_starts",
    "grouped_names",
    "map_over_chunks",
    "one_group",
    "sum_over_chunks",
]


def grouped_names(problem: HierarchicalProblem) -> tuple[str, ...]:
    """The arguments with a leading axis of groups."""
    structure = problem.structure
    return (structure.mask,) + structure.covariates + structure.observed


def one_group(problem, data, index):
    """Group ``index``'s data set (per-group arguments sliced to a leading axis of 1)."""
    names = grouped_names(problem)
    return {k: (v[index][None] if k in names else v) for k, v in data.items()}


def _slices(problem, data, chunk_size):
    names = grouped_names(problem)
    num_groups = data[problem.structure.mask].shape[0]
    chunk_size = num_groups if chunk_size is None else max(1, min(int(chunk_size), num_groups))
    num_full = num_groups // chunk_size

    def full(index):
        return {k: (jax.lax.dynamic_slice_in_dim(v, index * chunk_size, chunk_size)
                    if k in names else v) for k, v in data.items()}

    rest = None
    if num_full * chunk_size < num_groups:
        rest = {k: (v[num_full * chunk_size:] if k in names else v) for k, v in data.items()}
    return full, num_full, rest


def sum_over_chunks(problem, data, chunk_size: int | None, fn):
    """``sum`` of ``fn(chunk_data)`` (a pytree of arrays) over chunks of ``chunk_size`` groups.

    A ``lax.scan`` over the whole chunks and one call on the rest: nothing is copied or padded,
    and anything ``fn`` differentiates is differentiated inside its chunk, so the working memory
    is one chunk's whatever the number of groups (``chunk_size=None``: all groups at once).
    """
    full, num_full, rest = _slices(problem, data, chunk_size)

    def body(total, index):
        return jax.tree.map(jnp.add, total, fn(full(index))), None

    shapes = jax.eval_shape(fn, full(0))
    zeros = jax.tree.map(lambda v: jnp.zeros(v.shape, v.dtype), shapes)
    total, _ = jax.lax.scan(body, zeros, jnp.arange(num_full))
    if rest is not None:
        total = jax.tree.map(jnp.add, total, fn(rest))
    return total


def map_over_chunks(problem, data, chunk_size: int | None, fn):
    """``fn(chunk_data)`` (arrays with a leading axis of the chunk's groups), concatenated over
    chunks in group order; memory as :func:`sum_over_chunks` besides the outputs."""
    full, num_full, rest = _slices(problem, data, chunk_size)
    _, stacked = jax.lax.scan(lambda c, index: (c, fn(full(index))), None, jnp.arange(num_full))
    out = jax.tree.map(lambda v: v.reshape((-1,) + v.shape[2:]), stacked)
    if rest is not None:
        out = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out, fn(rest))
    return out


def default_starts(problem):
    """``starts_fn`` giving every group the prior's robust location of the locals."""
    return lambda g, group: problem.local_loc
