"""Pareto-smoothed importance sampling (PSIS), its k-hat diagnostic, and importance resampling.

Log importance weights have shape ``(..., S)``: ``S`` draws (the last axis) for each of any number
of leading batch positions, typically data sets. :func:`psis` is pure :mod:`jax.numpy`, so it
runs under ``jit`` and ``vmap``; :func:`check_log_weights` and :func:`psis_diagnose` are the eager
entry points that can raise.

The algorithm follows Vehtari et al. (2024) and matches ``arviz.psislw(log_weights, reff=1.0)``:
the ``M = ceil(min(0.2 S, 3 sqrt(S)))`` largest weights above the cutoff (the ``(M + 1)``-th
largest) are fitted with a generalized Pareto distribution (Zhang & Stephens 2009, with the
weakly informative prior on ``k`` of loo/ArviZ), replaced by the fitted distribution's quantiles
at ``(i - 1/2) / n`` (``n <= M`` tail draws) and truncated at the largest raw weight. The fit is done in log space
(ratios of tail weights, never the weights themselves), so float32 gives the same answer as
ArviZ's float64 even when the tail spans more than float32's exponent range.

References:
    Vehtari, A., Simpson, D., Gelman, A., Yao, Y. and Gabry, J. (2024). Pareto smoothed importance
    sampling. *Journal of Machine Learning Research*, 25(72):1-58.
    Zhang, J. and Stephens, M. A. (2009). A new and efficient estimation method for the
    generalized Pareto distribution. *Technometrics*, 51(3):316-325.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl._checks import check_int

__all__ = [
    "RESAMPLING_METHODS",
    "PSISResult",
    "check_log_weights",
    "importance_resample",
    "khat_threshold",
    "psis",
    "psis_diagnose",
]

RESAMPLING_METHODS = ("multinomial", "systematic")
"""Methods accepted by :func:`importance_resample`."""

MIN_RELIABLE_DRAWS = 100
"""Below this many draws :func:`check_log_weights` warns that k-hat is unreliable."""

# Constants of the reference implementations (loo, ArviZ), kept in float64 on purpose so that a
# float32 run makes the same decisions as ArviZ's float64 one.
_LOG_CUTOFF_MIN = float(np.log(np.finfo(np.float64).tiny))  # lowest cutoff, about -708.4
_NEGLIGIBLE_WEIGHT = 10 * float(np.finfo(np.float64).eps)  # grid weights dropped below this
_MIN_TAIL = 5  # with 4 or fewer tail draws there is no fit and k-hat is +inf
_PRIOR_K_STRENGTH = 10.0  # weakly informative prior: k shrunk toward 0.5 with weight 10 draws
_PRIOR_K_MEAN = 0.5
_PRIOR_B_SCALE = 3.0  # Zhang & Stephens grid scale: b around 1 / (3 * first tail quartile)
_GRID_MIN = 30  # grid size is 30 + floor(sqrt(n))


class PSISResult(NamedTuple):
    """Result of :func:`psis` for log weights of shape ``(..., S)``.

    Attributes:
        log_weights: ``(..., S)`` smoothed log weights normalized over the last axis
            (``logsumexp == 0``); ``-inf`` input entries stay ``-inf``.
        khat: ``(...)`` estimated generalized Pareto shape of the upper tail. ``+inf`` when the
            tail has fewer than 5 distinct draws above the cutoff (e.g. constant weights), when
            the fit fails, or when the row is invalid (NaN, ``+inf``, or all ``-inf``).
        ess: ``(...)`` effective sample size ``1 / sum(w**2)`` of the smoothed normalized
            weights ``w``.
    """

    log_weights: jax.Array
    khat: jax.Array
    ess: jax.Array


def khat_threshold(num_draws: int) -> float:
    """Return the sample-size dependent k-hat threshold ``min(1 - 1 / log10(S), 0.7)``.

    Above it, PSIS estimates with ``S`` draws are unreliable (Vehtari et al. 2024, section 3);
    equivalently, k-hat up to ``k`` needs ``S > 10 ** (1 / (1 - k))`` draws. The threshold is
    0.7 for ``S >= 2155`` and 0 at ``S = 10``.

    Args:
        num_draws: the number of draws ``S``, at least 2.

    Returns:
        The threshold as a Python float.
    """
    if num_draws < 2:
        raise ValueError(f"num_draws: expected an integer >= 2, got {num_draws}.")
    return min(1.0 - 1.0 / math.log10(num_draws), 0.7)


def _tail_length(num_draws: int) -> int:
    """Return the static tail length ``M = ceil(min(0.2 S, 3 sqrt(S)))`` (``reff = 1``)."""
    return int(math.ceil(min(num_draws / 5.0, 3.0 * math.sqrt(num_draws))))


def _log1mexp(u: jax.Array) -> jax.Array:
    """Return ``log(1 - exp(u))`` for ``u <= 0``, accurate at both ends (Maechler 2012)."""
    return jnp.where(u > -math.log(2.0), jnp.log(-jnp.expm1(u)), jnp.log1p(-jnp.exp(u)))


def _log_abs_expm1(r: jax.Array) -> jax.Array:
    """Return ``log|exp(r) - 1|`` for any real ``r``."""
    return jnp.maximum(r, 0.0) + _log1mexp(-jnp.abs(r))


def _mean_log1m_ba(log_r: jax.Array, log_ar: jax.Array, n: jax.Array) -> jax.Array:
    """Return ``mean_i log(1 - b a_i)`` for ``b = 1 - exp(log_r)`` and ``a_i = exp(log_ar_i)``.

    Every ``b`` of the Zhang & Stephens grid is below ``1 / max(a) = 1``, i.e. of this form, and
    ``1 - b a = (1 - a) + exp(log_r) a`` is a sum of two nonnegative terms, so its log is a
    ``logaddexp`` that cannot overflow however far apart the tail weights are.

    Args:
        log_r: ``(G,)`` grid of ``log(1 - b)``.
        log_ar: ``(M,)`` log tail weights relative to the largest (``<= 0``); ``-inf`` marks
            entries outside the tail, which contribute ``log 1 = 0``.
        n: number of tail entries (the divisor of the mean).

    Returns:
        ``(G,)`` means.
    """
    terms = jnp.logaddexp(_log1mexp(log_ar), log_r[:, None] + log_ar)
    return jnp.sum(terms, axis=-1) / n


def _gpd_fit(log_ar: jax.Array, n: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Fit a generalized Pareto distribution to exceedances by the Zhang & Stephens estimator.

    The exceedances ``a`` are known only up to scale, through ``log_ar = log(a / max(a))``, and
    the estimator is scale-equivariant, so the scale comes back as ``log(sigma / max(a))``.

    Args:
        log_ar: ``(M,)`` sorted ascending; the last ``n`` entries are the tail (the last is 0),
            the first ``M - n`` are ``-inf``.
        n: number of tail entries, ``>= 1`` for a meaningful result.

    Returns:
        ``(k, log_sigma)``: the shape with the weakly informative prior adjustment, and the log
        scale relative to ``max(a)`` (computed from the unadjusted shape, as loo and ArviZ do).
    """
    num_tail = log_ar.shape[-1]
    nf = n.astype(log_ar.dtype)
    # The first quartile of the tail, index int(n / 4 + 0.5) - 1 among the n tail entries.
    offset = num_tail - n
    quartile = jnp.floor(nf / 4.0 + 0.5).astype(n.dtype) - 1
    log_q = log_ar[jnp.clip(offset + quartile, 0, num_tail - 1)]

    # Grid b_j = 1/max(a) + c_j / (3 q), c_j = 1 - sqrt(m / (j - 1/2)) < 0, with m = 30 + floor(
    # sqrt(n)) points; the array is sized for the largest m and the rest are masked out.
    grid_size = _GRID_MIN + math.isqrt(num_tail)
    m = _GRID_MIN + jnp.floor(jnp.sqrt(nf))
    j = jnp.arange(1, grid_size + 1, dtype=log_ar.dtype)
    in_grid = j <= m
    c = jnp.where(in_grid, 1.0 - jnp.sqrt(m / (j - 0.5)), -1.0)
    log_r = jnp.log(-c) - math.log(_PRIOR_B_SCALE) - log_q  # b_j / b_max = 1 - exp(log_r)

    # Profile log likelihood of each b: n (log(-b / k(b)) - k(b) - 1), k(b) = mean log(1 - b a).
    k_grid = _mean_log1m_ba(log_r, log_ar, nf)
    log_lik = nf * (_log_abs_expm1(log_r) - jnp.log(jnp.abs(k_grid)) - k_grid - 1.0)
    w = jax.nn.softmax(jnp.where(in_grid, log_lik, -jnp.inf))
    w = jnp.where(w >= _NEGLIGIBLE_WEIGHT, w, 0.0)
    w = w / jnp.sum(w)

    # Posterior mean of b is again 1 - exp(log_r_post), with c replaced by its weighted mean.
    log_r_post = jnp.log(-jnp.sum(w * c)) - math.log(_PRIOR_B_SCALE) - log_q
    k = _mean_log1m_ba(log_r_post[None], log_ar, nf)[0]
    log_sigma = jnp.log(jnp.abs(k)) - _log_abs_expm1(log_r_post)  # sigma = -k / b
    k = (nf * k + _PRIOR_K_STRENGTH * _PRIOR_K_MEAN) / (nf + _PRIOR_K_STRENGTH)
    return k, log_sigma


