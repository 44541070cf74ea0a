"""Which inputs of a model make up the data set, and how a data set becomes a set of tokens.

A data set is what the model's data plate indexes: per-observation covariates passed as arguments
(arrays whose leading axis has one row per observation, e.g. ``x`` of shape ``(N, d)``) and the
observed values (e.g. ``y`` of shape ``(N,)``). Each observation becomes one token, the
concatenation of its covariates and observed values, flattened; a data set is an ``(N, token_dim)``
array plus a boolean mask of shape ``(N,)`` that marks real observations when data sets of
different sizes are padded to one length.

Observations reach the model the NumPyro way: through an argument that defaults to ``None``
(``def model(x, y=None)``) and feeds ``numpyro.sample(..., obs=y)``.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl.sites import ModelSites

__all__ = [
    "DataSpec",
    "batch_arguments",
    "bind_arguments",
    "build_data_spec",
    "dataset_batch_ndim",
    "default_observed_arguments",
    "make_tokens",
    "model_signature",
    "observation_axis",
    "select_dataset",
    "take_observations",
    "validate_dataset",
]


class DataSpec(NamedTuple):
    """How a model's arguments form a data set.

    Attributes:
        signature: the model's call signature.
        covariates: names of arguments with one row per observation (leading axis).
        observed: observed site name -> name of the argument that carries its values.
        feature_shapes: argument name -> shape of one observation's entry (trailing shape).
        token_dim: length of one token.
    """

    signature: inspect.Signature
    covariates: tuple[str, ...]
    observed: dict[str, str]
    feature_shapes: dict[str, tuple[int, ...]]
    token_dim: int

    @property
    def data_arguments(self) -> tuple[str, ...]:
        """All arguments that carry the data set: covariates then observations."""
        return self.covariates + tuple(self.observed.values())

    def token_names(self) -> list[str]:
        """A name per token feature: the argument, with the entry's index when it has several
        (``x[0]``, ``x[1]``, ``y``)."""
        names = []
        for arg in self.data_arguments:
            size = math.prod(self.feature_shapes[arg])
            names += [arg] if size == 1 else [f"{arg}[{i}]" for i in range(size)]
        return names

    def describe(self) -> dict:
        """A JSON-able description (for checkpoints)."""
        return {
            "covariates": list(self.covariates),
            "observed": dict(self.observed),
            "feature_shapes": {k: list(v) for k, v in self.feature_shapes.items()},
            "token_dim": self.token_dim,
        }



def bind_arguments(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Bind a call's arguments to the model's parameter names, defaults applied."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as err:
        raise TypeError(f"Arguments do not fit the model's signature {signature}: {err}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def default_observed_arguments(signature: inspect.Signature, trace) -> dict[str, str]:
    """Find observation arguments by NumPyro's convention: ``y=None`` feeding the site ``"y"``."""
    found = {}
    for name, param in signature.parameters.items():
        if param.default is None and name in trace and trace[name]["type"] == "sample":
            found[name] = name
    return found


def build_data_spec(
    signature: inspect.Signature,
    bound: Mapping[str, Any],
    sites: ModelSites,
    observed: Mapping[str, str],
    num_obs: int,
    covariates: Sequence[str] | None = None,
) -> DataSpec:
    """Decide which arguments are covariates and record per-observation shapes.

    Args:
        signature: the model's signature.
        bound: the bound arguments of one data set, observations included.
        sites: the traced model.
        observed: observed site name -> argument name.
        num_obs: the number of observations of that data set.
        covariates: explicit covariate argument names; by default every array argument whose
            leading axis has length ``num_obs`` (observation arguments excluded).
    """
    obs_args = set(observed.values())
    if covariates is None:
        covariates = tuple(
            name
            for name, value in bound.items()
            if name not in obs_args
            and isinstance(value, (jax.Array, np.ndarray))
            and value.ndim >= 1
            and value.shape[0] == num_obs
        )
    else:
        covariates = tuple(covariates)
        for name in covariates:
            if name not in signature.parameters:
                raise ValueError(
                    f"covariates: {name!r} is not an argument of the model; its arguments are "
                    f"{tuple(signature.parameters)}."
                )
    feature_shapes = {}
    for name in covariates:
        value = jnp.asarray(bound[name])
        if value.ndim < 1 or value.shape[0] != num_obs:
            raise ValueError(
                f"covariate {name!r}: expected a leading axis of length {num_obs} (one row per "
                f"observation), got shape {value.shape}."
            )
        feature_shapes[name] = tuple(value.shape[1:])
    for site, arg in observed.items():
        feature_shapes[arg] = sites.observed_event_shapes[site]
    token_dim = sum(int(math.prod(s)) for s in feature_shapes.values())
    return DataSpec(signature, covariates, dict(observed), feature_shapes, token_dim)


