"""Import a user's function from an import path: ``module:function`` or ``file.py:function``.

``package.module:function`` imports the module (the current folder is searched first, as for
``python -m``); ``path/to/file.py:function`` runs the file as a module of its own. The part after
the colon may be dotted (``module:Class.method``). Every failure is a ``ValueError`` naming the
option, what was expected and what came, so the command line prints one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

__all__ = ["is_file_path", "load_callable", "normalize_import_path"]

_FORMS = "module:function or path/to/file.py:function"


def is_file_path(module: str) -> bool:
    """Whether the module part of an import path names a Python file."""
    return module.endswith(".py") or "/" in module or os.sep in module


def _split(import_path: str, option: str) -> tuple[str, str]:
    module, sep, attribute = str(import_path).rpartition(":")
    if not sep or not module or not attribute:
        raise ValueError(f"{option}: expected {_FORMS}, got {import_path!r}.")
    return module, attribute


def normalize_import_path(import_path: str, option: str) -> str:
    """The import path with a file made absolute, so that it resolves from any folder."""
    module, attribute = _split(import_path, option)
    if is_file_path(module):
        module = str(Path(module).expanduser().resolve())
    return f"{module}:{attribute}"


@contextlib.contextmanager
def _searched_first(folder: str):
    """Put ``folder`` first on ``sys.path`` while importing (console scripts leave the current
    folder out; a file may import the modules beside it)."""
    added = folder not in sys.path and not (folder == os.getcwd() and "" in sys.path)
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def _import_module(name: str, option: str) -> ModuleType:
    try:
        with _searched_first(os.getcwd()):
            return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and name.startswith(error.name):
            raise ValueError(
                f"{option}: no module named {name!r} (searched the current folder and "
                f"sys.path); expected {_FORMS}."
            ) from None
        raise ValueError(f"{option}: importing {name!r} failed: {_describe(error)}.") from None
    except Exception as error:  # noqa: BLE001 - the user's module failed: say so in one line
        raise ValueError(f"{option}: importing {name!r} failed: {_describe(error)}.") from None


def _load_file(path: str, option: str) -> ModuleType:
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise ValueError(f"{option}: no file {path!r} (expected {_FORMS}).")
    digest = hashlib.sha256(str(file).encode()).hexdigest()[:12]
    name = f"_amortized_ppl_user_{file.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ValueError(f"{option}: {path!r} cannot be imported as a Python module.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        with _searched_first(str(file.parent)):
            spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - the user's file failed: say so in one line
        del sys.modules[name]
        raise ValueError(f"{option}: running {path!r} failed: {_describe(error)}.") from None
    return module


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def load_callable(import_path: str, option: str) -> Callable:
    """The function an import path names.

    Args:
        import_path: ``module:function`` or ``path/to/file.py:function`` (the function may be a
            dotted attribute path, ``module:Class.method``).
        option: the command-line option it came from, e.g. ``"--model"``, named in errors.

    Returns:
        The callable.

    Raises:
        ValueError: a malformed path, a module or file that cannot be imported, a missing
            attribute (listing the module's functions) or an attribute that is not callable.

    Examples:
        >>> load_callable("amortized_ppl.models.bernoulli_rate:model", "--model").__name__
        'model'
    """
    module_name, attribute = _split(import_path, option)
    if is_file_path(module_name):
        module = _load_file(module_name, option)
    else:
        module = _import_module(module_name, option)
    value = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise ValueError(
                f"{option}: {module_name!r} has no attribute {attribute!r}; its functions: "
                f"{_functions(module)}."
            )
        value = getattr(value, part)
    if not callable(value):
        raise ValueError(
            f"{option}: {import_path!r} is a {type(value).__name__}, expected a function."
        )
    return value


def _functions(module: ModuleType) -> str:
    names = sorted(
        name
        for name, value in vars(module).items()
        if callable(value)
        and not name.startswith("_")
        and getattr(value, "__module__", None) == module.__name__
    )
    return ", ".join(names) if names else "none"
