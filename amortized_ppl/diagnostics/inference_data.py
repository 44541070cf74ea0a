"""Complete ArviZ objects for a data set: posterior, predictive checks, prior, observed data, stats.

:func:`~amortized_ppl.diagnostics.arviz.to_inference_data` converts draws the caller already has;
the functions here produce them. For an amortized guide they draw the posterior with importance
weights (``sample_stats.log_weight``, so PSIS-based checks can run on the object), run the model's
posterior and prior predictive with :class:`numpyro.infer.Predictive`, and name dimensions after
the model's plates. For a NUTS reference they add the same predictive groups to its draws, so the
two objects compare side by side in ArviZ (``az.plot_ppc``, ``az.summary``, ``az.plot_forest``).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from numpyro.infer import Predictive

from amortized_ppl.data import select_dataset
from amortized_ppl.diagnostics.arviz import model_dims, to_inference_data
from amortized_ppl.diagnostics.importance import importance_weights

__all__ = ["guide_inference_data", "reference_inference_data"]


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


def guide_inference_data(
    key: jax.Array,
    guide,
    params,
    *args,
    num_draws: int = 1000,
    num_prior: int = 500,
    data_mask=None,
    **kwargs,
):
    """An ArviZ object of the guide's posterior for one data set, or a list for a batch.

    Groups: ``posterior`` (guide draws), ``sample_stats`` (``log_weight``: the importance log
    weight ``log p(theta, D) - log q(theta | D)`` of each draw), ``posterior_predictive`` and,
    with ``num_prior > 0``, ``prior`` and ``prior_predictive`` (the model run forward on the
    data set's covariates), and ``observed_data``. Dimensions are named after the model's
    plates (:func:`~amortized_ppl.diagnostics.arviz.model_dims`).

    Args:
        key: PRNG key.
        guide, params: a trained amortized guide and its parameters.
        *args, **kwargs: the model's arguments for one data set, or a batch (leading axis).
        num_draws: posterior draws.
        num_prior: prior draws (0 leaves out the prior groups).
        data_mask: mask of real observations for padded batches; padded rows are dropped.

    Returns:
        ArviZ ``InferenceData`` (0.x) or ``DataTree`` (1.x); a list of them for a batch.
    """
    weight_key, predictive_key = jax.random.split(key)
    weights = importance_weights(
        weight_key, guide, params, *args, num_draws=num_draws, data_mask=data_mask, **kwargs
    )
    problem = guide.problem
    latents = problem.sites.constrain(weights.draws)  # site -> (B, S, ...)
    observed = problem.spec.observed  # site -> argument
    latent_names = set(problem.sites.names)
    objects = []
    for b in range(weights.draws.shape[0]):
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
        objects.append(
            to_inference_data(
                posterior,
                sample_stats={"log_weight": weights.log_weights[b]},
                observed_data={site: data[arg] for site, arg in observed.items()},
                dims=model_dims(problem.model, **data),
                **groups,
            )
        )
    return objects if weights.is_batch else objects[0]


def reference_inference_data(
    key: jax.Array, result, model, *args, num_prior: int = 500, observed: Any = None, **kwargs
):
    """An ArviZ object of a NUTS reference with predictive, prior and observed-data groups.

    Args:
        key: PRNG key.
        result: a :class:`~amortized_ppl.reference.ReferenceResult` for this data set.
        model: the model it was sampled from.
        *args, **kwargs: the model's arguments for the data set, observations included.
        num_prior: prior draws (0 leaves out the prior groups).
        observed: observed site -> argument name; by default every keyword argument that
            names a sample site of the model.

    Returns:
        ArviZ ``InferenceData`` (0.x) or ``DataTree`` (1.x) with chains kept.
    """
    dims = model_dims(model, *args, **kwargs)
    if observed is None:
        observed = {name: name for name in kwargs if name in dims}
    forward = dict(kwargs, **{arg: None for arg in observed.values()})
    num_chains, num_samples = next(iter(result.samples.values())).shape[:2]
    flat = {k: np.reshape(v, (-1,) + v.shape[2:]) for k, v in result.samples.items()}
    latent_names = set(flat) - set(observed)
    post_key, prior_key = jax.random.split(key)
    predictive = Predictive(model, posterior_samples=flat, return_sites=list(observed))
    chains = lambda v: np.reshape(v, (num_chains, num_samples) + v.shape[1:])  # noqa: E731
    groups = {
        "posterior_predictive": {
            k: chains(np.asarray(v)) for k, v in predictive(post_key, *args, **forward).items()
        }
    }
    if num_prior:
        draws = Predictive(model, num_samples=int(num_prior))(prior_key, *args, **forward)
        groups["prior"] = {k: np.asarray(v)[None] for k, v in draws.items() if k in latent_names}
        groups["prior_predictive"] = {
            k: np.asarray(v)[None] for k, v in draws.items() if k in observed
        }
    stats = {
        "diverging": np.asarray(result.info.is_divergent),
        "lp": np.asarray(result.info.logdensity),
        "acceptance_rate": np.asarray(result.info.acceptance_rate),
    }
    return to_inference_data(
        {k: v for k, v in result.samples.items() if k in latent_names},
        layout="chains",
        sample_stats=stats,
        observed_data={site: kwargs[arg] for site, arg in observed.items()},
        dims=dims,
        **groups,
    )
