"""Tests of amortized_ppl.checkpoint: round trip, refusing foreign or damaged files, atomicity.

One tiny guide (set up once per module) provides the parameters; they are perturbed away from the
initial values so that a loader that returned ``guide.init_params()`` would fail the round trip.
"""

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import amortized_ppl
from amortized_ppl.checkpoint import (
    ARRAYS_FILE,
    FORMAT_VERSION,
    META_FILE,
    load_guide,
    load_meta,
    load_params,
    save_params,
)
from amortized_ppl.guides.amortized import AutoAmortizedMultivariateNormal, AutoAmortizedNormal
from amortized_ppl.models.linear_regression import design_fn, model, model_known_noise

NETWORK = dict(hidden_size=16, summary_size=16, head_width=32, num_blocks=1)
NUM_OBS = (5, 20)


def _setup(guide_cls, model_fn, **overrides):
    guide = guide_cls(model_fn, **{**NETWORK, **overrides})
    return guide.setup(jax.random.key(0), design_fn, NUM_OBS)


@pytest.fixture(scope="module")
def guide():
    return _setup(AutoAmortizedMultivariateNormal, model_known_noise)


@pytest.fixture(scope="module")
def params(guide):
    """Trained-looking parameters: the initial arrays plus noise, and one extra array entry."""
    init = guide.init_params()[guide.param_name]
    leaves, treedef = jax.tree.flatten(init)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    noisy = [
        leaf + 0.1 * jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)
    ]
    network = jax.tree.unflatten(treedef, noisy)
    return {guide.param_name: network, "extra_scale": jnp.array([1.0, 2.0])}


@pytest.fixture(scope="module")
def data():
    (x,), _ = design_fn(jax.random.key(2), 12)
    y = x @ jnp.linspace(-1.0, 1.0, x.shape[1]) + 0.3
    return x, y


def _assert_params_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for left, right in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert left.dtype == right.dtype
        np.testing.assert_array_equal(np.asarray(left), np.asarray(right))


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir())


# ---------------------------------------------------------------------------------------------
# Round trip
# ---------------------------------------------------------------------------------------------


def test_round_trip(tmp_path, guide, params, data):
    path = save_params(tmp_path / "ckpt", guide, params, metadata={"num_steps": 10, "lr": 1e-3})
    assert path == tmp_path / "ckpt"
    assert sorted(p.name for p in path.iterdir()) == [ARRAYS_FILE, META_FILE]
    assert _siblings(path) == ["ckpt"]  # no temporary directory left behind

    loaded = load_params(path, guide)
    assert set(loaded) == {guide.param_name, "extra_scale"}
    _assert_params_equal(loaded, params)

    x, y = data
    key = jax.random.key(3)
    expected = guide.sample_posterior(key, params, x, y, sample_shape=(10,))
    got = guide.sample_posterior(key, loaded, x, y, sample_shape=(10,))
    assert set(got) == {"w", "b"}
    for name in expected:
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(expected[name]))


def test_meta_contents(tmp_path, guide, params):
    path = save_params(tmp_path / "ckpt", guide, params, metadata={"note": "hi", "seeds": (1, 2)})
    meta = load_meta(path)
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["amortized_ppl_version"] == amortized_ppl.__version__
    assert meta["guide"] == json.loads(json.dumps(guide.describe()))
    assert meta["metadata"] == {"note": "hi", "seeds": [1, 2]}
    leaves = jax.tree.leaves(params[guide.param_name])
    assert meta["leaves"] == [{"shape": list(a.shape), "dtype": str(a.dtype)} for a in leaves]
    assert meta["extras"] == {"extra_scale": {"shape": [2], "dtype": "float32"}}
    assert meta["sha256"] == hashlib.sha256((path / ARRAYS_FILE).read_bytes()).hexdigest()
    problem_arrays = {f"problem${name.replace('/', '$')}" for name in guide.problem.arrays()}
    assert set(meta["problem_arrays"]) == problem_arrays
    assert "problem$token_loc" in problem_arrays and "problem$example$x" in problem_arrays
    # Plain npz: readable without pickle; the engine's leaves as arr_0..arr_k, the problem's
    # statistics and example, and named extras.
    with np.load(path / ARRAYS_FILE, allow_pickle=False) as archive:
        assert set(archive.files) == ({f"arr_{i}" for i in range(len(leaves))} | {"extra_scale"}
                                      | problem_arrays)


