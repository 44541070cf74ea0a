"""Turn guide and reference draws into ArviZ objects, with dimension names read off the model.

Two layouts of draws exist in this package, and the caller names which one it passes (shapes are
never used to guess it):

- ``layout="draws"`` (the default): amortized-guide draws, one array of shape
  ``(num_draws, *site_shape)`` per site, as ``guide.sample_posterior(key, params,
  sample_shape=(num_draws,))`` or :class:`numpyro.infer.Predictive` return them. A chain axis of
  length 1 is added.
- ``layout="chains"``: reference (NUTS) draws of shape ``(num_chains, num_draws, *site_shape)``,
  as :attr:`amortized_ppl.reference.ReferenceResult.samples`.

With ``dataset_axis=True`` every array carries one more leading axis, the data set, and
:func:`to_inference_data` returns one ArviZ object per data set.

Only what ArviZ 0.x and 1.x both offer is used: ``az.from_dict`` with a ``posterior``,
``observed_data``, ``constant_data``, ``posterior_predictive``, ``log_likelihood``, ``prior``,
``prior_predictive`` and ``sample_stats`` group, ``dims`` and ``coords``. ArviZ 0.x takes the
groups as keywords and returns ``InferenceData``; ArviZ 1.x takes a dict of groups and returns an
``xarray.DataTree``. Both go into ``az.summary``, ``az.loo`` and the plots as is.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax
import numpy as np
from numpyro import handlers

__all__ = ["INDEPENDENT", "LAYOUTS", "model_dims", "summary", "to_inference_data"]

LAYOUTS = ("draws", "chains")
"""Accepted values of ``layout``: ``(num_draws, ...)`` or ``(num_chains, num_draws, ...)``."""

_SAMPLE_GROUPS = (
    "posterior",
    "posterior_predictive",
    "log_likelihood",
    "prior",
    "prior_predictive",
    "sample_stats",
)
_NOT_A_DICT = "{name} must be a dict site -> array, got {type_name}."


def _arviz():
    """Import ArviZ lazily (it pulls in matplotlib), silencing the 0.2x FutureWarning."""
    with warnings.catch_warnings():
        # ArviZ 0.2x announces its 1.0 refactor with a FutureWarning on import.
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az


def _from_dict(groups: dict[str, dict], dims: dict | None, coords: dict | None):
    """Call ``az.from_dict`` with the group-dict layout of ArviZ 1.x, or the 0.x keywords."""
    az = _arviz()
    if int(az.__version__.split(".")[0]) >= 1:
        return az.from_dict(groups, dims=dims, coords=coords)
    return az.from_dict(**groups, dims=dims, coords=coords)


INDEPENDENT = "independent draws"
"""The posterior group's ``attrs["sampling"]`` for guide draws: no chains, no autocorrelation."""


def _independent_draws(groups: dict[str, dict], dims: dict | None, coords: dict | None):
    """``_from_dict`` for independent draws, marked so that :func:`summary` gives no MCMC
    diagnostics (R-hat of one pseudo-chain is undefined and ESS is the number of draws)."""
    idata = _from_dict(groups, dims, coords)
    for group in groups:
        if group in _SAMPLE_GROUPS:
            idata[group].attrs["sampling"] = INDEPENDENT
    return idata


def summary(idata, **kwargs):
    """``az.summary`` that knows independent draws from MCMC chains.

    For guide draws (:func:`to_inference_data` with ``layout="draws"``) only the statistics are
    given (mean, SD, HDI), without the R-hat and effective sample sizes that ArviZ would compute
    for one MCMC chain (undefined, with a warning); MCMC draws get ArviZ's full summary.
    """
    az = _arviz()
    if idata["posterior"].attrs.get("sampling") == INDEPENDENT:
        if kwargs.get("kind", "stats") != "stats":
            raise ValueError(
                f"kind={kwargs['kind']!r}: these are independent draws from an amortized "
                "posterior, not MCMC chains; R-hat and ESS do not apply (use kind='stats')."
            )
        kwargs["kind"] = "stats"
    return az.summary(idata, **kwargs)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _as_arrays(group: str, values: Any) -> dict[str, np.ndarray]:
    if not isinstance(values, Mapping):
        raise TypeError(_NOT_A_DICT.format(name=group, type_name=type(values).__name__))
    if not values:
        raise ValueError(f"{group} is an empty dict; pass at least one site.")
    arrays = {}
    for site, value in values.items():
        if not isinstance(site, str):
            raise TypeError(f"{group}: site names must be strings, got {site!r}.")
        arrays[site] = np.asarray(value)
    return arrays


def _warn_nan(group: str, arrays: dict[str, np.ndarray]) -> None:
    for site, value in arrays.items():
        if not np.issubdtype(value.dtype, np.inexact):
            continue
        num_nan = int(np.count_nonzero(np.isnan(value)))
        if num_nan:
            warnings.warn(
                f"{group}: site {site!r} holds {num_nan} NaN value(s) out of {value.size}; "
                "ArviZ summaries of it will be NaN or silently skip them. Check the guide or "
                "sampler that produced it.",
                RuntimeWarning,
                stacklevel=3,
            )


