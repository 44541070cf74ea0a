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
    sizes = {np.shape(v)[0] for v in jax.tree.leaves((args, kwargs))
             if isinstance(v, jax.Array | np.ndarray) and np.ndim(v) >= 1}
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
            array (data sets of one shape; Python scalars are shared).
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
    mesh = resolve_mesh(mesh)
    num_datasets = _num_datasets(args, kwargs)
    check_divides(num_datasets, mesh, "number of data sets")
    check_finite_arguments(model, args, kwargs)
    sampler = get_reference_sampler(model, num_chains=num_chains, num_warmup=num_warmup,
                                    num_samples=num_samples, target_accept=target_accept,
                                    progress=False)
    arrays, static = _split(args, kwargs)
    keys = jax.random.split(key, num_datasets)
    placed = shard_batch({"keys": keys, "data": arrays}, mesh)

    samples, info = _program(sampler, static)(placed["keys"], placed["data"])
    samples, info = jax.device_get((samples, info))
    return [summarize(jax.tree.map(lambda v, b=b: v[b], samples),
                      jax.tree.map(lambda v, b=b: v[b], info)) for b in range(num_datasets)]


@functools.lru_cache(maxsize=16)
def _program(sampler, static):
    """The vectorized program of one cached sampler and one layout of shared arguments,
    compiled once per data shape (repeated calls, e.g. a benchmark's, only run)."""

    @jax.jit
    def run(keys, data):
        def one(k, d):
            a, kw = _merge(d, static)
            return sampler.draw(k, *a, **kw)

        return jax.vmap(one)(keys, data)

    return run


def _batched(value) -> bool:
    return isinstance(value, jax.Array | np.ndarray) and np.ndim(value) >= 1


def _split(args, kwargs):
    """The array leaves (batched), and the rest (shared, static), of ``(args, kwargs)``."""
    leaves, treedef = jax.tree.flatten((args, kwargs))
    arrays = [v if _batched(v) else None for v in leaves]
    static = (treedef, tuple(None if _batched(v) else v for v in leaves))
    return arrays, static


def _merge(arrays, static):
    treedef, rest = static
    leaves = [a if a is not None else r for a, r in zip(arrays, rest)]
    return jax.tree.unflatten(treedef, leaves)
