"""The evidence ``log p(D)`` of a model by importance sampling, with an amortized guide as proposal.

For draws ``theta_s ~ q(theta | D)``, ``s = 1..S``, the importance weights
``w_s = p(theta_s, D) / q(theta_s | D)`` have expectation ``p(D)``, so

    ``log Z_hat = log((1 / S) sum_s w_s) = logsumexp_s(log w_s) - log S``

estimates the log evidence (marginal likelihood) consistently, with a downward bias of about
``SE^2 / 2`` (Jensen's inequality). With an exact guide every weight equals ``p(D)`` and the
estimate is exact from one draw. Its reliability is read off the weights' upper tail, as for
any importance sampler (Vehtari et al. 2024, section 3), through the Pareto k-hat:

- ``k < 0.5``: the weights have finite variance; the standard error below is accurate.
- ``0.5 <= k < 0.7`` (more exactly :func:`~amortized_ppl.diagnostics.psis.khat_threshold` of
  ``S``): the estimate converges, more slowly; the standard error understates the error.
- above: unreliable. The standard error means nothing, and the estimate is typically too low
  (the draws miss posterior mass that ``q`` does not cover).
- constant weights (an exact guide, up to float rounding): the estimate is exact, and k-hat is
  reported as ``-inf`` (a bounded tail), where PSIS alone says ``+inf`` for want of a tail.

The standard error is the delta method on the raw weights: ``sd(w) / (sqrt(S) mean(w))``, the
first-order error of ``log Z_hat``. With the unbiased variance and the relative deviations
``d_s = w_s / mean(w) - 1 = expm1(log w_s - log Z_hat)`` (computed in log space, so nothing
overflows, and without cancellation for nearly equal weights) it is
``SE = sqrt(sum_s d_s^2 / (S (S - 1)))``. For ``k < 0.5`` it matches the spread of
estimates over independent batches of draws (``tests/diagnostics/test_evidence.py``: a Gaussian
proposal 1.3 times too wide and shifted, S = 1000, k-hat about -0.4: mean SE / SD of 400
estimates = 1.08; shifted and 0.9 times too narrow, k-hat about 0.46: 0.95).

Two layers: :func:`evidence_from_log_weights` (pure statistics of given log weights) and
:func:`log_evidence` (draws from a guide, weighs them by the model and applies the former).

References:
    Vehtari, A., Simpson, D., Gelman, A., Yao, Y. and Gabry, J. (2024). Pareto smoothed importance
    sampling. *Journal of Machine Learning Research*, 25(72):1-58.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from amortized_ppl._checks import check_int
from amortized_ppl.diagnostics.importance import importance_weights
from amortized_ppl.diagnostics.psis import PSISResult, psis_diagnose

__all__ = ["CONSTANT_SPAN", "EvidenceResult", "evidence_from_log_weights", "log_evidence"]


class EvidenceResult(NamedTuple):
    """An importance-sampling estimate of the log evidence with its error diagnostics.

    Shapes are ``()`` for one data set, ``(B,)`` for a batch (the leading axes of the log
    weights in :func:`evidence_from_log_weights`).

    Attributes:
        log_evidence: ``log Z_hat = logsumexp(log w) - log S``, the estimate of ``log p(D)``.
        standard_error: its delta-method standard error (module docstring); trust it only when
            ``pareto_k < 0.5``.
        pareto_k: the Pareto k-hat of the weights' tail (PSIS); the estimate is unreliable above
            0.7 (or :func:`~amortized_ppl.diagnostics.psis.khat_threshold` for ``S < 2155``).
            ``-inf`` where the weights are constant up to float rounding (their logs span less
            than :data:`CONSTANT_SPAN` plus 64 ulps): an exact proposal, the estimate exact
            (PSIS alone would say ``+inf`` there, having no tail to fit).
        ess: effective sample size ``1 / sum w~^2`` of the Pareto-smoothed normalized weights
            (as :attr:`ImportanceResult.ess`; the standard error uses the raw weights).
        num_samples: ``S``, the number of draws per data set.
    """

    log_evidence: jax.Array
    standard_error: jax.Array
    pareto_k: jax.Array
    ess: jax.Array
    num_samples: int


CONSTANT_SPAN = 1e-3
"""Log weights spanning less than this (plus 64 float ulps of their size) count as constant."""


@jax.jit
def _estimate(log_weights: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(log Z_hat, SE, is_constant)`` over the last axis of ``(..., S)`` log weights."""
    num = log_weights.shape[-1]
    log_mean = jax.nn.logsumexp(log_weights, axis=-1) - math.log(num)
    # Relative deviations w / mean(w) - 1 by expm1: no cancellation when the weights are nearly
    # equal (S sum(w~^2) - 1 would leave float32 rounding of about 1e-4 in the error).
    deviations = jnp.expm1(log_weights - log_mean[..., None])
    relative_var = jnp.sum(deviations**2, axis=-1) / (num - 1)  # var(w) / mean(w)^2, ddof 1
    top, bottom = jnp.max(log_weights, axis=-1), jnp.min(log_weights, axis=-1)
    ulp = jnp.finfo(log_weights.dtype).eps * jnp.maximum(jnp.abs(top), jnp.abs(bottom))
    is_constant = (top - bottom) <= CONSTANT_SPAN + 64.0 * ulp
    return log_mean, jnp.sqrt(relative_var / num), is_constant