def _leading_shape(
    group: str, arrays: dict[str, np.ndarray], num_leading: int, axis_names: str
) -> tuple[int, ...]:
    """Check every site has the same leading (sample/data-set) shape and return it."""
    shapes = {}
    for site, value in arrays.items():
        if value.ndim < num_leading:
            raise ValueError(
                f"{group}: site {site!r} needs at least {num_leading} leading axes "
                f"({axis_names}), got shape {value.shape}."
            )
        shapes[site] = value.shape[:num_leading]
    if len(set(shapes.values())) > 1:
        raise ValueError(
            f"{group}: sites disagree on the leading ({axis_names}) shape: {shapes}. Every site "
            "must have the same number of draws (and chains and data sets)."
        )
    return next(iter(shapes.values()))


def _check_dims(dims: Mapping | None, site_ndims: dict[str, int]) -> dict | None:
    if dims is None:
        return None
    if not isinstance(dims, Mapping):
        raise TypeError(
            f"dims must be a dict site -> list of dim names, got {type(dims).__name__}."
        )
    checked = {}
    for site, names in dims.items():
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise TypeError(f"dims[{site!r}] must be a list of dim names, got {names!r}.")
        names = list(names)
        if site in site_ndims and len(names) > site_ndims[site]:
            raise ValueError(
                f"dims[{site!r}]: site {site!r} has {site_ndims[site]} non-sample dimension(s), "
                f"got {len(names)} names {names}."
            )
        checked[site] = names
    return checked


# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------


