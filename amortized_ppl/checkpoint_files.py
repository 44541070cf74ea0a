"""The files of a checkpoint: atomic writing, hashing, reading back, refusing to overwrite.

Shared by every checkpoint format (guides in :mod:`amortized_ppl.checkpoint`, diffusion
posteriors in :mod:`amortized_ppl.diffusion.checkpoint`): a checkpoint is a directory holding
``arrays.npz`` and ``meta.json`` (with the arrays file's SHA-256), written into a temporary
sibling and renamed into place, so an interrupted save never leaves a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import uuid
import warnings
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

__all__ = [
    "ARRAYS_FILE",
    "CORRUPTED",
    "META_FILE",
    "array_spec",
    "check_replaceable",
    "file_sha256",
    "read_arrays",
    "recover_interrupted_save",
    "restore_dtype",
    "write_checkpoint",
]

ARRAYS_FILE = "arrays.npz"
META_FILE = "meta.json"
_CHECKPOINT_FILES = frozenset({ARRAYS_FILE, META_FILE})
CORRUPTED = "corrupted checkpoint at {path}: {detail}"


def array_spec(array) -> dict:
    """Shape and dtype of an array, JSON-able."""
    return {"shape": [int(n) for n in np.shape(array)], "dtype": str(array.dtype)}


def file_sha256(file: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_arrays(path: pathlib.Path, meta: dict) -> dict[str, np.ndarray]:
    """Every array of the checkpoint by name, after checking the file's hash."""
    arrays_path = path / ARRAYS_FILE
    digest = file_sha256(arrays_path)
    if digest != meta["sha256"]:
        raise ValueError(
            CORRUPTED.format(
                path=path,
                detail=f"the SHA-256 of {ARRAYS_FILE} is {digest}, {META_FILE} recorded "
                f"{meta['sha256']}",
            )
        )
    try:
        with np.load(arrays_path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(
            CORRUPTED.format(path=path, detail=f"cannot read {ARRAYS_FILE} ({err})")
        ) from None


def restore_dtype(array: np.ndarray, spec: dict) -> np.ndarray:
    """Reinterpret dtypes NumPy stores as raw bytes (e.g. ``bfloat16`` comes back as ``V2``)."""
    if array.dtype.kind == "V" and isinstance(spec, dict) and "dtype" in spec:
        try:
            dtype = jnp.dtype(spec["dtype"])
        except TypeError:
            return array
        if dtype.itemsize == array.dtype.itemsize:
            return array.view(dtype)
    return array


def write_checkpoint(path: pathlib.Path, arrays: list, meta: dict, *,
                     extras: Mapping[str, Any] | None = None) -> pathlib.Path:
    """Write ``arrays.npz`` (``arrays`` as ``arr_0 ...``, plus ``extras`` by name) and
    ``meta.json`` (``meta`` plus the arrays' SHA-256) atomically into the directory ``path``.

    The files go to a temporary sibling, are flushed to disk, and the sibling is renamed into
    place (an existing checkpoint is replaced only then); shared by every checkpoint format.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_save(path)
    for stale in _siblings(path, "tmp") + (_siblings(path, "old") if path.exists() else []):
        shutil.rmtree(stale, ignore_errors=True)  # left by a save that was killed
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        arrays_path = tmp / ARRAYS_FILE
        with open(arrays_path, "wb") as file:
            np.savez(file, *arrays, **(extras or {}))
            file.flush()
            os.fsync(file.fileno())
        meta = {**meta, "sha256": file_sha256(arrays_path)}
        with open(tmp / META_FILE, "w", encoding="utf-8") as file:
            json.dump(meta, file, indent=1)
            file.flush()
            os.fsync(file.fileno())
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)
    return path


def check_replaceable(path: pathlib.Path) -> None:
    """Refuse to overwrite anything at ``path`` that is not (a piece of) a checkpoint."""
    if not path.is_dir():
        raise FileExistsError(
            f"{path} exists and is not a checkpoint directory; refusing to overwrite it."
        )
    foreign = sorted(p.name for p in path.iterdir() if p.name not in _CHECKPOINT_FILES)
    if foreign:
        raise FileExistsError(
            f"{path} exists and holds files that are not part of a checkpoint ({foreign}); "
            "refusing to overwrite it. Choose another path or remove it."
        )


def _swap_into_place(tmp: pathlib.Path, path: pathlib.Path) -> None:
    """Rename the finished ``tmp`` to ``path``, moving an existing checkpoint aside first.

    ``path`` is never half-written: it holds either the old or the new checkpoint. Should the
    process die between the two renames, ``path`` is absent and the old checkpoint survives in
    the ``.{name}.old-*`` sibling.
    """
    if not path.exists():
        os.replace(tmp, path)
        return
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _siblings(path: pathlib.Path, kind: str) -> list[pathlib.Path]:
    """The ``.{name}.{kind}-*`` directories next to ``path`` (a save's temporary or old copy)."""
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.glob(f".{path.name}.{kind}-*") if p.is_dir())


def recover_interrupted_save(path: pathlib.Path) -> bool:
    """Put back the checkpoint a save moved aside and was killed before replacing.

    A save renames the old checkpoint to ``.{name}.old-*`` and then the new one into place; a
    kill between the two renames leaves ``path`` absent and the old copy beside it. Returns
    True (and warns) when such a copy was moved back.
    """
    if path.exists():
        return False
    complete = [old for old in _siblings(path, "old")
                if (old / META_FILE).is_file() and (old / ARRAYS_FILE).is_file()]
    if not complete:
        return False
    survivor = max(complete, key=lambda old: (old / META_FILE).stat().st_mtime)
    os.replace(survivor, path)
    warnings.warn(f"{path}: a save was interrupted; the previous checkpoint was restored from "
                  f"{survivor.name}.", RuntimeWarning, stacklevel=3)
    return True


def _fsync_dir(directory: pathlib.Path) -> None:
    """Persist a rename on POSIX file systems (best effort; not possible everywhere)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
