"""Save and load a trained guide without pickle; restore it from the checkpoint alone.

A checkpoint is a directory with two files (written and read by
:mod:`amortized_ppl.checkpoint_files`):

- ``arrays.npz``: the leaves of ``params[guide.param_name]`` (the engine's arrays, flattened in
  ``jax.tree.flatten`` order) as ``arr_0 ... arr_k``; the problem's arrays (token and prior
  statistics, the example arguments the model is traced on) as ``problem$<name>``; and every
  other entry of ``params`` under its own name;
- ``meta.json``: the format version, the ``amortized_ppl`` version, ``guide.describe()`` (the
  prefix, the problem's description and the engine's recipes), the shape and dtype of every
  array, the SHA-256 of ``arrays.npz`` and the caller's metadata.

:func:`load_guide` rebuilds the guide from the checkpoint and the model alone (the problem is
traced again on the stored example and checked against its description; the engine is rebuilt
from its recipes). :func:`load_params` reads the parameters into an identical guide the caller
set up. Both check that the arrays file is intact and that every array has the expected shape
and dtype.

Saving is atomic: the checkpoint is written into a temporary sibling directory and renamed into
place, so an interrupted save never leaves a half-written checkpoint at ``path``.
"""

from __future__ import annotations

import json
import os
import pathlib
import warnings
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl._version import __version__
from amortized_ppl.checkpoint_files import (
    ARRAYS_FILE,
    CORRUPTED,
    META_FILE,
    array_spec,
    check_replaceable,
    read_arrays,
    recover_interrupted_save,
    restore_dtype,
    write_checkpoint,
)
from amortized_ppl.fingerprint import same_probe
from amortized_ppl.import_path import import_path_of, resolve_import_path

__all__ = ["FORMAT_VERSION", "load_guide", "load_meta", "load_params", "save_params"]

FORMAT_VERSION = 2
"""Version of the on-disk layout; bumped on incompatible changes."""

_LEAF_PREFIX = "arr_"
_PROBLEM_PREFIX = "problem$"
_DETECTOR_PREFIX = "ood$"
_DETECTOR_ARRAYS = ("mean", "whitening", "scale", "null_log_obs", "null_distances", "null_max_z")

_NOT_SET_UP = (
    "{action}: the guide is not set up. Use `load_guide(path, model)` to rebuild the guide from "
    "the checkpoint, or set this guide up the same way as the one that saved."
)

PathLike = str | os.PathLike


# ---------------------------------------------------------------------------------------------
# Save
# ---------------------------------------------------------------------------------------------