def observation_axis(spec: DataSpec, sites: ModelSites, arg: str) -> int:
    """Axis of an unbatched argument ``arg`` that indexes observations (0 for covariates)."""
    for site, name in spec.observed.items():
        if name == arg:
            return sites.observed_axes[site]
    return 0


def dataset_batch_ndim(spec: DataSpec, bound: Mapping[str, Any]) -> int:
    """Number of leading data-set axes (0 for one data set, 1 for a batch), checked across args."""
    ndims = {}
    for arg in spec.data_arguments:
        value = bound.get(arg)
        if value is None:
            continue
        ndims[arg] = jnp.ndim(value) - 1 - len(spec.feature_shapes[arg])
    values = set(ndims.values())
    if len(values) > 1 or any(v not in (0, 1) for v in values):
        raise ValueError(
            "Data arguments disagree on the number of data sets: expected each to have shape "
            "[num_datasets,] num_obs, *features with features "
            f"{ {a: spec.feature_shapes[a] for a in ndims} }, got shapes "
            f"{ {a: tuple(jnp.shape(bound[a])) for a in ndims} }."
        )
    return values.pop() if values else 0


def validate_dataset(
    spec: DataSpec, sites: ModelSites, bound: Mapping[str, Any], *, max_obs: int | None = None
) -> tuple[int, int]:
    """Check one data set (or a batch) against the spec; raise naming the argument.

    Checks presence of the observations, per-observation shapes, a common number of observations,
    a non-empty data set, an optional upper limit, and (for concrete arrays) NaN/Inf.

    Returns:
        ``(batch_ndim, num_obs)``: 0 or 1 leading data-set axes, and the number of observations.
    """
    for site, arg in spec.observed.items():
        if bound.get(arg) is None:
            raise ValueError(
                f"The guide needs the observations: argument {arg!r} (observed site {site!r}) is None."
            )
    batch_ndim = dataset_batch_ndim(spec, bound)
    num_obs = {}
    for arg in spec.data_arguments:
        value = bound[arg]
        shape = tuple(jnp.shape(value))
        expected = spec.feature_shapes[arg]
        axis = batch_ndim + observation_axis(spec, sites, arg)
        features = shape[batch_ndim:axis] + shape[axis + 1 :]
        if features != expected:
            raise ValueError(
                f"argument {arg!r}: expected per-observation shape {expected} (the shape the guide "
                f"was built for), got {features} in an array of shape {shape}."
            )
        num_obs[arg] = shape[axis]
        if not isinstance(value, jax.core.Tracer):
            array = np.asarray(value)
            if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_) or \
                    np.issubdtype(array.dtype, np.complexfloating):
                kind = "complex numbers" if np.iscomplexobj(array) else "non-numbers"
                raise TypeError(
                    f"argument {arg!r}: expected real numbers, got {kind} (an array of dtype "
                    f"{array.dtype}).")
            if not np.all(np.isfinite(array)):
                bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
                raise ValueError(f"argument {arg!r} contains {bad} NaN or Inf value(s).")
    sizes = set(num_obs.values())
    if len(sizes) > 1:
        raise ValueError(f"Data arguments disagree on the number of observations: {num_obs}.")
    if batch_ndim:
        counts = {arg: tuple(jnp.shape(bound[arg]))[0] for arg in spec.data_arguments}
        if len(set(counts.values())) > 1:
            raise ValueError(f"Data arguments disagree on the number of data sets: {counts}.")
    n = sizes.pop()
    if n == 0:
        raise ValueError(f"Empty data set: arguments {tuple(num_obs)} have 0 observations.")
    if max_obs is not None and n > max_obs:
        raise ValueError(
            f"The data set has {n} observations, more than the {max_obs} this guide supports "
            "(its `max_obs`); refit with a larger `num_obs` range or use an iterative guide."
        )
    return batch_ndim, n