def to_inference_data(
    samples: Mapping[str, Any],
    *,
    layout: Literal["draws", "chains"] = "draws",
    observed_data: Mapping[str, Any] | None = None,
    posterior_predictive: Mapping[str, Any] | None = None,
    prior: Mapping[str, Any] | None = None,
    sample_stats: Mapping[str, Any] | None = None,
    prior_predictive: Mapping[str, Any] | None = None,
    log_likelihood: Mapping[str, Any] | None = None,
    constant_data: Mapping[str, Any] | None = None,
    dims: Mapping[str, Sequence[str]] | None = None,
    coords: Mapping[str, Any] | None = None,
    dataset_axis: bool = False,
):
    """Build an ArviZ object from posterior draws and, optionally, data and predictive draws.

    ``samples``, ``posterior_predictive``, ``log_likelihood``, ``prior``, ``prior_predictive``
    and ``sample_stats`` all follow ``layout``:
    each site is ``(num_draws, *site_shape)`` for ``"draws"`` (guide draws; a chain axis of
    length 1 is added) or ``(num_chains, num_draws, *site_shape)`` for ``"chains"`` (reference
    NUTS draws). Within a group every site must have the same number of draws (and chains).
    ``observed_data`` and ``constant_data`` entries have no sample axes.

    With ``dataset_axis=True`` every array of every group, ``observed_data``,
    ``constant_data`` and ``prior`` included, has one more leading axis indexing data sets, of
    the same length everywhere; to share one prior between data sets, broadcast it
    (``np.broadcast_to``).

    Args:
        samples: Posterior draws, a dict site -> array (NumPy or JAX).
        layout: ``"draws"`` or ``"chains"``, see above. Never inferred from shapes.
        observed_data: Observations, a dict site -> array of the site's shape.
        posterior_predictive: Posterior predictive draws, laid out like ``samples``.
        prior: Prior draws of the latents, laid out like ``samples``.
        sample_stats: Per-draw statistics (e.g. ``"diverging"``, ``"lp"``), laid out like
            ``samples`` with no site dimensions.
        prior_predictive: Prior predictive draws of the observed sites, laid out like
            ``samples``.
        log_likelihood: Pointwise log-likelihood of each observed site, laid out like
            ``samples`` with the site's batch shape (one entry per observation, event axes
            summed), e.g. ``(num_draws, N)``: what ``az.loo``, ``az.waic`` and ``az.compare``
            read. ArviZ names its axes with the site's ``dims``, event axes left out.
        constant_data: The model's inputs other than observations (covariates, design), a dict
            argument -> array without sample axes, like ``observed_data``.
        dims: Names of each site's non-sample axes, e.g. ``{"w": ["feature"]}``, shared by all
            groups; see :func:`model_dims`. Sites left out, or trailing axes left unnamed, get
            ArviZ's default ``{site}_dim_{k}``. Entries for absent sites are ignored.
        coords: Coordinate values of named dims, e.g. ``{"feature": ["age", "income"]}``.
        dataset_axis: Whether arrays carry a leading data-set axis.

    Returns:
        An ArviZ object (``InferenceData`` with ArviZ 0.x, ``xarray.DataTree`` with 1.x) with the
        groups given; with ``dataset_axis=True`` a list of them, one per data set.

    Raises:
        TypeError: if a group is not a dict, or ``dims`` is malformed.
        ValueError: for an unknown ``layout``, an empty group, too few axes, sites with different
            numbers of draws (naming them), a data-set count that differs between groups, or more
            dim names than a site has axes.

    Warns:
        RuntimeWarning: for each site holding NaN values, naming it.

    Examples:
        >>> draws = guide.sample_posterior(key, params, sample_shape=(1000,))  # doctest: +SKIP
        >>> idata = to_inference_data(draws, observed_data={"y": y},
        ...                           dims=model_dims(model, x, y))  # doctest: +SKIP
        >>> summary(idata)  # statistics only: independent draws  # doctest: +SKIP
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
    num_sample_axes = 2 if layout == "chains" else 1
    sample_axis_names = "chain, draw" if layout == "chains" else "draw"
    num_dataset_axes = 1 if dataset_axis else 0
    if dataset_axis:
        sample_axis_names = "data set, " + sample_axis_names

    given = {
        "posterior": samples,
        "posterior_predictive": posterior_predictive,
        "prior": prior,
        "prior_predictive": prior_predictive,
        "sample_stats": sample_stats,
        "observed_data": observed_data,
        "constant_data": constant_data,
        "log_likelihood": log_likelihood,
    }
    groups: dict[str, dict[str, np.ndarray]] = {}
    num_datasets: dict[str, int] = {}
    site_ndims: dict[str, int] = {}
    for group, values in given.items():
        if values is None and group != "posterior":
            continue
        name = "samples" if group == "posterior" else group
        arrays = _as_arrays(name, values)
        if group in _SAMPLE_GROUPS:
            num_leading = num_dataset_axes + num_sample_axes
            leading = _leading_shape(name, arrays, num_leading, sample_axis_names)
        else:
            num_leading = num_dataset_axes
            leading = _leading_shape(name, arrays, num_leading, "data set")
        if dataset_axis:
            num_datasets[name] = leading[0]
        _warn_nan(name, arrays)
        if group != "log_likelihood":  # its sites lack event axes; ArviZ drops their names
            for site, value in arrays.items():
                site_ndims.setdefault(site, value.ndim - num_leading)
        if group in _SAMPLE_GROUPS and layout == "draws":
            # Insert the chain axis of length 1 after the (optional) data-set axis.
            arrays = {k: np.expand_dims(v, num_dataset_axes) for k, v in arrays.items()}
        groups[group] = arrays

    dims = _check_dims(dims, site_ndims)
    coords = dict(coords) if coords is not None else None
    build = _from_dict if layout == "chains" else _independent_draws
    if not dataset_axis:
        return build(groups, dims, coords)

    if len(set(num_datasets.values())) > 1:
        raise ValueError(
            f"dataset_axis=True: groups disagree on the number of data sets: {num_datasets}."
        )
    count = next(iter(num_datasets.values()))
    return [
        build(
            {group: {k: v[index] for k, v in arrays.items()} for group, arrays in groups.items()},
            dims,
            coords,
        )
        for index in range(count)
    ]


# ---------------------------------------------------------------------------------------------
# Dimension names from the model
# ---------------------------------------------------------------------------------------------


def model_dims(model: Callable, *args, **kwargs) -> dict[str, list[str]]:
    """Name each sample site's dimensions after the plates that enclose it.

    The model is traced once (``numpyro.handlers.trace`` of ``handlers.seed(model, 0)``; names do
    not depend on the seed). A batch axis of a site that a plate indexes (the plate's ``dim``,
    counted from the right of the batch shape) is named after the plate; any other axis, event
    axes included, gets ``{site}_dim_{k}`` with ``k`` its position among the site's axes, as
    ArviZ names it by default. Deterministic sites and ``numpyro.factor`` terms are left out
    (ArviZ's defaults apply to them).

    Args:
        model: A NumPyro model.
        *args, **kwargs: The model's inputs for one data set.

    Returns:
        A dict site -> list of dim names, one per axis of the site's value (``[]`` for a scalar),
        to pass as ``dims`` to :func:`to_inference_data`.

    Examples:
        >>> def model(x, y=None):
        ...     w = numpyro.sample("w", dist.Normal(0, 1).expand([3]).to_event(1))
        ...     with numpyro.plate("data", x.shape[0]):
        ...         numpyro.sample("y", dist.Normal(x @ w, 1), obs=y)
        >>> model_dims(model, x, y)  # doctest: +SKIP
        {'w': ['w_dim_0'], 'y': ['data']}
    """
    trace = handlers.trace(handlers.seed(model, rng_seed=0)).get_trace(*args, **kwargs)
    dims: dict[str, list[str]] = {}
    for name, site in trace.items():
        if site["type"] != "sample" or type(site["fn"]).__name__ == "Unit":
            continue
        shape = jax.numpy.shape(site["value"])
        event_ndim = len(getattr(site["fn"], "event_shape", ()))
        batch_ndim = len(shape) - event_ndim
        plate_names = {frame.dim: frame.name for frame in site["cond_indep_stack"]}
        dims[name] = [
            plate_names.get(axis - batch_ndim, f"{name}_dim_{axis}")
            if axis < batch_ndim
            else f"{name}_dim_{axis}"
            for axis in range(len(shape))
        ]
    return dims
