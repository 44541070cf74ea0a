"""Save and load an RTB posterior's trained arrays, atomically and with a compatibility check.

A checkpoint is a directory with ``arrays.npz`` (the trainable leaves of the
:class:`~amortized_ppl.diffusion.rtb.RTBPosterior`, in ``jax.tree.leaves`` order) and
``meta.json`` (what the posterior was built for: dimension, number of steps, a fingerprint of the
schedule, the conditioning size, the leaves' shapes and dtypes, the SHA-256 of the arrays, and the
caller's metadata such as the problem's name). It is written into a temporary sibling and renamed
into place, as :mod:`amortized_ppl.checkpoint` does for guides, so a crash never leaves a
half-written checkpoint and a checkpoint is only replaced by a complete one.

Loading needs a template posterior built the same way; it refuses a checkpoint written for
another problem, schedule or network instead of loading arrays that would mean something else.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import equinox as eqx
import jax
import numpy as np

from amortized_ppl._version import __version__
from amortized_ppl.checkpoint_files import (
    ARRAYS_FILE,
    META_FILE,
    check_replaceable,
    file_sha256,
    write_checkpoint,
)
from amortized_ppl.diffusion.rtb import RTBPosterior, trainable_filter
from amortized_ppl.diffusion.sampler import DiffusionSchedule

__all__ = ["load_posterior", "save_posterior", "schedule_fingerprint"]

_KIND = "rtb_posterior"


def schedule_fingerprint(schedule: DiffusionSchedule) -> str:
    """A short SHA-256 of the schedule's coefficients (float64 bytes) and dimension."""
    digest = hashlib.sha256(str(schedule.dim).encode())
    for field in ("mean_scale", "drift_step", "noise_std", "back_scale", "back_std", "init_std"):
        digest.update(np.asarray(getattr(schedule, field), np.float64).round(7).tobytes())
    return digest.hexdigest()[:16]


def _describe(posterior: RTBPosterior, schedule: DiffusionSchedule, metadata: dict | None):
    leaves = jax.tree.leaves(eqx.filter(posterior, trainable_filter(posterior)))
    return leaves, {
        "kind": _KIND,
        "dim": schedule.dim,
        "num_steps": schedule.num_steps,
        "schedule": schedule_fingerprint(schedule),
        "cond_dim": posterior.correction.cond_dim,
        # Static settings that change what the arrays mean.
        "settings": {
            "cond_scale": float(f"{posterior.cond_scale:.6g}"),
            "lp_unit": float(f"{posterior.lp_unit:.6g}"),
            "guidance_clip": str(posterior.guidance_clip),
            "input_scale": float(posterior.correction.input_scale),
            "langevin": posterior.lp_net is not None,
            "guidance": getattr(posterior.reward_grad, "guidance", None),
        },
        "leaves": [{"shape": list(np.shape(x)), "dtype": str(np.asarray(x).dtype)}
                   for x in leaves],
        "metadata": metadata,
    }


def save_posterior(path, posterior: RTBPosterior, schedule: DiffusionSchedule, *,
                   metadata: dict | None = None) -> pathlib.Path:
    """Write the trained arrays of ``posterior`` to the checkpoint directory ``path``.

    ``metadata`` (JSON-serializable, e.g. ``{"problem": problem.name}``) is stored and compared
    on loading. An existing checkpoint is replaced only once the new one is complete; a path
    holding anything else is never overwritten (``FileExistsError``).
    """
    if metadata is not None:
        try:
            json.dumps(metadata)
        except TypeError as err:
            raise TypeError(f"metadata: expected a JSON-serializable dict ({err}).") from None
    path = pathlib.Path(path)
    leaves, meta = _describe(posterior, schedule, metadata)
    if not all(np.all(np.isfinite(np.asarray(x))) for x in leaves):
        raise ValueError("posterior: non-finite parameters; refusing to write a checkpoint.")
    if path.exists():
        check_replaceable(path)
        old_meta = path / META_FILE
        if old_meta.is_file() and json.loads(old_meta.read_text(encoding="utf-8")).get(
                "kind") != _KIND:
            raise FileExistsError(f"{path} holds another kind of checkpoint; refusing to "
                                  "overwrite it.")
    meta["amortized_ppl_version"] = __version__
    return write_checkpoint(path, [np.asarray(x) for x in leaves], meta)


def load_posterior(path, template: RTBPosterior, schedule: DiffusionSchedule, *,
                   metadata: dict | None = None) -> RTBPosterior:
    """Load trained arrays into ``template`` (a posterior built with the same settings).

    Raises ``ValueError`` naming the difference when the checkpoint was written for another
    dimension, schedule, conditioning size, network, or (when ``metadata`` is given) other
    metadata; ``FileNotFoundError`` when ``path`` holds no checkpoint; ``ValueError`` on a
    corrupted arrays file.
    """
    path = pathlib.Path(path)
    if not (path / META_FILE).is_file() or not (path / ARRAYS_FILE).is_file():
        raise FileNotFoundError(f"{path}: no RTB checkpoint ({META_FILE}, {ARRAYS_FILE}).")
    saved = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    if saved.get("kind") != _KIND:
        raise ValueError(f"{path}: not an RTB posterior checkpoint (kind {saved.get('kind')!r}).")
    leaves, expected = _describe(template, schedule, metadata)
    keys = ["dim", "num_steps", "schedule", "cond_dim", "settings", "leaves"]
    if metadata is not None:
        keys.append("metadata")
    for key in keys:
        if saved.get(key) != expected[key]:
            raise ValueError(
                f"{path}: checkpoint written for another posterior: {key} is {saved.get(key)!r}, "
                f"expected {expected[key]!r}."
            )
    if file_sha256(path / ARRAYS_FILE) != saved.get("sha256"):
        raise ValueError(f"{path}: corrupted checkpoint (arrays do not match their checksum).")
    with np.load(path / ARRAYS_FILE) as data:
        arrays = [data[f"arr_{i}"] for i in range(len(leaves))]
    params, static = eqx.partition(template, trainable_filter(template))
    treedef = jax.tree.structure(params)
    loaded = jax.tree.unflatten(treedef, [jax.numpy.asarray(a) for a in arrays])
    return eqx.combine(loaded, static)
