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

from amortized_ppl._checks import check_key
from amortized_ppl.density import log_joint
from amortized_ppl.diagnostics.psis import PSISResult, importance_resample, psis_diagnose

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


def log_importance_weights(guide, arguments, mask, draws) -> jax.Array:
    """``log p(theta, D) - log q(theta | D)`` without the ``log q`` term: ``log p`` per draw.

    Args:
        guide: a set-up amortized guide.
        arguments: bound arguments with a leading data-set axis ``B`` (see ``guide.prepare``).
        mask: ``(B, N)`` bool.
        draws: flat unconstrained draws ``(B, S, D)``.

    Returns:
        ``log p(constrain(u), D) + log|J(u)|`` of shape ``(B, S)``.
    """
    sites = guide.sites

    def one_dataset(args_and_draws):
        one_args, one_mask, one_draws = args_and_draws

        def one_draw(u):
            log_p = log_joint(guide.model, sites, one_args, sites.constrain(u), one_mask)
            return log_p + sites.log_abs_det_jacobian(u)

        return jax.vmap(one_draw)(one_draws)

    # Data sets one after another (draws vectorized): memory stays at one data set's S x N.
    arrays, static = eqx.partition(dict(arguments), eqx.is_array)
    return jax.lax.map(
        lambda xs: one_dataset((eqx.combine(xs[0], static), xs[1], xs[2])),
        (arrays, jnp.asarray(mask), draws),
    )


@eqx.filter_jit
def _weights(key, guide, params, arguments, mask, num_draws):
    posterior = guide.posterior_from_data(params, guide.tokens(arguments), mask, arguments)
    draws = posterior.sample(key, (num_draws,))  # (S, B, D)
    log_q = posterior.log_prob(draws)  # (S, B)
    draws = jnp.swapaxes(draws, 0, 1)
    log_p = log_importance_weights(guide, arguments, mask, draws)
    log_weights = log_p - log_q.T
    # A non-finite q density (an overflowing guide) counts as a zero weight, not a NaN verdict.
    log_weights = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)
    cov = posterior.covariance_matrix if hasattr(posterior, "covariance_matrix") else None
    if cov is None:
        cov = jax.vmap(jnp.diag)(posterior.variance)
    return draws, log_weights, posterior.mean, cov


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
    if int(num_draws) < 2:
        raise ValueError(f"num_draws: expected an int >= 2, got {num_draws!r}.")
    arguments, mask, is_batch = guide.prepare(*args, data_mask=data_mask, **kwargs)
    draws, log_weights, loc, cov = _weights(key, guide, params, arguments, mask, int(num_draws))
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