def evidence_from_log_weights(
    log_weights: jax.Array, psis_result: PSISResult | None = None
) -> EvidenceResult:
    """Estimate ``log Z = log E_q[w]`` from log importance weights, with its error diagnostics.

    Args:
        log_weights: ``(..., S)`` unnormalized log weights ``log p(theta_s, D) - log q(theta_s)``
            (draws on the last axis, any leading axes), with ``S >= 2``.
        psis_result: the :func:`~amortized_ppl.diagnostics.psis.psis` result of these weights,
            if already computed (e.g. :attr:`ImportanceResult.psis`); else it is computed here.

    Returns:
        An :class:`EvidenceResult` with fields of shape ``(...)``.

    Raises:
        ValueError: with fewer than 2 draws, or for rows with NaN or ``+inf`` entries or no
            positive weight (naming them, see :func:`~amortized_ppl.diagnostics.psis.psis_diagnose`).

    Warns:
        RuntimeWarning: with fewer than 100 draws (k-hat is then unreliable).

    Examples:
        >>> lw = jnp.full((1000,), -3.0)  # an exact proposal: every weight is Z
        >>> result = evidence_from_log_weights(lw)
        >>> float(result.log_evidence), float(result.standard_error)
        (-3.0, 0.0)
    """
    log_weights = jnp.asarray(log_weights)
    if log_weights.ndim < 1 or log_weights.shape[-1] < 2:
        raise ValueError(
            f"log_weights: expected shape (..., S) with S >= 2 draws, got {log_weights.shape}."
        )
    if psis_result is None:
        psis_result = psis_diagnose(log_weights)  # checks eagerly (raises, warns)
    elif psis_result.khat.shape != log_weights.shape[:-1]:
        raise ValueError(
            f"psis_result: expected k-hat of shape {log_weights.shape[:-1]} (the leading axes of "
            f"log_weights), got {psis_result.khat.shape}."
        )
    if not jnp.issubdtype(log_weights.dtype, jnp.floating):
        log_weights = log_weights.astype(jnp.result_type(float))
    estimate, standard_error, is_constant = _estimate(log_weights)
    return EvidenceResult(
        log_evidence=estimate,
        standard_error=standard_error,
        # PSIS has no tail to fit in constant weights and says +inf (as loo and ArviZ); here that
        # would flag the best case, an exact proposal, so it is a bounded tail: -inf.
        pareto_k=jnp.where(is_constant, -jnp.inf, psis_result.khat),
        ess=psis_result.ess,
        num_samples=int(log_weights.shape[-1]),
    )


def log_evidence(
    key: jax.Array, guide, params, *args, num_samples: int = 1000, data_mask=None, **kwargs
) -> EvidenceResult:
    """Estimate the log evidence ``log p(D)`` of the guide's model by importance sampling.

    The guide ``q(theta | D)`` is the proposal: ``num_samples`` draws are weighed by the model's
    joint density (:func:`~amortized_ppl.diagnostics.importance.importance_weights`, in
    unconstrained space with the Jacobian, which leaves ``p(D)`` unchanged), and
    :func:`evidence_from_log_weights` turns the weights into the estimate, its standard error
    and the Pareto k-hat. A good guide gives a small k-hat and a small standard error; a poor
    one gives a large k-hat, which flags the estimate as unreliable, whatever its standard
    error says. Padded observations (``data_mask`` False) count in no likelihood.

    Compare models by their log evidence (log Bayes factors) only where every k-hat is below
    0.7 and the difference is large against the standard errors.

    Args:
        key: PRNG key.
        guide: a trained amortized guide.
        params: its parameters.
        *args, **kwargs: the model's arguments for one data set or a batch (leading axis),
            observations included.
        num_samples: ``S``, draws per data set (k-hat needs a few hundred; 1000 is usual).
        data_mask: optional mask of real observations, as in ``guide.sample_posterior``.

    Returns:
        An :class:`EvidenceResult`: scalars for one data set, ``(B,)`` arrays for a batch.

    Raises:
        ValueError: for ``num_samples < 2``, weights that are NaN / +Inf or all zero in a data
            set (naming it), and bad data as in the guide.

    Warns:
        RuntimeWarning: with fewer than 100 draws (k-hat is then unreliable).

    References:
        Vehtari, A., Simpson, D., Gelman, A., Yao, Y. and Gabry, J. (2024). Pareto smoothed
        importance sampling. *JMLR*, 25(72):1-58.

    Examples:
        >>> result = log_evidence(key, guide, params, x, y=y, num_samples=2000)  # doctest: +SKIP
        >>> result.pareto_k < 0.7, result.log_evidence, result.standard_error  # doctest: +SKIP
    """
    num_samples = check_int(num_samples, "num_samples", 2)
    weights = importance_weights(
        key, guide, params, *args, num_draws=num_samples, data_mask=data_mask, **kwargs
    )
    result = evidence_from_log_weights(weights.log_weights, weights.psis)
    if weights.is_batch:
        return result
    return result._replace(**{f: getattr(result, f)[0] for f in result._fields[:4]})