def test_save_creates_parents_and_accepts_str(tmp_path, guide, params):
    target = tmp_path / "a" / "b" / "ckpt"
    assert save_params(str(target), guide, params) == target
    assert load_meta(target)["metadata"] is None
    _assert_params_equal(load_params(str(target), guide), params)


def test_save_replaces_existing_checkpoint(tmp_path, guide, params):
    path = tmp_path / "ckpt"
    save_params(path, guide, guide.init_params())
    save_params(path, guide, params, metadata={"version": 2})
    _assert_params_equal(load_params(path, guide), params)
    assert load_meta(path)["metadata"] == {"version": 2}
    assert _siblings(path) == ["ckpt"]


def test_extra_entries_keep_their_dtype(tmp_path, guide, params):
    """Extra entries round-trip with their dtype, bfloat16 (stored by NumPy as raw bytes) included."""
    extras = {"step": jnp.array(7, jnp.int32), "ema": jnp.array([0.5, 1.5], jnp.bfloat16)}
    path = save_params(tmp_path / "ckpt", guide, {**params, **extras})
    loaded = load_params(path, guide)
    for name, value in extras.items():
        assert loaded[name].dtype == value.dtype
        np.testing.assert_array_equal(np.asarray(loaded[name]), np.asarray(value))


def test_save_into_empty_directory(tmp_path, guide, params):
    (tmp_path / "ckpt").mkdir()
    save_params(tmp_path / "ckpt", guide, params)
    _assert_params_equal(load_params(tmp_path / "ckpt", guide), params)


def test_load_guide_restores_from_the_checkpoint_alone(tmp_path, guide, params, data):
    path = save_params(tmp_path / "ckpt", guide, params)
    meta = load_meta(path)
    assert meta["model_import_path"] == (
        "amortized_ppl.models.linear_regression:model_known_noise")
    assert meta["design_import_path"] == "amortized_ppl.models.linear_regression:design_fn"
    loaded, loaded_params = load_guide(path)  # the model and design imported by their paths
    assert loaded.describe() == json.loads(json.dumps(guide.describe()))
    _assert_params_equal(loaded_params, params)
    x, y = data
    key = jax.random.key(3)
    expected = guide.sample_posterior(key, params, x, y, sample_shape=(10,))
    got = loaded.sample_posterior(key, loaded_params, x, y, sample_shape=(10,))
    for name in expected:
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(expected[name]))
    assert loaded.problem.design_fn is design_fn  # it can simulate again (SBC, more training)
    assert loaded.model is model_known_noise and loaded.ood_detector is None
    with pytest.raises(ValueError, match="not arguments of the model|differ from the checkpoint"):
        load_guide(path, model)


def test_the_ood_detector_travels_with_the_guide(tmp_path, guide, params):
    from amortized_ppl.diagnostics.ood import OODDetector

    rng = np.random.default_rng(0)
    detector = OODDetector(mean=rng.normal(size=5), whitening=rng.normal(size=(5, 5)),
                           scale=rng.uniform(size=5), null_log_obs=rng.normal(size=40),
                           null_distances=rng.uniform(size=40), null_max_z=rng.uniform(size=40),
                           num_obs=(5, 20), level=0.05, num_neighbors=30)
    path = save_params(tmp_path / "ckpt", guide.with_ood_detector(detector), params)
    loaded, _ = load_guide(path)
    restored = loaded.ood_detector
    for field in ("mean", "whitening", "scale", "null_log_obs", "null_distances", "null_max_z"):
        np.testing.assert_array_equal(getattr(restored, field), getattr(detector, field))
    assert (restored.num_obs, restored.level, restored.num_neighbors) == ((5, 20), 0.05, 30)


