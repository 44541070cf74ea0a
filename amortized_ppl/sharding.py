"""Data parallelism over a device mesh, with JAX's own sharding and nothing home-made.

Every batched computation in the library (a training step's simulated batch, SBC's data sets,
posteriors of many data sets, NUTS chains) has a leading axis of independent items. Sharding
that axis over a one-dimensional :class:`jax.sharding.Mesh` named ``"data"``, with everything
else (the network's parameters, optimizer state) replicated, is all data parallelism needs: the
compiler (GSPMD) partitions the program and inserts the one all-reduce of the gradients. The
random numbers do not depend on the sharding (JAX's partitionable threefry, on by default), so
for a fixed key the results on several devices equal those on one, up to the order of floating
point sums.

The same code runs on one CPU, several GPUs, or several hosts: on a cluster, call
:func:`jax.distributed.initialize` in every process first (see ``docs/sharding.md``); then
``jax.devices()`` lists every host's devices and :func:`data_mesh` spans them.

``mesh=None`` everywhere means no sharding (JAX's default placement on one device).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS",
    "batch_sharding",
    "check_divides",
    "constrain_batch",
    "data_mesh",
    "replicate",
    "resolve_mesh",
    "shard_batch",
    "sharded_simulator",
]

DATA_AXIS = "data"
"""The name of the mesh axis that batches are split over."""


def data_mesh(devices: int | Sequence[jax.Device] | None = None) -> Mesh:
    """A one-dimensional mesh named :data:`DATA_AXIS`.

    Args:
        devices: ``None`` for every device JAX sees (every host's, after
            ``jax.distributed.initialize``), an int for the first that many, or the devices.
    """
    available = jax.devices()
    if devices is None:
        chosen = available
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"devices: asked for {devices} devices, JAX sees {len(available)} "
                f"({available[0].platform}); on a CPU, XLA_FLAGS="
                "--xla_force_host_platform_device_count=N (set before JAX starts) makes N.")
        chosen = available[:devices]
    else:
        chosen = list(devices)
        if not chosen or not all(isinstance(d, jax.Device) for d in chosen):
            raise TypeError("devices: expected None, a positive int or a sequence of jax devices, "
                            f"got {devices!r}.")
    return Mesh(np.asarray(chosen), (DATA_AXIS,))


def resolve_mesh(mesh: Mesh | int | None) -> Mesh | None:
    """``mesh`` as a :class:`Mesh`: ``None`` stays ``None`` (no sharding), an int is a device
    count for :func:`data_mesh`; a mesh must have the :data:`DATA_AXIS` axis."""
    if mesh is None or isinstance(mesh, Mesh):
        if mesh is not None and DATA_AXIS not in mesh.axis_names:
            raise ValueError(f"mesh: expected an axis named {DATA_AXIS!r} (data_mesh makes one), "
                             f"got axes {mesh.axis_names}.")
        return mesh
    if isinstance(mesh, (int, np.integer)) and not isinstance(mesh, bool):
        return data_mesh(int(mesh))
    raise TypeError(f"mesh: expected None, a device count or a jax.sharding.Mesh, got {mesh!r}.")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over :data:`DATA_AXIS`, the rest whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def _size(mesh: Mesh) -> int:
    return int(mesh.shape[DATA_AXIS])


def check_divides(size: int, mesh: Mesh | None, name: str) -> None:
    """Raise unless ``size`` items split evenly over the mesh's devices."""
    if mesh is not None and size % _size(mesh):
        raise ValueError(f"{name}: {size} does not split evenly over the mesh's {_size(mesh)} "
                         "devices; use a multiple of the device count.")


def _batched(leaf, size: int | None) -> bool:
    return isinstance(leaf, jax.Array | np.ndarray) and leaf.ndim >= 1 and (
        size is None or leaf.shape[0] == size)


def _leading(tree) -> int:
    sizes = {leaf.shape[0] for leaf in jax.tree.leaves(tree) if _batched(leaf, None)}
    if len(sizes) != 1:
        raise ValueError(f"expected arrays with one common leading (batch) axis, got leading "
                         f"sizes {sorted(sizes)}.")
    return sizes.pop()


def shard_batch(tree: Any, mesh: Mesh | int | None) -> Any:
    """Place ``tree``'s arrays with their leading (batch) axis split over the mesh.

    Arrays whose leading axis is not the batch's (shared covariates, scalars) are replicated.
    Outside ``jit``; a jitted function called on the result runs sharded.
    """
    mesh = resolve_mesh(mesh)
    if mesh is None:
        return tree
    size = _leading(tree)
    check_divides(size, mesh, "batch size")
    split, whole = batch_sharding(mesh), NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(
        lambda v: jax.device_put(v, split if _batched(v, size) else whole)
        if isinstance(v, jax.Array | np.ndarray) else v, tree)


def replicate(tree: Any, mesh: Mesh | int | None) -> Any:
    """Place ``tree``'s arrays whole on every device of the mesh (parameters, optimizer state)."""
    mesh = resolve_mesh(mesh)
    if mesh is None:
        return tree
    whole = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda v: jax.device_put(v, whole) if isinstance(v, jax.Array) else v,
                        tree)


def constrain_batch(tree: Any, mesh: Mesh | None, size: int | None = None) -> Any:
    """Inside ``jit``: ask the compiler to split arrays with leading axis ``size`` (default: the
    tree's common leading size) over the mesh; other leaves are left to it. No-op for ``None``."""
    if mesh is None:
        return tree
    size = _leading(tree) if size is None else size
    split = batch_sharding(mesh)
    return jax.tree.map(
        lambda v: jax.lax.with_sharding_constraint(v, split) if _batched(v, size) else v, tree)


def sharded_simulator(simulate: Callable, mesh: Mesh | int | None) -> Callable:
    """``simulate(key, batch_size)`` whose batch the compiler splits over ``mesh``: a training
    step on it shards the loss over data sets and all-reduces the gradients. A batch that does
    not split evenly (a held-out set) is left to the compiler. ``None``: ``simulate`` itself."""
    mesh = resolve_mesh(mesh)
    if mesh is None:
        return simulate
    devices = mesh.devices.size

    def sharded(key, batch_size):
        batch = simulate(key, batch_size)
        return batch if batch_size % devices else constrain_batch(batch, mesh, batch_size)

    return sharded
