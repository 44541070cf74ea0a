"""Complete ArviZ objects for a data set: every group that ``az.loo``, ``az.compare`` and
``az.plot_ppc`` read.

:func:`~amortized_ppl.diagnostics.arviz.to_inference_data` converts draws the caller already has;
the functions here produce them, for an amortized guide (:func:`guide_inference_data`) and for a
NUTS reference (:func:`reference_inference_data`), with the same groups so that the two objects
compare side by side:

- ``posterior``: the latent draws (for a guide, resampled by their importance weights; see
  :func:`guide_inference_data`);
- ``posterior_predictive``: the observed sites simulated at each draw
  (:class:`numpyro.infer.Predictive`);
- ``log_likelihood``: ``log p(y_n | theta_s)`` of every observed site, per draw ``s`` and per
  observation ``n`` (:func:`numpyro.infer.log_likelihood`: the model's own densities);
- ``prior`` and ``prior_predictive``: the model run forward on the data set's inputs;
- ``observed_data``: the observations; ``constant_data``: the model's other array inputs
  (covariates, design);
- ``sample_stats``: the importance log weight of each guide draw, or the NUTS statistics.

Dimensions are named after the model's plates
(:func:`~amortized_ppl.diagnostics.arviz.model_dims`), and a covariate's leading axis after the
plate whose observations its rows follow (``x`` of shape ``(N, d)``: ``("data", "x_dim_1")``).
Padded observations of a batch (``data_mask`` False) are dropped before anything is computed:
they are in no group and in no log-likelihood.

References:
    Vehtari, A., Gelman, A. and Gabry, J. (2017). Practical Bayesian model evaluation using
    leave-one-out cross-validation and WAIC. *Statistics and Computing*, 27(5):1413-1432.
    Vehtari, A., Simpson, D., Gelman, A., Yao, Y. and Gabry, J. (2024). Pareto smoothed
    importance sampling. *Journal of Machine Learning Research*, 25(72):1-58.
    Yao, Y., Vehtari, A., Simpson, D. and Gelman, A. (2018). Yes, but did it work?: Evaluating
    variational inference. *ICML*.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.infer import Predictive, log_likelihood

from amortized_ppl.data import bind_arguments, model_signature, select_dataset
from amortized_ppl.diagnostics.arviz import model_dims, to_inference_data
from amortized_ppl.diagnostics.evidence import evidence_from_log_weights
from amortized_ppl.diagnostics.importance import importance_weights
from amortized_ppl.diagnostics.psis import importance_resample, khat_threshold

__all__ = ["guide_inference_data", "reference_inference_data"]


# ---------------------------------------------------------------------------------------------
# Groups shared by the guide and the reference
# ---------------------------------------------------------------------------------------------


def _predictive_groups(key, model, latent_names, observed, arguments, posterior, num_prior):
    """Posterior predictive, prior and prior predictive draws (``(S, ...)`` per site)."""
    post_key, prior_key = jax.random.split(key)
    predictive = Predictive(model, posterior_samples=posterior, return_sites=list(observed))
    posterior_predictive = predictive(post_key, **arguments)
    groups = {"posterior_predictive": posterior_predictive}
    if num_prior:
        prior_draws = Predictive(model, num_samples=int(num_prior))(prior_key, **arguments)
        groups["prior"] = {k: v for k, v in prior_draws.items() if k in latent_names}
        groups["prior_predictive"] = {k: v for k, v in prior_draws.items() if k in observed}
    return groups


def _pointwise_log_likelihood(model, posterior, arguments, observed, batch_ndims):
    """``log p(y_n | theta)`` of each observed site: site -> ``(*sample_shape, *batch_shape)``.

    NumPyro's :func:`~numpyro.infer.log_likelihood` substitutes the draws into the model and
    evaluates each observed site's distribution at its observations (event axes summed, one
    entry per observation); only the sites fed by the data set's arguments are kept.
    """
    values = log_likelihood(
        model, dict(posterior), batch_ndims=batch_ndims, parallel=True, **arguments
    )
    return {site: np.asarray(value) for site, value in values.items() if site in observed}


def _constant_data(arguments: Mapping[str, Any], observed: Mapping[str, str]) -> dict:
    """The model's array arguments other than the observations (covariates, design)."""
    observation_args = set(observed.values())
    return {
        name: np.asarray(value)
        for name, value in arguments.items()
        if name not in observation_args and isinstance(value, (jax.Array, np.ndarray))
    }


