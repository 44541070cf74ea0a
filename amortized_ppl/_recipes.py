"""Recipes: frozen dataclasses that describe how to build a module, and back from JSON.

An encoder or a posterior family is chosen by a *recipe* (``SetEncoder(summary_size=32)``,
``LaplaceRefined(MultivariateNormal(), num_steps=8)``): a small immutable value, hashable (so it
can sit in a static field of an ``equinox`` module) and JSON-describable, whose ``build`` makes the
module with the sizes a problem dictates. A checkpoint stores the recipes' descriptions; loading
rebuilds the modules from them and then fills in the saved arrays, so nothing but the model is
needed to restore a trained posterior.

Recipes register themselves with :func:`recipe`; :func:`describe_recipe` and
:func:`recipe_from_description` convert, nested recipes included.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["describe_recipe", "recipe", "recipe_from_description"]

_REGISTRY: dict[str, type] = {}


def recipe(cls: type) -> type:
    """Class decorator: make ``cls`` a frozen dataclass and register it by name."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    name = cls.__name__
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"recipe: a recipe named {name!r} is registered already.")
    _REGISTRY[name] = cls
    return cls


def describe_recipe(value: Any) -> Any:
    """A JSON-able description: ``{"type": name, field: value, ...}`` with nested recipes."""
    if dataclasses.is_dataclass(value) and type(value).__name__ in _REGISTRY:
        out = {"type": type(value).__name__}
        for field in dataclasses.fields(value):
            out[field.name] = describe_recipe(getattr(value, field.name))
        return out
    if isinstance(value, tuple):
        return [describe_recipe(v) for v in value]
    return value


def recipe_from_description(description: Any) -> Any:
    """The recipe a :func:`describe_recipe` dict describes (nested ones included)."""
    if isinstance(description, dict) and "type" in description:
        name = description["type"]
        if name not in _REGISTRY:
            raise ValueError(
                f"Unknown recipe {name!r}; known: {sorted(_REGISTRY)}. Import the module that "
                "defines it before loading."
            )
        cls = _REGISTRY[name]
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(description) - names - {"type"})
        if unknown:
            raise ValueError(f"Recipe {name!r}: unknown fields {unknown}; it has {sorted(names)}.")
        return cls(**{k: recipe_from_description(v) for k, v in description.items() if k != "type"})
    if isinstance(description, list):
        return tuple(recipe_from_description(v) for v in description)
    return description