def save_params(
    path: PathLike,
    guide,
    params: Mapping[str, Any],
    *,
    metadata: dict | None = None,
    replace_with_untrained: bool = False,
) -> pathlib.Path:
    """Write ``params`` of a set-up amortized guide to the checkpoint directory ``path``.

    The directory is created (parents included). An existing checkpoint at ``path`` is replaced
    only once the new one is completely written; a directory at ``path`` holding anything other
    than checkpoint files is never overwritten.

    Args:
        path: the checkpoint directory.
        guide: the set-up guide the parameters belong to (e.g. ``AutoAmortizedNormal``).
        params: guide parameters as returned by ``fit``, ``SVI`` or ``guide.init_params()``:
            ``{guide.param_name: network arrays, **other array entries}``.
        metadata: optional JSON-serializable dict stored in ``meta.json`` (e.g. training
            settings); read it back with :func:`load_meta`.
        replace_with_untrained: allow the guide's initial (untrained) network to replace an
            existing checkpoint; by default that is refused, so that a run that never trained
            (stopped at its first step) cannot overwrite a trained checkpoint.

    Returns:
        The checkpoint directory as a ``pathlib.Path``.

    Raises:
        RuntimeError: the guide is not set up.
        TypeError: ``metadata`` is not a JSON-serializable dict, or an entry of ``params`` is not
            an array.
        KeyError: ``params`` has no entry ``guide.param_name``.
        ValueError: the network arrays do not match the guide's network (structure, shape, dtype),
            or hold NaN/Inf (a diverged run is never saved), or are the untrained initial
            network about to replace an existing checkpoint.
        FileExistsError: ``path`` exists and is not a checkpoint directory.

    Examples:
        >>> guide = AutoAmortizedNormal(model)
        >>> guide.setup(jax.random.key(0), design_fn, (10, 200))
        >>> result = fit(jax.random.key(1), guide, design_fn=design_fn, num_obs=(10, 200))
        >>> save_params("runs/linreg", guide, result.params, metadata={"num_steps": 5000})
        PosixPath('runs/linreg')
    """
    if not guide.is_setup:
        raise RuntimeError(_NOT_SET_UP.format(action="save_params"))
    metadata = _check_metadata(metadata)
    path = pathlib.Path(path)
    leaves, extras = _split_params(guide, params)
    expected = jax.tree.leaves(guide.init_params()[guide.param_name])
    _check_leaves(
        [array_spec(leaf) for leaf in expected],
        [array_spec(leaf) for leaf in leaves],
        what=f"params[{guide.param_name!r}]",
        against="this guide's network",
    )
    _check_finite_params(leaves, extras, guide.param_name)
    if path.exists():
        check_replaceable(path)
        if not replace_with_untrained and _is_initial(leaves, expected):
            raise ValueError(
                f"params[{guide.param_name!r}] is the guide's untrained initial network and "
                f"{path} holds a checkpoint: refusing to replace it with parameters from a run "
                "that did not train. Pass replace_with_untrained=True to do so anyway."
            )

    problem_arrays = {f"{_PROBLEM_PREFIX}{name.replace('/', '$')}": np.asarray(value)
                      for name, value in guide.problem.arrays().items()}
    detector_arrays, detector_meta = _detector_entries(guide.ood_detector)
    meta = {
        "format_version": FORMAT_VERSION,
        "amortized_ppl_version": __version__,
        "param_name": guide.param_name,
        "guide": _describe(guide),
        "leaves": [array_spec(leaf) for leaf in leaves],
        "extras": {name: array_spec(value) for name, value in extras.items()},
        "problem_arrays": {name: array_spec(value) for name, value in problem_arrays.items()},
        "model_probe": guide.problem.probe(),
        "model_import_path": import_path_of(guide.model),
        "design_import_path": import_path_of(guide.problem.design_fn),
        "ood_detector": detector_meta,
        "metadata": metadata,
    }
    return write_checkpoint(path, leaves, meta,
                            extras={**extras, **problem_arrays, **detector_arrays})


def _detector_entries(detector) -> tuple[dict[str, np.ndarray], dict | None]:
    """The OOD detector's arrays (``ood$<field>``) and its other fields, for the checkpoint."""
    if detector is None:
        return {}, None
    arrays = {f"{_DETECTOR_PREFIX}{name}": np.asarray(getattr(detector, name))
              for name in _DETECTOR_ARRAYS}
    return arrays, {
        "arrays": {name: array_spec(value) for name, value in arrays.items()},
        "num_obs": [int(n) for n in detector.num_obs],
        "level": float(detector.level),
        "num_neighbors": int(detector.num_neighbors),
    }


def _restore_detector(path: pathlib.Path, meta: dict, stored: dict):
    from amortized_ppl.diagnostics.ood import OODDetector

    saved = meta.get("ood_detector")
    if saved is None:
        return None
    arrays = {name[len(_DETECTOR_PREFIX):]: _stored(path, stored, name, spec)
              for name, spec in saved["arrays"].items()}
    return OODDetector(**arrays, num_obs=tuple(saved["num_obs"]), level=saved["level"],
                       num_neighbors=saved["num_neighbors"])


def _check_finite_params(leaves: list, extras: Mapping[str, Any], param_name: str) -> None:
    bad = [f"{param_name}[leaf {i}]" for i, leaf in enumerate(leaves)
           if not np.all(np.isfinite(np.asarray(leaf)))]
    bad += [name for name, value in extras.items()
            if np.issubdtype(np.asarray(value).dtype, np.inexact)
            and not np.all(np.isfinite(np.asarray(value)))]
    if bad:
        raise ValueError(
            f"params: NaN or Inf in {len(bad)} array(s) ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}); a diverged run is not saved. Save the last "
            "finite parameters (e.g. an earlier checkpoint or FitResult) instead."
        )


def _is_initial(leaves: list, initial: list) -> bool:
    return all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(leaves, initial))


def _check_metadata(metadata) -> dict | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise TypeError(
            f"metadata: expected a JSON-serializable dict or None, got {type(metadata).__name__}."
        )
    try:
        return json.loads(json.dumps(dict(metadata)))
    except (TypeError, ValueError) as err:
        raise TypeError(
            "metadata: must be JSON-serializable (str, numbers, bools, None, lists, dicts); "
            f"{err}. Convert arrays with `.tolist()` and other objects with `str()`."
        ) from None


