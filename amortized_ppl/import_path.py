"""A function's import path (``module:qualname``), so a checkpoint can name its model.

A model or design function defined in an importable module is stored by name and imported
again on loading; one defined in ``__main__``, a notebook or inside another function has no
import path, and the loader must then be given it.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
from typing import Callable

__all__ = ["import_path_of", "resolve_import_path"]


def import_path_of(fn) -> str | None:
    """``"module:qualname"`` when importing that gives back ``fn`` itself, else None.

    The module must be findable on ``sys.path`` by its name (another process can import it),
    not only present in this process's ``sys.modules`` (a file loaded under a made-up name).
    """
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    top = module.split(".")[0]
    if top not in sys.builtin_module_names and importlib.machinery.PathFinder.find_spec(
            top) is None:
        return None
    try:
        found = _walk(importlib.import_module(module), qualname)
    except (ImportError, AttributeError):
        return None
    return f"{module}:{qualname}" if found is fn else None


def resolve_import_path(path: str, what: str = "function") -> Callable:
    """The callable that ``"module:qualname"`` names.

    Raises:
        ValueError: a malformed path, a module that does not import, or a missing name.
    """
    module, sep, qualname = str(path).partition(":")
    if not sep or not module or not qualname:
        raise ValueError(f"{what}: expected an import path 'module:function', got {path!r}.")
    try:
        found = _walk(importlib.import_module(module), qualname)
    except ImportError as err:
        raise ValueError(f"{what}: cannot import module {module!r} ({err}).") from None
    except AttributeError:
        raise ValueError(f"{what}: module {module!r} has no {qualname!r}.") from None
    if not callable(found):
        raise ValueError(f"{what}: {path!r} is a {type(found).__name__}, not a function.")
    return found


def _walk(module, qualname: str):
    found = module
    for part in qualname.split("."):
        found = getattr(found, part)
    return found