def batch_arguments(
    spec: DataSpec,
    sites: ModelSites,
    bound: Mapping[str, Any],
    data_mask=None,
    *,
    max_obs: int | None = None,
) -> tuple[dict[str, Any], np.ndarray, bool]:
    """Validate one data set or a batch and give every array argument a data-set axis.

    Args:
        spec, sites: the data spec and the traced model.
        bound: the model's bound arguments: one data set, or a batch with a leading axis on
            every data argument.
        data_mask: optional ``(N,)`` or ``(B, N)`` bool marking real observations of data sets
            padded to one length.
        max_obs: the largest number of observations accepted (None: any).

    Returns:
        ``(arguments, mask (B, N), is_batch)``: for one data set ``B == 1``. Data arguments are
        JAX arrays with the ``B`` axis; other array arguments are broadcast to it; other values
        are passed on. Tokens are made later, inside compiled calls.
    """
    batch_ndim, num_obs = validate_dataset(spec, sites, bound, max_obs=max_obs)
    data_args = set(spec.data_arguments)
    data = {a: jnp.asarray(bound[a]) for a in data_args}
    if not batch_ndim:
        data = {a: v[None] for a, v in data.items()}
    num = next(iter(data.values())).shape[0]
    arguments = {}
    for name, value in bound.items():
        if name in data_args:
            arguments[name] = data[name]
        elif isinstance(value, (jax.Array, np.ndarray)):
            arguments[name] = jnp.broadcast_to(value, (num,) + jnp.shape(value))
        else:
            arguments[name] = value
    if data_mask is None:
        mask = np.ones((num, num_obs), bool)
    else:
        mask = np.asarray(data_mask)
        expected = (num, num_obs) if batch_ndim else (num_obs,)
        if mask.shape != expected or mask.dtype != np.bool_:
            raise ValueError(
                f"data_mask: expected a bool array of shape {expected} (data sets x "
                f"observations), got {mask.dtype} of shape {mask.shape}."
            )
        mask = mask.reshape(num, num_obs)
        if not mask.any(axis=1).all():
            raise ValueError("data_mask: a data set has no observation (its mask is all False).")
    return arguments, mask, bool(batch_ndim)


def make_tokens(spec: DataSpec, sites: ModelSites, bound: Mapping[str, Any]) -> jax.Array:
    """Turn one unbatched data set into tokens.

    Args:
        spec: the data spec.
        sites: the traced model.
        bound: bound arguments of one data set (observations included).

    Returns:
        Array of shape ``(N, token_dim)``.
    """
    parts = []
    for arg in spec.data_arguments:
        value = jnp.asarray(bound[arg])
        axis = observation_axis(spec, sites, arg)
        value = jnp.moveaxis(value, axis, 0)
        parts.append(jnp.reshape(value, (value.shape[0], -1)).astype(jnp.result_type(float)))
    return jnp.concatenate(parts, axis=-1)


def model_signature(model: Callable) -> inspect.Signature:
    """The model's signature (raises a clear error for callables without one)."""
    try:
        return inspect.signature(model)
    except (TypeError, ValueError) as err:
        raise TypeError(f"Cannot read the signature of the model {model!r}: {err}") from None


def select_dataset(arguments: dict, mask, index: int, data_arguments) -> dict:
    """The model's arguments for data set ``index`` of a batch, padded observations dropped.

    Args:
        arguments: bound arguments whose arrays carry a leading data-set axis (as returned by a
            guide's ``prepare``); other values are shared.
        mask: ``(B, N)`` bool, True for real observations.
        index: which data set.
        data_arguments: names of the per-observation arguments (``spec.data_arguments``).

    Returns:
        Keyword arguments for the model, e.g. for NUTS on that data set.
    """
    rows = np.asarray(mask[index])
    out = {}
    for name, value in arguments.items():
        if isinstance(value, (jax.Array, np.ndarray)):
            value = value[index]
            if name in data_arguments:
                value = value[rows]
        out[name] = value
    return out


def take_observations(
    spec: DataSpec, sites: ModelSites, bound: Mapping[str, Any], index: jax.Array
) -> dict[str, Any]:
    """The model's arguments for a subset of one data set's observations (a mini-batch).

    Args:
        spec: the data spec.
        sites: the traced model.
        bound: bound arguments of one unbatched data set.
        index: integer positions of the observations to keep, shape ``(m,)``.

    Returns:
        ``bound`` with every data argument cut to those observations along its observation axis
        (shape ``(m, ...)`` in place of ``(N, ...)``); other arguments unchanged.
    """
    out = dict(bound)
    for arg in spec.data_arguments:
        axis = observation_axis(spec, sites, arg)
        out[arg] = jnp.take(jnp.asarray(bound[arg]), index, axis=axis)
    return out