def _split_params(
    guide, params: Mapping[str, Any]
) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """The network leaves (as NumPy arrays) and the other entries of ``params`` by name."""
    if not isinstance(params, Mapping):
        raise TypeError(
            f"params: expected a dict of guide parameters, got {type(params).__name__}."
        )
    if guide.param_name not in params:
        raise KeyError(
            f"params: no entry {guide.param_name!r}; got keys {sorted(params)}. Were these "
            "parameters trained for this guide (same prefix)?"
        )
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(params[guide.param_name])]
    extras = {}
    for name, value in params.items():
        if name == guide.param_name:
            continue
        if not name or name.startswith((_LEAF_PREFIX, _PROBLEM_PREFIX, _DETECTOR_PREFIX)):
            raise ValueError(
                f"params: the entry name {name!r} clashes with the checkpoint's array names "
                f"({_LEAF_PREFIX}0, {_LEAF_PREFIX}1, ..., {_PROBLEM_PREFIX}..., "
                f"{_DETECTOR_PREFIX}...); rename it."
            )
        array = np.asarray(value) if not isinstance(value, (Mapping, list, tuple)) else None
        if array is None or array.dtype.kind in "OUS":
            raise TypeError(
                f"params[{name!r}]: expected an array, got {type(value).__name__}; checkpoints "
                "store the guide's network plus plain array entries only."
            )
        extras[name] = array
    return leaves, extras


# ---------------------------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------------------------


def load_meta(path: PathLike) -> dict:
    """Read the ``meta.json`` of the checkpoint at ``path`` (the user's dict is ``["metadata"]``).

    Args:
        path: the checkpoint directory.

    Returns:
        The checkpoint description: ``format_version``, ``amortized_ppl_version``, ``guide``
        (the saving guide's ``describe()``), ``leaves``, ``extras``, ``sha256``, ``metadata``.

    Raises:
        FileNotFoundError: the directory or one of its files is missing.
        ValueError: ``meta.json`` is unreadable or from an unknown format version.

    Examples:
        >>> load_meta("runs/linreg")["metadata"]
        {'num_steps': 5000}
    """
    path = pathlib.Path(path)
    recover_interrupted_save(path)
    if not path.is_dir():
        raise FileNotFoundError(f"No checkpoint directory at {path}.")
    for name in (META_FILE, ARRAYS_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"Checkpoint at {path} is incomplete: {name} is missing (expected {ARRAYS_FILE} "
                f"and {META_FILE})."
            )
    try:
        with open(path / META_FILE, encoding="utf-8") as file:
            meta = json.load(file)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            CORRUPTED.format(path=path, detail=f"{META_FILE} is not valid JSON ({err})")
        ) from None
    required = ("format_version", "guide", "leaves", "extras", "sha256")
    missing = [k for k in required if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ValueError(CORRUPTED.format(path=path, detail=f"{META_FILE} lacks {missing}"))
    if meta["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"Checkpoint at {path} has format version {meta['format_version']!r}; this "
            f"amortized_ppl ({__version__}) reads version {FORMAT_VERSION}."
        )
    return meta


def _describe(guide) -> dict:
    """The guide's description as it reads back from JSON."""
    try:
        return _jsonable(guide.describe())
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"The guide's description is not JSON-serializable ({err}): a model argument that "
            "is neither an array nor a plain value (a function, an object) cannot be saved."
        ) from None


def _stored(path: pathlib.Path, stored: dict, name: str, spec) -> np.ndarray:
    if name not in stored:
        raise ValueError(
            CORRUPTED.format(path=path, detail=f"entry {name!r} is missing from {ARRAYS_FILE}")
        )
    return restore_dtype(stored[name], spec)


def _params_from(path: pathlib.Path, meta: dict, stored: dict, guide) -> dict:
    """The guide's parameters from the stored arrays, checked against its engine."""
    template = guide.init_params()[guide.param_name]
    expected_leaves, treedef = jax.tree.flatten(template)
    num_leaves = sum(1 for name in stored if name.startswith(_LEAF_PREFIX))
    leaves = [stored.get(f"{_LEAF_PREFIX}{i}") for i in range(num_leaves)]
    if any(leaf is None for leaf in leaves) or num_leaves != len(meta["leaves"]):
        raise ValueError(
            CORRUPTED.format(path=path, detail=f"{ARRAYS_FILE} does not match {META_FILE}")
        )
    leaves = [restore_dtype(leaf, spec) for leaf, spec in zip(leaves, meta["leaves"])]
    _check_leaves(
        [array_spec(leaf) for leaf in expected_leaves],
        [array_spec(leaf) for leaf in leaves],
        what=f"checkpoint at {path}",
        against="this guide's engine",
    )
    params = {guide.param_name: jax.tree.unflatten(treedef, [jnp.asarray(x) for x in leaves])}
    for name, spec in meta["extras"].items():
        params[name] = jnp.asarray(_stored(path, stored, name, spec))
    return params