def _constant_dims(constant: dict, observed_data: dict, dims: dict) -> dict[str, list[str]]:
    """Name each constant array's axes: the leading one after the observations' plate.

    A plate is read off the observed sites' ``dims`` (a name that is not ArviZ's default
    ``{site}_dim_{k}``) with its length; an array whose leading axis has that length gets the
    plate's name (when exactly one plate has that length), its other axes ``{name}_dim_{k}``.
    """
    plates: dict[str, int] = {}
    for site, value in observed_data.items():
        for axis, (name, size) in enumerate(zip(dims.get(site, ()), np.shape(value))):
            if name != f"{site}_dim_{axis}":
                plates.setdefault(name, size)
    out = {}
    for name, value in constant.items():
        if name in dims:  # an argument named like a site: the site's names apply to both
            continue
        shape = np.shape(value)
        names = [f"{name}_dim_{axis}" for axis in range(len(shape))]
        matches = [plate for plate, size in plates.items() if shape and size == shape[0]]
        if len(matches) == 1:
            names[0] = matches[0]
        out[name] = names
    return out


# ---------------------------------------------------------------------------------------------
# Guide
# ---------------------------------------------------------------------------------------------


def _resample(key, weights, num_draws):
    """Indices ``(B, S)`` of draws resampled by the smoothed weights, in random order."""
    index_key, order_key = jax.random.split(key)
    index = importance_resample(index_key, weights.psis.log_weights, num_draws)
    # Systematic resampling returns sorted indices (repeats side by side); shuffle them so that
    # the draw axis carries no order, as for independent draws.
    return index[:, jax.random.permutation(order_key, num_draws)]


def _warn_large_khat(khat: np.ndarray, num_draws: int) -> None:
    threshold = khat_threshold(num_draws)
    bad = np.flatnonzero(~(khat <= threshold))
    if bad.size:
        listed = ", ".join(f"{int(b)} (k-hat {khat[b]:.2f})" for b in bad[:10])
        warnings.warn(
            f"guide_inference_data: the importance weights of data set(s) {listed} have k-hat "
            f"above {threshold:.2f} (the threshold at num_draws={num_draws}): the guide is too "
            "far from the posterior for resampling to correct it, so the posterior group and "
            "az.loo / az.compare on it are unreliable. Train the guide further, refine it, or "
            "use a NUTS reference (reference_inference_data).",
            RuntimeWarning,
            stacklevel=3,
        )


