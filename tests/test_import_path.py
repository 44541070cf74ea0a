"""Import paths of models: stored only when another process could import them."""

import sys
import types

import pytest

from amortized_ppl.import_path import import_path_of, resolve_import_path
from amortized_ppl.models import linear_regression


def test_a_function_of_an_importable_module_round_trips():
    path = import_path_of(linear_regression.model)
    assert path == "amortized_ppl.models.linear_regression:model"
    assert resolve_import_path(path) is linear_regression.model


def test_functions_another_process_could_not_import_have_no_path(monkeypatch):
    def local():
        pass

    made_up = types.ModuleType("_loaded_from_a_file_abc123")  # as the CLI loads a user's file
    exec("def model():\n    pass\n", made_up.__dict__)  # noqa: S102
    made_up.model.__module__ = made_up.__name__
    monkeypatch.setitem(sys.modules, made_up.__name__, made_up)
    assert import_path_of(local) is None
    assert import_path_of(made_up.model) is None
    assert import_path_of(lambda: None) is None


@pytest.mark.parametrize("path,match", [
    ("no_colon", "expected an import path"),
    ("no_such_module_xyz:f", "cannot import module"),
    ("amortized_ppl.models.linear_regression:missing", "has no 'missing'"),
    ("amortized_ppl.models.linear_regression:NOISE_SCALE", "not a function"),
])
def test_bad_paths_are_refused_by_name(path, match):
    with pytest.raises(ValueError, match=match):
        resolve_import_path(path, "model")