def load_params(path: PathLike, guide) -> dict:
    """Read parameters saved by :func:`save_params` into an identically set-up ``guide``.

    Args:
        path: the checkpoint directory.
        guide: a set-up guide equal to the one that saved (same model, problem, engine and
            prefix, as reported by ``guide.describe()``).

    Returns:
        ``{guide.param_name: engine arrays, **other saved entries}``, ready for
        ``guide.sample_posterior(key, params, ...)``.

    Raises:
        RuntimeError: the guide is not set up.
        FileNotFoundError: the checkpoint directory or one of its files is missing.
        ValueError: the files are corrupted (hash mismatch, unreadable JSON), the checkpoint was
            saved for a different guide, or an array's shape or dtype differs from the guide's.
    """
    if not guide.is_setup:
        raise RuntimeError(_NOT_SET_UP.format(action="load_params"))
    path = pathlib.Path(path)
    meta = load_meta(path)
    stored = read_arrays(path, meta)
    _check_same_guide(path, meta["guide"], _describe(guide))
    _check_probe(path, meta, guide.problem.probe(_saved_example(path, meta, stored)))
    for name, value in guide.problem.arrays().items():
        saved = _stored(path, stored, _PROBLEM_PREFIX + name.replace("/", "$"),
                        meta["problem_arrays"].get(_PROBLEM_PREFIX + name.replace("/", "$")))
        if name.startswith("example/"):
            continue  # the example only fixes shapes; any draw of the design will do
        if saved.shape != value.shape or not np.allclose(saved, value, rtol=1e-5, atol=1e-6):
            raise ValueError(
                f"Checkpoint at {path}: the guide's problem statistics ({name}) differ from the "
                "saved ones (another set-up key or design), so the saved network would read "
                "differently standardized data. Rebuild the guide with `load_guide(path, model)`."
            )
    return _params_from(path, meta, stored, guide)


def load_guide(path: PathLike, model=None, *, design_fn=None):
    """Rebuild a trained guide from its checkpoint: ready to sample, nothing to set up.

    The model is traced again on the example arguments stored with the problem and checked
    against the saved description (sites, data layout, and the values its distributions take
    at probe points); the engine is rebuilt from its recipes and the saved arrays are loaded
    into it. The out-of-distribution detector saved with the guide is attached again.

    Args:
        path: the checkpoint directory (written by :func:`save_params`).
        model: the NumPyro model the guide was trained for; by default the one the checkpoint
            names (``model_import_path``, stored when the model was importable from a module).
        design_fn: its design function, needed only to simulate (SBC, more training, a new
            out-of-distribution detector); by default the stored one when it is importable.

    Returns:
        ``(guide, params)``: an :class:`~amortized_ppl.guides.AutoAmortized` guide and its
        parameters, ready for ``guide.sample_posterior(key, params, ...)``.

    Raises:
        FileNotFoundError, ValueError: as :func:`load_params`; no model given and none stored
            (defined in ``__main__`` or a notebook) or importable; a model that does not match
            the checkpoint (the differences are listed).

    Examples:
        >>> guide, params = load_guide("runs/linreg")  # the model imported by its stored path
        >>> draws = guide.sample_posterior(jax.random.key(2), params, x, y, sample_shape=(1000,))
    """
    from amortized_ppl.engines import engine_from_description
    from amortized_ppl.guides import AutoAmortized
    from amortized_ppl.problem import restore_problem

    path = pathlib.Path(path)
    meta = load_meta(path)
    stored = read_arrays(path, meta)
    model = _model_for(path, meta, model)
    if design_fn is None and meta.get("design_import_path"):
        try:
            design_fn = resolve_import_path(meta["design_import_path"], "design_fn")
        except ValueError as error:
            # Only needed to simulate (simulating then asks for it by name): say so now, not
            # when an SBC run fails minutes later.
            warnings.warn(
                f"load_guide: the stored design function {meta['design_import_path']!r} does not "
                f"import here ({error}); the guide loads, but simulating (SBC, more training) "
                "needs design_fn= passed to load_guide.", RuntimeWarning, stacklevel=2)
            design_fn = None
    description = meta["guide"]
    problem_arrays = {
        name[len(_PROBLEM_PREFIX):].replace("$", "/"): _stored(path, stored, name, spec)
        for name, spec in meta.get("problem_arrays", {}).items()
    }
    problem = restore_problem(model, description["problem"], problem_arrays, design_fn=design_fn)
    engine = engine_from_description(problem, description["engine"], key=jax.random.key(0))
    guide = AutoAmortized(problem, engine, prefix=description["prefix"],
                          ood_detector=_restore_detector(path, meta, stored))
    _check_same_guide(path, description, _describe(guide))
    _check_probe(path, meta, problem.probe())
    return guide, _params_from(path, meta, stored, guide)


