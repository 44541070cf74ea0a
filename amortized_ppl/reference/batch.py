"""NUTS references for many data sets in one program, the data sets split over a device mesh.

:func:`reference_posteriors` runs the reference sampler of
:func:`~amortized_ppl.reference.sampler.build_reference_sampler` (initialization, window
adaptation, sampling; several chains) for a batch of data sets of one shape, vectorized over the
data-set axis with ``jax.vmap``. With ``mesh=`` that axis is split over the mesh's devices with
JAX's own sharding (:func:`~amortized_ppl.sharding.shard_batch`), so each device runs its share of
the data sets: on accelerators the way to reference hundreds of data sets (SBC against NUTS, a
benchmark's ground truth). Each data set keeps its own key, its own adaptation and its own
diagnostics.

Vectorized NUTS runs every data set's trajectory until the longest of the batch has finished a
step (the while loops run in lockstep), so a batch costs what its hardest data set costs per step,
in exchange for wider vector operations and one dispatch; whether that beats a loop over
:func:`~amortized_ppl.reference.reference_posterior` depends on the device and on the spread of
tree depths, and ``benchmarks/bench_devices.py`` measures both.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import jax
import numpy as np

from amortized_ppl._checks import check_key
from amortized_ppl.convergence import ReferenceResult, summarize
from amortized_ppl.reference.checks import check_finite_arguments
from amortized_ppl.reference.posterior import get_reference_sampler
from amortized_ppl.sharding import check_divides, resolve_mesh, shard_batch

__all__ = ["reference_posteriors"]


def _num_datasets(args, kwargs) -> int:
    sizes = {np.shape(v)[0] for v in jax.tree.leaves((args, kwargs)) if _batched(v)}
    if not sizes:
        raise ValueError("data: expected at least one array argument with a leading data-set "
                         "axis (0-d arrays and Python values are shared by every data set).")
    if len(sizes) != 1:
        raise ValueError(f"data: expected every array argument to carry one leading data-set "
                         f"axis of a common size, got leading sizes {sorted(sizes)}.")
    return sizes.pop()


def reference_posteriors(
    key,
    model: Callable,
    *args,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 1000,
    target_accept: float = 0.8,
    mesh=None,
    **kwargs,
) -> list[ReferenceResult]:
    """NUTS reference posteriors of ``model`` for a batch of data sets, in one program.

    Args:
        key: PRNG key; data set ``b`` gets ``jax.random.split(key, B)[b]``, the key that a
            loop of :func:`~amortized_ppl.reference.reference_posterior` calls would give it.
        model: A NumPyro model with continuous latent sites.
        *args, **kwargs: The model's arguments with a leading data-set axis ``B`` on every
            array of one or more dimensions (data sets of one shape); 0-d arrays and Python
            values are shared by every data set. ``init_params``, ``inverse_mass_matrix`` and
            ``progress`` of ``reference_posterior`` are not taken.
        num_chains, num_warmup, num_samples, target_accept: As for
            :func:`~amortized_ppl.reference.reference_posterior`, per data set.
        mesh: A device count or a :class:`jax.sharding.Mesh` from
            :func:`~amortized_ppl.sharding.data_mesh`: the data sets split over its devices
            (``B`` must divide evenly). Default: one device.

    Returns:
        One :class:`~amortized_ppl.convergence.ReferenceResult` per data set (R-hat, ESS,
        divergences and warnings of its own).

    Examples:
        >>> from amortized_ppl.models.linear_regression import model_known_noise
        >>> x = jax.random.normal(jax.random.key(0), (4, 30, 2))
        >>> results = reference_posteriors(jax.random.key(1), model_known_noise, x,
        ...                                y=x.sum(-1), num_warmup=100, num_samples=100)
        >>> len(results), results[0].samples["w"].shape
        (4, (4, 100, 2))
    """
    check_key(key, "key")
    for name in _SAMPLER_ONLY:
        if name in kwargs and name not in inspect.signature(model).parameters:
            raise TypeError(f"reference_posteriors: {name!r} is not supported here (each data "
                            f"set starts from the init strategy and adapts its own metric).")
    mesh = resolve_mesh(mesh)
    num_datasets = _num_datasets(args, kwargs)
    check_divides(num_datasets, mesh, "number of data sets")
    check_finite_arguments(model, args, kwargs)
    sampler = get_reference_sampler(model, num_chains=num_chains, num_warmup=num_warmup,
                                    num_samples=num_samples, target_accept=target_accept,
                                    progress=False)
    batched, shared, static = _split(args, kwargs)
    keys = jax.random.split(key, num_datasets)
    placed = shard_batch({"keys": keys, "data": batched}, mesh)
    try:
        program = _cached_program(sampler, _typed(static))
    except TypeError as error:  # a static leaf that cannot be hashed: build it uncached
        if "unhashable" not in str(error):
            raise
        program = _program(sampler, static)
    samples, info = program(placed["keys"], placed["data"], shared)
    samples, info = jax.device_get((samples, info))
    return [summarize(jax.tree.map(lambda v, b=b: v[b], samples),
                      jax.tree.map(lambda v, b=b: v[b], info)) for b in range(num_datasets)]


_SAMPLER_ONLY = ("init_params", "inverse_mass_matrix", "progress")
"""``reference_posterior`` options that this batched entry point does not take."""


def _typed(static):
    """A cache key that tells ``1``, ``1.0`` and ``True`` apart (they hash equal)."""
    treedef, rest = static
    return treedef, tuple((type(v), v) for v in rest)


@functools.lru_cache(maxsize=16)
def _cached_program(sampler, typed_static):
    treedef, rest = typed_static
    return _program(sampler, (treedef, tuple(v for _, v in rest)))


def _program(sampler, static):
    """The vectorized program of one sampler and one layout of static arguments, compiled once
    per data shape (cached by :func:`_cached_program`: repeated calls only run)."""

    @jax.jit
    def run(keys, data, shared):
        def one(k, d):
            a, kw = _merge(d, shared, static)
            return sampler.draw(k, *a, **kw)

        return jax.vmap(one)(keys, data)

    return run


def _is_array(value) -> bool:
    return isinstance(value, jax.Array | np.ndarray)


def _batched(value) -> bool:
    return _is_array(value) and np.ndim(value) >= 1


def _split(args, kwargs):
    """The leaves of ``(args, kwargs)`` in three lists of one length: arrays with a data-set
    axis (traced, mapped), 0-d arrays (traced, shared by every data set) and the rest (Python
    values, static); each list holds ``None`` where a leaf belongs to another."""
    leaves, treedef = jax.tree.flatten((args, kwargs))
    batched = [v if _batched(v) else None for v in leaves]
    shared = [v if _is_array(v) and not _batched(v) else None for v in leaves]
    static = (treedef, tuple(None if _is_array(v) else v for v in leaves))
    return batched, shared, static


def _merge(batched, shared, static):
    treedef, rest = static
    leaves = [b if b is not None else s if s is not None else r
              for b, s, r in zip(batched, shared, rest)]
    return jax.tree.unflatten(treedef, leaves)