def test_a_model_without_an_import_path_must_be_given(tmp_path, params):
    def local_model(x, y=None, *, sigma=0.5):  # defined here: no import path
        return model_known_noise(x, y, sigma=sigma)

    local = _setup(AutoAmortizedMultivariateNormal, local_model)
    path = save_params(tmp_path / "ckpt", local, {local.param_name: params[local.param_name]})
    assert load_meta(path)["model_import_path"] is None
    with pytest.raises(ValueError, match="names no importable model.*load_guide\\(path, model\\)"):
        load_guide(path)
    loaded, _ = load_guide(path, local_model)
    assert loaded.model is local_model
    meta = json.loads((path / META_FILE).read_text())
    meta["model_import_path"] = "no_such_module_here:model"
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="'no_such_module_here:model', which does not import"):
        load_guide(path)


def test_load_params_refuses_other_problem_statistics(tmp_path, guide, params):
    path = save_params(tmp_path / "ckpt", guide, params)
    other = AutoAmortizedMultivariateNormal(model_known_noise, **NETWORK)
    other.setup(jax.random.key(5), design_fn, NUM_OBS)  # another key: other pilot statistics
    with pytest.raises(ValueError, match=r"problem statistics \(token_loc\) differ"):
        load_params(path, other)


# ---------------------------------------------------------------------------------------------
# Refusals on load
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "guide_cls, model_fn, overrides, expected",
    [
        (AutoAmortizedNormal, model_known_noise, {},
         ["engine.family.type: saved 'MultivariateNormal', this guide 'DiagonalNormal'"]),
        (AutoAmortizedMultivariateNormal, model, {},
         ["problem.model: saved 'model_known_noise'", "sites"]),
        (AutoAmortizedMultivariateNormal, model_known_noise, {"hidden_size": 8},
         ["engine.encoder.hidden_size: saved 16, this guide 8"]),
    ],
    ids=["family", "model", "hidden_size"],
)
def test_mismatched_guide_refused(
    tmp_path, guide, params, guide_cls, model_fn, overrides, expected
):
    path = save_params(tmp_path / "ckpt", guide, params)
    other = _setup(guide_cls, model_fn, **overrides)
    with pytest.raises(ValueError, match="was saved for") as info:
        load_params(path, other)
    message = str(info.value)
    assert "a OneShotPosterior of model 'model_known_noise' with sites [w(8,), b()]" in message
    for fragment in expected:
        assert fragment in message


def test_corrupted_arrays_refused(tmp_path, guide, params):
    path = save_params(tmp_path / "ckpt", guide, params)
    raw = bytearray((path / ARRAYS_FILE).read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 4] = bytes(b ^ 0xFF for b in raw[middle : middle + 4])
    (path / ARRAYS_FILE).write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupted checkpoint"):
        load_params(path, guide)


def test_truncated_meta_refused(tmp_path, guide, params):
    path = save_params(tmp_path / "ckpt", guide, params)
    text = (path / META_FILE).read_text()
    (path / META_FILE).write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="corrupted checkpoint"):
        load_params(path, guide)


def test_meta_without_required_keys_refused(tmp_path, guide, params):
    path = save_params(tmp_path / "ckpt", guide, params)
    (path / META_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION}))
    with pytest.raises(ValueError, match="corrupted checkpoint.*lacks"):
        load_params(path, guide)