def _model_for(path: pathlib.Path, meta: dict, model):
    if model is not None:
        return model
    stored = meta.get("model_import_path")
    if not stored:
        raise ValueError(
            f"Checkpoint at {path} names no importable model (it was defined in __main__, a "
            "notebook or a function): pass it, `load_guide(path, model)`."
        )
    try:
        return resolve_import_path(stored, "model")
    except ValueError as err:
        raise ValueError(f"Checkpoint at {path} was saved for the model {stored!r}, which does "
                         f"not import here: {err} Pass the model: `load_guide(path, model)`."
                         ) from None


def _saved_example(path: pathlib.Path, meta: dict, stored: dict) -> dict:
    from amortized_ppl.problem import stored_example

    arrays = {name[len(_PROBLEM_PREFIX):].replace("$", "/"): _stored(path, stored, name, spec)
              for name, spec in meta.get("problem_arrays", {}).items()}
    return stored_example(meta["guide"]["problem"], arrays)


def _check_probe(path: pathlib.Path, meta: dict, probe: list) -> None:
    """Refuse a model that computes other values at the same latents (same structure, other
    arithmetic: a likelihood mean ``x @ w - b`` where the checkpoint had ``x @ w + b``)."""
    if not same_probe(meta.get("model_probe", []), probe):
        raise ValueError(
            f"Checkpoint at {path}: the model differs from the one it was trained for: at the "
            "same latents and data its distributions' parameters take other values (another "
            "mean function, link or constant), although its sites and structure match."
        )


def _check_same_guide(path: pathlib.Path, saved: dict, current: dict) -> None:
    """Raise a ``ValueError`` listing what differs between two ``describe()`` dicts."""
    if saved == current:
        return
    differences = [
        f"{key}: saved {a!r}, this guide {b!r}" for key, a, b in _diff(saved, current)
    ]
    raise ValueError(
        f"Checkpoint at {path} was saved for {_summary(saved)}; this guide is "
        f"{_summary(current)}. Differences: " + "; ".join(differences) + ". Build and set up the "
        "guide with the same model, guide class and settings as when saving."
    )


def _summary(description: dict) -> str:
    problem = description.get("problem", {}) if isinstance(description, dict) else {}
    engine = description.get("engine", {}) if isinstance(description, dict) else {}
    sites = [
        f"{s.get('name')}{tuple(s.get('shape', ()))}"
        for s in problem.get("sites", ())
        if isinstance(s, dict)
    ]
    return (
        f"a {engine.get('type')} of model {problem.get('model')!r} with sites "
        f"[{', '.join(sites)}]"
    )


def _diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Dotted keys where nested dicts ``a`` and ``b`` differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in list(a) + [k for k in b if k not in a]:
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in a:
                out.append((name, "<absent>", b[key]))
            elif key not in b:
                out.append((name, a[key], "<absent>"))
            else:
                out.extend(_diff(a[key], b[key], name))
        return out
    return [] if a == b else [(prefix or "<root>", a, b)]


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _check_leaves(expected: list[dict], got: list[dict], *, what: str, against: str) -> None:
    """Raise ``ValueError`` at the first leaf whose shape or dtype differs, or on a bad count."""
    if len(expected) != len(got):
        raise ValueError(
            f"{what}: {len(got)} network arrays, but {against} has {len(expected)}; they belong "
            "to a different network."
        )
    for i, (e, g) in enumerate(zip(expected, got)):
        if e != g:
            raise ValueError(
                f"{what}: network array {i} ({_LEAF_PREFIX}{i}) has shape {tuple(g['shape'])} and "
                f"dtype {g['dtype']}, but {against} expects shape {tuple(e['shape'])} and dtype "
                f"{e['dtype']}."
            )


def _jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(value))