def guide_inference_data(
    key: jax.Array,
    guide,
    params,
    *args,
    num_draws: int = 1000,
    num_prior: int = 500,
    resample: bool = True,
    data_mask=None,
    **kwargs,
):
    """An ArviZ object of the guide's posterior for one data set, or a list for a batch.

    Groups: ``posterior``, ``posterior_predictive``, ``log_likelihood``, ``sample_stats``,
    ``observed_data``, ``constant_data`` (the model's non-observed array arguments, e.g. the
    covariates) and, with ``num_prior > 0``, ``prior`` and ``prior_predictive`` (the model run
    forward on the data set's inputs). Dimensions are named after the model's plates.

    **What the posterior group holds.** The guide's draws ``theta_s ~ q(theta | D)`` are a
    proposal, not the posterior; each carries an importance weight
    ``w_s = p(theta_s, D) / q(theta_s | D)``. With ``resample=True`` (the default) the object
    holds ``num_draws`` draws resampled by their Pareto-smoothed weights (systematic
    resampling, then shuffled): approximately draws from the exact posterior ``p(theta | D)``
    whenever the weights' k-hat is small (Vehtari et al. 2024; Yao et al. 2018). The posterior
    predictive and the log-likelihood are computed at those draws, so ``az.loo``, ``az.waic``,
    ``az.compare`` and ``az.plot_ppc``, which all take the draws as equally weighted posterior
    draws, evaluate the *model*, and not the guide's error as well: PSIS-LOO (Vehtari, Gelman
    and Gabry 2017) on raw draws of a poor guide would make a good model look bad. Resampling
    repeats draws, so fewer than ``num_draws`` values are distinct (about the importance ESS when
    that is small); the pointwise k-hats of ``az.loo`` rise accordingly, which is the honest
    signal. When the importance k-hat exceeds :func:`~amortized_ppl.diagnostics.khat_threshold`
    no resampling can repair the guide, and a ``RuntimeWarning`` names the data sets.

    With ``resample=False`` the raw guide draws are kept and ``sample_stats.log_weight`` are the
    weights to apply; ArviZ's LOO then takes them as exact posterior draws, which is right only
    for an exact guide.

    ``sample_stats.log_weight`` is the raw importance log weight ``log p(theta, D) -
    log q(theta | D)`` (unconstrained space, Jacobian included) of each row's guide draw; after
    resampling it is a diagnostic of where the rows came from, not a weight to apply again. The
    ``posterior`` group's attributes record ``importance_pareto_k`` and ``importance_ess`` (of
    the ``num_draws`` guide draws; k-hat is ``-inf`` for constant weights, an exact guide, as in
    :func:`~amortized_ppl.diagnostics.evidence.log_evidence`) and ``importance_resampled``
    (1 or 0).

    Args:
        key: PRNG key.
        guide, params: a trained amortized guide and its parameters.
        *args, **kwargs: the model's arguments for one data set, or a batch (leading axis).
        num_draws: guide draws per data set, and rows of the posterior group.
        num_prior: prior draws (0 leaves out the prior groups).
        resample: resample the draws by their smoothed importance weights (see above).
        data_mask: mask of real observations for padded batches; padded rows are dropped from
            every group, the log-likelihood included.

    Returns:
        ArviZ ``InferenceData`` (0.x) or ``DataTree`` (1.x); a list of them for a batch.

    Warns:
        RuntimeWarning: with ``resample=True``, for data sets whose importance k-hat exceeds
            ``khat_threshold(num_draws)``.

    References:
        Vehtari, A., Gelman, A. and Gabry, J. (2017). Practical Bayesian model evaluation using
        leave-one-out cross-validation and WAIC. *Statistics and Computing*, 27(5):1413-1432.
        Vehtari, A., Simpson, D., Gelman, A., Yao, Y. and Gabry, J. (2024). Pareto smoothed
        importance sampling. *JMLR*, 25(72):1-58.

    Examples:
        >>> idata = guide_inference_data(key, guide, params, x, y=y)  # doctest: +SKIP
        >>> az.loo(idata)  # doctest: +SKIP
        >>> az.compare({"known noise": idata, "free noise": other})  # doctest: +SKIP
    """
    weight_key, resample_key, predictive_key = jax.random.split(key, 3)
    weights = importance_weights(
        weight_key, guide, params, *args, num_draws=num_draws, data_mask=data_mask, **kwargs
    )
    draws, log_weights = weights.draws, weights.log_weights  # (B, S, D), (B, S)
    # PSIS's k-hat, but -inf for constant weights (an exact guide), where PSIS says +inf.
    khat = np.asarray(evidence_from_log_weights(log_weights, weights.psis).pareto_k)
    ess = np.asarray(weights.ess)
    if resample:
        _warn_large_khat(khat, num_draws)
        index = _resample(resample_key, weights, num_draws)
        draws = jnp.take_along_axis(draws, index[..., None], axis=1)
        log_weights = jnp.take_along_axis(log_weights, index, axis=1)
    problem = guide.problem
    latents = problem.sites.constrain(draws)  # site -> (B, S, ...)
    observed = problem.spec.observed  # site -> argument
    latent_names = set(problem.sites.names)
    objects = []
    for b in range(draws.shape[0]):
        data = select_dataset(weights.arguments, weights.mask, b, problem.data_arguments)
        posterior = {name: value[b] for name, value in latents.items()}
        groups = _predictive_groups(
            jax.random.fold_in(predictive_key, b),
            problem.model,
            latent_names,
            observed,
            problem.without_observations(data),
            posterior,
            num_prior,
        )
        observed_data = {site: np.asarray(data[arg]) for site, arg in observed.items()}
        constant_data = _constant_data(data, observed)
        dims = model_dims(problem.model, **data)
        idata = to_inference_data(
            posterior,
            sample_stats={"log_weight": log_weights[b]},
            log_likelihood=_pointwise_log_likelihood(problem.model, posterior, data, observed, 1),
            observed_data=observed_data,
            constant_data=constant_data or None,
            dims={**_constant_dims(constant_data, observed_data, dims), **dims},
            **groups,
        )
        idata["posterior"].attrs.update(
            importance_pareto_k=float(khat[b]),
            importance_ess=float(ess[b]),
            importance_resampled=int(bool(resample)),
        )
        objects.append(idata)
    return objects if weights.is_batch else objects[0]


# ---------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------


def _observed_arguments(trace, arguments: Mapping[str, Any], observed) -> dict[str, str]:
    """Observed site -> argument: given (checked), or each given argument named like a site."""
    observed_sites = [
        name for name, site in trace.items() if site["type"] == "sample" and site["is_observed"]
    ]
    if observed is None:
        found = {
            name: name
            for name in observed_sites
            if name in arguments and arguments[name] is not None
        }
        if not found:
            raise ValueError(
                "observed: no argument of the model names one of its observed sample sites "
                f"{observed_sites} (the NumPyro convention `y=y` feeding "
                "`numpyro.sample('y', ..., obs=y)`); pass observed={'site': 'argument'}."
            )
        return found
    if not isinstance(observed, Mapping):
        if isinstance(observed, str) or not isinstance(observed, Sequence):
            raise TypeError(
                f"observed: expected a dict site -> argument or a list of names, got {observed!r}."
            )
        observed = {name: name for name in observed}
    for site, arg in observed.items():
        if site not in observed_sites:
            raise ValueError(
                f"observed: expected an observed sample site of the model, one of "
                f"{observed_sites}, got {site!r}."
            )
        if arguments.get(arg) is None:
            raise ValueError(
                f"observed[{site!r}]: expected an argument of the model holding the "
                f"observations, one of {sorted(k for k, v in arguments.items() if v is not None)}"
                f", got {arg!r}."
            )
    return dict(observed)


