"""Import paths of the command line (``--model``/``--design``): both forms, and every failure
one ``ValueError`` naming the option, what was expected and what came."""

import sys

import pytest

from amortized_ppl._cli_imports import is_file_path, load_callable, normalize_import_path

MODEL_FILE = """\
import numpyro.distributions as dist

SCALE = 2.0


def model(y=None):
    return dist.Normal(0.0, SCALE)


class Models:
    @staticmethod
    def other(y=None):
        return None
"""


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "my_model.py"
    path.write_text(MODEL_FILE)
    return path


def test_a_file_path_loads_the_function_and_is_loaded_once(model_file):
    first = load_callable(f"{model_file}:model", "--model")
    assert first.__name__ == "model" and first() is not None
    assert load_callable(f"{model_file}:model", "--model") is first
    assert load_callable(f"{model_file}:Models.other", "--model")() is None


def test_a_module_path_is_imported_from_the_current_folder(model_file, monkeypatch):
    monkeypatch.chdir(model_file.parent)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(model_file.parent))])
    monkeypatch.delitem(sys.modules, "my_model", raising=False)
    assert load_callable("my_model:model", "--model").__name__ == "model"
    assert str(model_file.parent) not in sys.path  # the search path is left as it was
    monkeypatch.delitem(sys.modules, "my_model")


def test_an_installed_module_loads():
    from amortized_ppl.models import bernoulli_rate

    found = load_callable("amortized_ppl.models.bernoulli_rate:design_fn", "--design")
    assert found is bernoulli_rate.design_fn


BAD_PATHS = [
    ("model", "expected module:function"),
    (":model", "expected module:function"),
    ("amortized_ppl.models.bernoulli_rate:", "expected module:function"),
    ("no_such_module_xyz:model", "no module named 'no_such_module_xyz'"),
    ("amortized_ppl.models.no_such_module:model", "no module named"),
    ("amortized_ppl.models.bernoulli_rate:modle", "has no attribute 'modle'"),
    ("amortized_ppl.models.bernoulli_rate:PRIOR", "is a tuple, expected a function"),
    ("missing_dir/missing.py:model", "no file 'missing_dir/missing.py'"),
]


@pytest.mark.parametrize("path,needle", BAD_PATHS, ids=[p for p, _ in BAD_PATHS])
def test_bad_import_paths_are_refused_naming_the_option(path, needle):
    with pytest.raises(ValueError) as error:
        load_callable(path, "--model")
    message = str(error.value)
    assert message.startswith("--model: ") and needle in message, message
    assert "\n" not in message


def test_a_missing_function_lists_what_the_module_defines(model_file):
    with pytest.raises(ValueError, match=r"has no attribute 'modle'; its functions: Models, model"):
        load_callable(f"{model_file}:modle", "--model")


def test_a_file_that_fails_to_run_is_one_line_and_not_kept(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import numpy\nraise RuntimeError('bad\\nthings')\n")
    with pytest.raises(ValueError, match=r"--design: running .* failed: RuntimeError: bad\.$"):
        load_callable(f"{broken}:design", "--design")
    assert not any("broken" in name for name in sys.modules)
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def model(:\n")
    with pytest.raises(ValueError, match="SyntaxError"):
        load_callable(f"{syntax}:model", "--model")


def test_file_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalize_import_path("models/m.py:model", "--model") == (
        f"{tmp_path.resolve()}/models/m.py:model"
    )
    assert normalize_import_path("pkg.mod:model", "--model") == "pkg.mod:model"
    assert is_file_path("m.py") and is_file_path("a/b") and not is_file_path("a.b")