def _log_gpd_quantile(probs: jax.Array, k: jax.Array) -> jax.Array:
    """Return the log quantiles of a unit-scale generalized Pareto distribution with shape ``k``."""
    log1m_p = jnp.log1p(-probs)
    is_zero = k == 0.0
    safe_k = jnp.where(is_zero, 1.0, k)
    quantile = jnp.where(is_zero, -log1m_p, jnp.expm1(-safe_k * log1m_p) / safe_k)
    return jnp.log(quantile)


def _psis_row(log_weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Smooth one row of log weights ``(S,)``; return unnormalized ``(S,)`` log weights and k."""
    num_draws = log_weights.shape[-1]
    num_tail = _tail_length(num_draws)
    x = log_weights - jnp.max(log_weights)  # the largest raw weight is now exp(0)
    if num_tail < _MIN_TAIL:  # static: the tail can never hold enough draws for a fit
        return x, jnp.asarray(jnp.inf, x.dtype)

    top, top_idx = jax.lax.top_k(x, num_tail + 1)  # descending
    cutoff = jnp.maximum(top[num_tail], _LOG_CUTOFF_MIN)
    tail, tail_idx = top[:num_tail][::-1], top_idx[:num_tail][::-1]  # ascending
    in_tail = tail > cutoff  # ties at the cutoff and -inf entries are left out, as in ArviZ
    n = jnp.sum(in_tail)

    # Exceedances a = exp(x) - exp(cutoff), in logs, relative to the largest one.
    log_a = jnp.where(in_tail, tail + _log1mexp(jnp.minimum(cutoff - tail, 0.0)), -jnp.inf)
    log_ar = log_a - log_a[-1]
    k, log_sigma = _gpd_fit(log_ar, n)

    # Replace the tail by the fitted quantiles at (i - 1/2) / n, i = 1..n, truncated at exp(0).
    rank = jnp.arange(num_tail) - (num_tail - n)
    probs = jnp.clip((rank + 0.5) / n, 0.0, 1.0).astype(x.dtype)
    log_quantile = log_a[-1] + log_sigma + _log_gpd_quantile(probs, k)
    smoothed = jnp.minimum(jnp.logaddexp(log_quantile, cutoff), 0.0)

    is_fit = (n >= _MIN_TAIL) & jnp.isfinite(k) & jnp.isfinite(log_sigma)
    x = x.at[tail_idx].set(jnp.where(is_fit & in_tail, smoothed, tail))
    return x, jnp.where(is_fit, k, jnp.inf)


def _as_log_weights(log_weights) -> jax.Array:
    """A floating array of shape ``(..., S)`` with ``S >= 1`` (checked at trace time)."""
    log_weights = jnp.asarray(log_weights)
    if log_weights.ndim < 1 or log_weights.shape[-1] < 1:
        raise ValueError(
            f"log_weights: expected shape (..., S) with S >= 1, got {log_weights.shape}."
        )
    if not jnp.issubdtype(log_weights.dtype, jnp.floating):
        log_weights = log_weights.astype(jnp.result_type(float))
    return log_weights


def psis(log_weights: jax.Array) -> PSISResult:
    """Pareto-smooth log importance weights over the last axis.

    Pure and jittable, vectorized over any leading axes. Invalid rows cannot raise under ``jit``:
    a row with a NaN or ``+inf`` entry, or with every entry ``-inf``, gets ``khat = +inf`` and NaN
    ``log_weights`` and ``ess``. Use :func:`check_log_weights` (or :func:`psis_diagnose`) for an
    error that names them. ``-inf`` entries (zero weight) are fine: they stay ``-inf`` and are
    never part of the tail fit.

    Rows whose tail has fewer than 5 draws strictly above the cutoff are not smoothed and get
    ``khat = +inf``, as in loo and ArviZ; this includes ``S <= 20`` and constant weights (a
    proposal equal to the target up to a constant), whose ``ess`` is nevertheless ``S``.

    Args:
        log_weights: ``(..., S)`` log importance weights (unnormalized), draws on the last axis.

    Returns:
        A :class:`PSISResult` with ``log_weights`` ``(..., S)``, ``khat`` and ``ess`` ``(...)``.

    References:
        Vehtari, A., Simpson, D., Gelman, A., Yao, Y. and Gabry, J. (2024). Pareto smoothed
        importance sampling. *JMLR*, 25(72):1-58.

    Examples:
        >>> lw = jax.random.normal(jax.random.key(0), (4, 1000))
        >>> result = jax.jit(psis)(lw)
        >>> result.khat.shape, result.log_weights.shape
        ((4,), (4, 1000))
    """
    log_weights = _as_log_weights(log_weights)
    batch_shape, num_draws = log_weights.shape[:-1], log_weights.shape[-1]
    rows = log_weights.reshape(-1, num_draws)

    smoothed, khat = jax.vmap(_psis_row)(rows)
    normalized = smoothed - jax.nn.logsumexp(smoothed, axis=-1, keepdims=True)
    ess = 1.0 / jnp.sum(jnp.exp(2.0 * normalized), axis=-1)

    is_invalid = jnp.any(jnp.isnan(rows) | (rows == jnp.inf), axis=-1) | jnp.all(
        rows == -jnp.inf, axis=-1
    )
    normalized = jnp.where(is_invalid[:, None], jnp.nan, normalized)
    khat = jnp.where(is_invalid, jnp.inf, khat)
    ess = jnp.where(is_invalid, jnp.nan, ess)
    return PSISResult(
        log_weights=normalized.reshape(log_weights.shape),
        khat=khat.reshape(batch_shape),
        ess=ess.reshape(batch_shape),
    )


def _format_rows(rows: np.ndarray, max_listed: int = 10) -> str:
    """Format leading-axis positions ``(R, ndim)`` as ``0, 3`` or ``(0, 1), (2, 0)``."""
    items = [str(int(r[0])) if len(r) == 1 else str(tuple(int(i) for i in r)) for r in rows]
    more = f" and {len(items) - max_listed} more" if len(items) > max_listed else ""
    return ", ".join(items[:max_listed]) + more


def check_log_weights(log_weights) -> None:
    """Check log weights eagerly: raise on invalid rows, warn when there are too few draws.

    Args:
        log_weights: ``(..., S)`` log importance weights, draws on the last axis.

    Raises:
        ValueError: if the shape has no draw axis, or if some rows (leading-axis positions, i.e.
            data sets) contain NaN or ``+inf``, or are entirely ``-inf``; the message lists them.

    Warns:
        RuntimeWarning: if ``S < 100``: k-hat is then too noisy to trust (Vehtari et al. 2024
            need ``S > 10 ** (1 / (1 - k))`` for reliable estimates, see :func:`khat_threshold`).
    """
    lw = np.asarray(log_weights)
    if lw.ndim < 1 or lw.shape[-1] < 1:
        raise ValueError(f"log_weights: expected shape (..., S) with S >= 1, got {lw.shape}.")
    problems = []
    not_finite = np.any(np.isnan(lw) | (lw == np.inf), axis=-1)
    if np.any(not_finite):
        where = _format_rows(np.argwhere(np.atleast_1d(not_finite)))
        problems.append(f"NaN or +inf entries in data sets [{where}]")
    all_zero = np.all(lw == -np.inf, axis=-1)
    if np.any(all_zero):
        where = _format_rows(np.argwhere(np.atleast_1d(all_zero)))
        problems.append(f"only -inf entries (all weights zero) in data sets [{where}]")
    if problems:
        raise ValueError(
            f"log_weights of shape {lw.shape}: " + "; ".join(problems) + " (leading-axis "
            "positions; a 1-D input is data set 0). Check the log densities of these data sets."
        )
    num_draws = lw.shape[-1]
    if num_draws < MIN_RELIABLE_DRAWS:
        warnings.warn(
            f"PSIS with S={num_draws} draws: k-hat is unreliable with fewer than "
            f"{MIN_RELIABLE_DRAWS} draws (Vehtari et al. 2024; the k-hat threshold at this S is "
            f"{khat_threshold(max(num_draws, 2)):.2f}); use more draws.",
            RuntimeWarning,
            stacklevel=2,
        )


_psis_jit = jax.jit(psis)


def psis_diagnose(log_weights) -> PSISResult:
    """Check log weights eagerly with :func:`check_log_weights`, then run jitted :func:`psis`.

    Args:
        log_weights: ``(..., S)`` log importance weights, draws on the last axis.

    Returns:
        A :class:`PSISResult` of JAX arrays, as from :func:`psis`.

    Examples:
        >>> result = psis_diagnose(jax.random.normal(jax.random.key(0), (1000,)))
        >>> bool(result.khat < khat_threshold(1000))
        True
    """
    check_log_weights(log_weights)
    return _psis_jit(jnp.asarray(log_weights))


def importance_resample(
    key: jax.Array, log_weights: jax.Array, num_samples: int, *, method: str = "systematic"
) -> jax.Array:
    """Draw indices of draws with probabilities ``softmax(log_weights)`` over the last axis.

    Jittable (``num_samples`` and ``method`` static), vectorized over leading axes with
    independent randomness per row. Zero-weight (``-inf``) draws are never selected. Systematic
    resampling (one uniform per row, stratified over ``num_samples`` equal slots) has lower
    variance than multinomial, but its indices come out sorted, so shuffle them if order matters.
    Rows without a positive finite weight give unspecified indices.

    Args:
        key: a PRNG key.
        log_weights: ``(..., S)`` log weights, unnormalized; e.g. ``psis(...).log_weights``.
        num_samples: number of indices ``N`` per row.
        method: ``"systematic"`` (default) or ``"multinomial"``.

    Returns:
        ``(..., N)`` int32 indices in ``[0, S)``.

    Examples:
        >>> lw = psis(jax.random.normal(jax.random.key(0), (3, 1000))).log_weights
        >>> importance_resample(jax.random.key(1), lw, 500).shape
        (3, 500)
    """
    if method not in RESAMPLING_METHODS:
        raise ValueError(f"method: expected one of {RESAMPLING_METHODS}, got {method!r}.")
    num_samples = check_int(num_samples, "num_samples")
    log_weights = _as_log_weights(log_weights)
    batch_shape, num_draws = log_weights.shape[:-1], log_weights.shape[-1]
    num_samples = int(num_samples)

    # Inverse CDF. Masking zero weights before the running max keeps their CDF value equal to
    # their predecessor's, so rounding in the cumulative sum can never select them.
    w = jax.nn.softmax(log_weights, axis=-1)
    cdf = jax.lax.cummax(jnp.where(w > 0, jnp.cumsum(w, axis=-1), 0.0), axis=w.ndim - 1)
    cdf = cdf / cdf[..., -1:]

    dtype = cdf.dtype
    if method == "multinomial":
        u = jax.random.uniform(key, (*batch_shape, num_samples), dtype)
    else:
        u0 = jax.random.uniform(key, (*batch_shape, 1), dtype)
        u = (u0 + jnp.arange(num_samples, dtype=dtype)) / num_samples
    # (u0 + N - 1) / N can round up to 1 in float32; the largest float below 1 still selects the
    # last positive-weight draw.
    u = jnp.minimum(u, jnp.nextafter(jnp.asarray(1.0, dtype), jnp.asarray(0.0, dtype)))

    search = jnp.vectorize(
        lambda a, v: jnp.searchsorted(a, v, side="right"), signature="(s),(n)->(n)"
    )
    return jnp.clip(search(cdf, u), 0, num_draws - 1).astype(jnp.int32)