def reference_inference_data(
    key: jax.Array, result, model, *args, num_prior: int = 500, observed: Any = None, **kwargs
):
    """An ArviZ object of a NUTS reference with every group of :func:`guide_inference_data`.

    Groups: ``posterior`` (chains kept), ``posterior_predictive``, ``log_likelihood``
    (pointwise, per chain, draw and observation), ``sample_stats`` (what the reference records
    per transition: ``diverging``, ``lp`` (unconstrained log density), ``acceptance_rate``,
    ``n_steps``, ``tree_depth`` and each chain's ``step_size``), ``observed_data``,
    ``constant_data`` (the model's non-observed array arguments) and, with ``num_prior > 0``,
    ``prior`` and ``prior_predictive`` (one chain). NUTS draws are posterior draws, so
    ``az.loo`` and ``az.compare`` apply as they are, with R-hat and ESS from the chains.

    Args:
        key: PRNG key.
        result: a :class:`~amortized_ppl.reference.ReferenceResult` for this data set.
        model: the model it was sampled from.
        *args, **kwargs: the model's arguments for the data set, observations included (the
            same as given to :func:`~amortized_ppl.reference.reference_posterior`).
        num_prior: prior draws (0 leaves out the prior groups).
        observed: observed site -> argument name (or a list of names shared by both); by
            default every given argument, positional or keyword, that names an observed sample
            site of the model.

    Returns:
        ArviZ ``InferenceData`` (0.x) or ``DataTree`` (1.x) with chains kept.

    Raises:
        ValueError: when no argument feeds an observed site (pass ``observed``), or
            ``observed`` names a site that is not observed or an argument that is not given.

    References:
        Vehtari, A., Gelman, A. and Gabry, J. (2017). Practical Bayesian model evaluation using
        leave-one-out cross-validation and WAIC. *Statistics and Computing*, 27(5):1413-1432.
    """
    arguments = bind_arguments(model_signature(model), args, kwargs)
    trace = handlers.trace(handlers.seed(model, rng_seed=0)).get_trace(**arguments)
    observed = _observed_arguments(trace, arguments, observed)
    dims = model_dims(model, **arguments)
    forward = dict(arguments, **{arg: None for arg in observed.values()})
    num_chains, num_samples = next(iter(result.samples.values())).shape[:2]
    flat = {k: np.reshape(v, (-1,) + v.shape[2:]) for k, v in result.samples.items()}
    latent_names = set(flat) - set(observed)
    post_key, prior_key = jax.random.split(key)
    predictive = Predictive(model, posterior_samples=flat, return_sites=list(observed))
    chains = lambda v: np.reshape(v, (num_chains, num_samples) + v.shape[1:])  # noqa: E731
    groups = {
        "posterior_predictive": {
            k: chains(np.asarray(v)) for k, v in predictive(post_key, **forward).items()
        }
    }
    if num_prior:
        draws = Predictive(model, num_samples=int(num_prior))(prior_key, **forward)
        groups["prior"] = {k: np.asarray(v)[None] for k, v in draws.items() if k in latent_names}
        groups["prior_predictive"] = {
            k: np.asarray(v)[None] for k, v in draws.items() if k in observed
        }
    info = result.info
    stats = {
        "diverging": np.asarray(info.is_divergent),
        "lp": np.asarray(info.logdensity),
        "acceptance_rate": np.asarray(info.acceptance_rate),
        "n_steps": np.asarray(info.num_integration_steps),
        "tree_depth": np.asarray(info.tree_depth),
        "step_size": np.broadcast_to(
            np.asarray(info.step_size)[:, None], (num_chains, num_samples)
        ),
    }
    observed_data = {site: np.asarray(arguments[arg]) for site, arg in observed.items()}
    constant_data = _constant_data(arguments, observed)
    return to_inference_data(
        {k: v for k, v in result.samples.items() if k in latent_names},
        layout="chains",
        sample_stats=stats,
        log_likelihood=_pointwise_log_likelihood(model, result.samples, arguments, observed, 2),
        observed_data=observed_data,
        constant_data=constant_data or None,
        dims={**_constant_dims(constant_data, observed_data, dims), **dims},
        **groups,
    )
