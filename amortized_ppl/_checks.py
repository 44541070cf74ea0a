"""Argument checks shared by every module: keys, counts, positive numbers, finite arrays.

Each check returns the value in its canonical Python or JAX type, or raises with the argument's
name, what was expected and what came (``ValueError`` for a bad value, ``TypeError`` for a bad
type), so that callers write ``n = check_int(n, "num_steps")`` and nothing else.
"""

from __future__ import annotations

import math
import os
import pathlib
import tempfile
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "check_finite",
    "check_int",
    "check_key",
    "check_open_unit",
    "check_output_dir",
    "check_positive_float",
    "check_sample_shape",
    "list_some",
]


def check_key(key: Any, name: str = "rng_key") -> jax.Array:
    """Raise a clear ``TypeError`` unless ``key`` is a JAX PRNG key (typed or raw ``uint32[2]``)."""
    if isinstance(key, (int, np.integer)):
        raise TypeError(
            f"{name}: expected a JAX PRNG key such as jax.random.key({int(key)}), got the integer "
            f"{int(key)}."
        )
    if not isinstance(key, jax.Array):
        raise TypeError(f"{name}: expected a JAX PRNG key, got {type(key).__name__}.")
    is_typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    is_raw = key.dtype == jnp.uint32 and key.shape[-1:] == (2,)
    if not (is_typed or is_raw):
        raise TypeError(
            f"{name}: expected a JAX PRNG key (jax.random.key(0)), got an array of dtype "
            f"{key.dtype} and shape {key.shape}."
        )
    return key


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an ``int``, or ``ValueError`` unless it is an integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}.")
    return int(value)


def check_positive_float(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """``value`` as a ``float``, or ``ValueError`` unless it is finite and positive (or zero)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name}: expected a {kind} finite float, got {value!r}.")
    return number


def check_open_unit(value: Any, name: str) -> float:
    """``value`` as a ``float``, or ``ValueError`` unless it lies in ``(0, 1)``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not 0.0 < number < 1.0:
        raise ValueError(f"{name}: expected a float in (0, 1), got {value!r}.")
    return number


def check_finite(array: Any, name: str) -> jax.Array:
    """``array`` as a JAX array; NaN or Inf raise ``ValueError`` when it is concrete, and an
    ``eqx.error_if`` runtime error inside ``jit``/``vmap``."""
    array = jnp.asarray(array)
    message = f"{name}: expected finite values, got NaN or Inf entries."
    if isinstance(array, jax.core.Tracer):
        return eqx.error_if(array, ~jnp.all(jnp.isfinite(array)), message)
    if not bool(jnp.all(jnp.isfinite(array))):
        raise ValueError(message)
    return array


def check_output_dir(path: Any, name: str = "out") -> pathlib.Path:
    """``path`` as a created, writable directory, checked before any long work writes into it.

    Raises:
        NotADirectoryError: ``path`` (or a parent) is a file.
        PermissionError: the directory cannot be created or written to.
    """
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{name}: {path} exists and is not a directory.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.remove(probe)
    except (FileExistsError, NotADirectoryError):
        raise NotADirectoryError(
            f"{name}: {path} cannot be created (a parent is a file).") from None
    except OSError as error:
        raise PermissionError(
            f"{name}: cannot write to {path} ({error.strerror or error}); choose another folder."
        ) from None
    return path


def check_sample_shape(value: Any, name: str = "sample_shape") -> tuple[int, ...]:
    """``value`` as a tuple of non-negative ints, or ``TypeError`` naming what came instead."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        raise TypeError(f"{name}: expected a tuple of ints such as ({int(value)},), got the "
                        f"integer {int(value)}.")
    try:
        shape = tuple(value)
    except TypeError:
        raise TypeError(f"{name}: expected a tuple of ints, got {value!r}.") from None
    if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 0
               for n in shape):
        raise TypeError(f"{name}: expected a tuple of non-negative ints, got {value!r}.")
    return tuple(int(n) for n in shape)


def list_some(items: list[str], limit: int = 5, sep: str = "; ") -> str:
    """The first ``limit`` items joined, and how many more there are (for warnings that name
    data sets)."""
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return sep.join(items[:limit]) + more