def test_unknown_format_version_refused(tmp_path, guide, params):
    path = save_params(tmp_path / "ckpt", guide, params)
    meta = json.loads((path / META_FILE).read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format version"):
        load_params(path, guide)


@pytest.mark.parametrize("missing", [None, ARRAYS_FILE, META_FILE])
def test_missing_files_refused(tmp_path, guide, params, missing):
    path = tmp_path / "ckpt"
    if missing is not None:
        save_params(path, guide, params)
        (path / missing).unlink()
    with pytest.raises(FileNotFoundError, match="ckpt") as info:
        load_params(path, guide)
    if missing is not None:
        assert missing in str(info.value)


def test_leaf_shape_mismatch_refused(tmp_path, guide, params):
    """A consistent checkpoint (hash and guide match) whose arrays do not fit the network."""
    path = save_params(tmp_path / "ckpt", guide, params)
    with np.load(path / ARRAYS_FILE, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    index = next(i for i in range(len(arrays)) if arrays[f"arr_{i}"].ndim == 2)
    original = arrays[f"arr_{index}"].shape
    arrays[f"arr_{index}"] = arrays[f"arr_{index}"][:, :-1]
    np.savez(path / ARRAYS_FILE, **arrays)
    meta = json.loads((path / META_FILE).read_text())
    meta["sha256"] = hashlib.sha256((path / ARRAYS_FILE).read_bytes()).hexdigest()
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=rf"network array {index} \(arr_{index}\)") as info:
        load_params(path, guide)
    assert f"shape {(original[0], original[1] - 1)}" in str(info.value)
    assert f"expects shape {original}" in str(info.value)


def test_guide_not_set_up_refused(tmp_path, guide, params):
    path = save_params(tmp_path / "ckpt", guide, params)
    fresh = AutoAmortizedMultivariateNormal(model_known_noise, **NETWORK)
    with pytest.raises(RuntimeError, match=r"not set up.*load_guide\(path, model\)"):
        load_params(path, fresh)
    with pytest.raises(RuntimeError, match=r"not set up"):
        save_params(tmp_path / "other", fresh, params)


# ---------------------------------------------------------------------------------------------
# Refusals and atomicity on save
# ---------------------------------------------------------------------------------------------


def test_failed_save_keeps_existing_checkpoint(tmp_path, guide, params, monkeypatch):
    path = save_params(tmp_path / "ckpt", guide, params, metadata={"run": 1})

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_params(path, guide, guide.init_params(), metadata={"run": 2},
                    replace_with_untrained=True)
    monkeypatch.undo()

    assert _siblings(path) == ["ckpt"]  # the temporary directory was removed
    assert load_meta(path)["metadata"] == {"run": 1}
    _assert_params_equal(load_params(path, guide), params)


def test_diverged_params_are_never_saved(tmp_path, guide, params):
    # Issue 15: save_params wrote NaN parameters without complaint.
    leaves, treedef = jax.tree.flatten(params[guide.param_name])
    leaves[0] = leaves[0].at[0].set(jnp.nan)
    bad = {**params, guide.param_name: jax.tree.unflatten(treedef, leaves)}
    with pytest.raises(ValueError, match="NaN or Inf in 1 array.*diverged run is not saved"):
        save_params(tmp_path / "ckpt", guide, bad)
    with pytest.raises(ValueError, match=r"NaN or Inf in 1 array\(s\) \(extra_scale\)"):
        save_params(tmp_path / "ckpt", guide, {**params, "extra_scale": jnp.array([jnp.inf])})
    assert not (tmp_path / "ckpt").exists()


def test_an_untrained_run_does_not_replace_a_checkpoint(tmp_path, guide, params):
    # Issue 15: a run that stopped at its first step overwrote a trained checkpoint.
    path = save_params(tmp_path / "ckpt", guide, params, metadata={"run": 1})
    with pytest.raises(ValueError, match="untrained initial network.*replace_with_untrained"):
        save_params(path, guide, guide.init_params(), metadata={"run": 2})
    assert load_meta(path)["metadata"] == {"run": 1}
    save_params(tmp_path / "fresh", guide, guide.init_params())  # a new path is fine
    save_params(path, guide, guide.init_params(), replace_with_untrained=True)
    _assert_params_equal(load_params(path, guide), guide.init_params())


def test_failed_first_save_leaves_nothing(tmp_path, guide, params, monkeypatch):
    def broken_savez(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(KeyboardInterrupt):
        save_params(tmp_path / "ckpt", guide, params)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("metadata", [{"key": object()}, {"array": np.zeros(2)}, ["not", "a dict"]])
def test_metadata_not_serializable(tmp_path, guide, params, metadata):
    with pytest.raises(TypeError, match="metadata"):
        save_params(tmp_path / "ckpt", guide, params, metadata=metadata)
    assert not (tmp_path / "ckpt").exists()


def test_refuses_to_overwrite_foreign_directory(tmp_path, guide, params):
    path = tmp_path / "results"
    path.mkdir()
    (path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="notes.txt"):
        save_params(path, guide, params)
    assert (path / "notes.txt").read_text() == "keep me"
    plain_file = tmp_path / "file"
    plain_file.write_text("keep me too")
    with pytest.raises(FileExistsError):
        save_params(plain_file, guide, params)
    assert plain_file.read_text() == "keep me too"


def test_params_not_matching_guide_refused(tmp_path, guide, params):
    network = params[guide.param_name]
    leaves, treedef = jax.tree.flatten(network)
    leaves[0] = leaves[0][:-1]
    bad = {guide.param_name: jax.tree.unflatten(treedef, leaves)}
    with pytest.raises(ValueError, match=r"network array 0 \(arr_0\)"):
        save_params(tmp_path / "ckpt", guide, bad)
    with pytest.raises(KeyError, match=r"amortized\$net\$params"):
        save_params(tmp_path / "ckpt", guide, {"other": jnp.zeros(2)})
    with pytest.raises(TypeError, match="nested"):
        save_params(tmp_path / "ckpt", guide, {**params, "nested": {"a": jnp.zeros(2)}})
    with pytest.raises(ValueError, match="arr_0"):
        save_params(tmp_path / "ckpt", guide, {**params, "arr_0": jnp.zeros(2)})
    assert not (tmp_path / "ckpt").exists()
    assert os.listdir(tmp_path) == []


def test_a_save_killed_between_its_renames_loses_nothing(tmp_path, guide, params):
    # Issue 15: a kill between the two renames made load_params say "No checkpoint directory"
    # while the old copy survived beside it; killed saves also left .tmp-* folders behind.
    path = save_params(tmp_path / "ckpt", guide, params, metadata={"run": 1})
    moved = tmp_path / ".ckpt.old-0123"
    path.rename(moved)  # the state a kill after the first rename leaves
    with pytest.warns(RuntimeWarning, match="a save was interrupted; the previous checkpoint"):
        _assert_params_equal(load_params(path, guide), params)
    assert _siblings(path) == ["ckpt"]
    (tmp_path / ".ckpt.tmp-dead").mkdir()  # a save killed while writing
    (tmp_path / ".ckpt.tmp-dead" / ARRAYS_FILE).write_bytes(b"half")
    (tmp_path / ".ckpt.old-dead").mkdir()
    save_params(path, guide, params, metadata={"run": 2})
    assert _siblings(path) == ["ckpt"] and load_meta(path)["metadata"] == {"run": 2}


def test_a_design_that_no_longer_imports_is_said_at_load(tmp_path, guide, params):
    path = save_params(tmp_path / "ckpt", guide, params)
    meta_file = path / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["design_import_path"] = "amortized_ppl.models.linear_regression:no_such_design"
    meta_file.write_text(json.dumps(meta))
    with pytest.warns(RuntimeWarning, match="no_such_design.*design_fn="):
        loaded, _ = load_guide(path)
    assert loaded.problem.design_fn is None
    loaded, _ = load_guide(path, design_fn=design_fn)  # passed: no warning needed
    assert loaded.problem.design_fn is design_fn
