"""Importance weights of guide draws against the model's joint density, per data set.

A trained guide gives ``q(theta | D)``; the NumPyro model gives ``p(theta, D)``. The weights
``w = p(theta, D) / q(theta | D)`` for draws ``theta ~ q`` tell, for each data set and without
MCMC, whether ``q`` can be trusted: the Pareto k-hat of their tail (PSIS, Vehtari et al., 2024)
below 0.7 means importance sampling from ``q`` is reliable, and resampling by the smoothed
weights corrects ``q`` toward the exact posterior (Yao et al., 2018). Both densities are taken
over the unconstrained latents: ``log p(constrain(u), D) + log|J(u)| - log q(u | D)``.

References:
    Vehtari, A., Simpson, D., Gelman, A., Yao, Y. and Gabry, J. (2024). Pareto smoothed
    importance sampling. *JMLR* 25.
    Yao, Y., Vehtari, A., Simpson, D. and Gelman, A. (2018). Yes, but did it work?: Evaluating
    variational inference. *ICML*.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl._checks import check_int, check_key
from amortized_ppl.diagnostics.psis import PSISResult, importance_resample, psis_diagnose
from amortized_ppl.families.base import gaussian_moments

__all__ = ["ImportanceResult", "importance_weights", "log_importance_weights", "resample_draws"]


class ImportanceResult(NamedTuple):
    """Guide draws with their importance weights and PSIS diagnostics, per data set.

    Attributes:
        draws: flat unconstrained guide draws, ``(B, S, D)``.
        log_weights: raw ``log p(theta, D) - log q(theta | D)``, ``(B, S)``.
        psis: :class:`PSISResult`: smoothed normalized log weights ``(B, S)``, ``khat (B,)`` and
            ``ess (B,)``.
        loc, cov: the guide's mean ``(B, D)`` and covariance ``(B, D, D)`` (unconstrained).
        arguments, mask: the validated data sets (leading axis ``B``), for a follow-up run.
        is_batch: whether a batch of data sets was given (else ``B == 1``).
    """

    draws: jax.Array
    log_weights: jax.Array
    psis: PSISResult
    loc: jax.Array
    cov: jax.Array
    arguments: dict[str, Any]
    mask: np.ndarray
    is_batch: bool

    @property
    def khat(self) -> jax.Array:
        return self.psis.khat

    @property
    def ess(self) -> jax.Array:
        return self.psis.ess


def log_importance_weights(problem, arguments, mask, draws) -> jax.Array:
    """``log p(theta, D)`` per draw, in unconstrained space (the weights' numerator).

    Args:
        problem: the :class:`~amortized_ppl.problem.Problem`.
        arguments: bound arguments with a leading data-set axis ``B`` (see ``guide.prepare``).
        mask: ``(B, N)`` bool.
        draws: flat unconstrained draws ``(B, S, D)``.

    Returns:
        ``log p(constrain(u), D) + log|J(u)|`` of shape ``(B, S)``.
    """

    def one_dataset(one_args, one_mask, one_draws):
        return jax.vmap(lambda u: problem.log_density(u, one_args, one_mask))(one_draws)

    # Data sets one after another (draws vectorized): memory stays at one data set's S x N.
    arrays, static = eqx.partition(dict(arguments), eqx.is_array)
    return jax.lax.map(
        lambda xs: one_dataset(eqx.combine(xs[0], static), xs[1], xs[2]),
        (arrays, jnp.asarray(mask), draws),
    )


def _moments(posterior, draws):
    """The posterior's mean and covariance: exact for Gaussians, else the draws'."""
    try:
        loc, tril = gaussian_moments(posterior)
        return loc, tril @ tril.T
    except TypeError:
        return jnp.mean(draws, axis=0), jnp.cov(draws, rowvar=False)


@eqx.filter_jit
def _weights(key, problem, engine, arguments, mask, num_draws):
    def one(k, a, m):
        posterior_key, draw_key = jax.random.split(k)
        posterior = engine.posterior(problem, a, m, posterior_key)
        draws = posterior.sample(draw_key, (num_draws,))  # (S, D)
        loc, cov = _moments(posterior, draws)
        return draws, posterior.log_prob(draws), loc, cov

    keys = jax.random.split(key, mask.shape[0])
    draws, log_q, loc, cov = eqx.filter_vmap(one, in_axes=(0, eqx.if_array(0), 0))(
        keys, arguments, mask)
    log_p = log_importance_weights(problem, arguments, mask, draws)
    log_weights = log_p - log_q
    # A non-finite q density (an overflowing guide) counts as a zero weight, not a NaN verdict.
    log_weights = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)
    return draws, log_weights, loc, cov


def importance_weights(
    key: jax.Array, guide, params, *args, num_draws: int = 1000, data_mask=None, **kwargs
) -> ImportanceResult:
    """Draw from the guide and weigh the draws by the model's joint density, per data set.

    Args:
        key: PRNG key.
        guide: a trained amortized guide.
        params: its parameters.
        *args, **kwargs: the model's arguments for one data set or a batch (leading axis).
        num_draws: ``S``, draws per data set (k-hat needs a few hundred; 1000 is usual).
        data_mask: optional mask of real observations, as in ``guide.sample_posterior``.

    Returns:
        An :class:`ImportanceResult` (with a data-set axis of length 1 for one data set).

    Raises:
        ValueError: when every weight of a data set is zero or a weight is NaN / +Inf (the
            model's density overflowed), naming the data sets; bad data as in the guide.

    Warns:
        RuntimeWarning: when ``num_draws`` is too small for a reliable k-hat.
    """
    check_key(key)
    num_draws = check_int(num_draws, "num_draws", 2)
    arguments, mask, is_batch = guide.prepare(*args, data_mask=data_mask, **kwargs)
    draws, log_weights, loc, cov = _weights(key, guide.problem, guide.engine(params),
                                            arguments, jnp.asarray(mask), num_draws)
    return ImportanceResult(
        draws=draws,
        log_weights=log_weights,
        psis=psis_diagnose(log_weights),  # checks eagerly, then the jitted smoothing
        loc=loc,
        cov=cov,
        arguments=arguments,
        mask=mask,
        is_batch=is_batch,
    )


def resample_draws(key: jax.Array, result: ImportanceResult, num_samples: int | None = None):
    """Importance-resampled draws ``(B, num_samples, D)`` by the Pareto-smoothed weights.

    A correction of the guide toward the exact posterior, valid when k-hat <= 0.7.
    """
    num_samples = result.draws.shape[1] if num_samples is None else int(num_samples)
    index = importance_resample(key, result.psis.log_weights, num_samples)
    return jnp.take_along_axis(result.draws, index[..., None], axis=1)
