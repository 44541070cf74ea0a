"""Metrics of a diffusion-posterior sampler's draws against a reference or an exact posterior.

A sampler (RTB, classifier guidance, DPS, ...) gives draws ``x`` of shape ``(n, d)`` from an
approximation of ``p(x | y)``. The functions here say how good they are:

- against an exact Gaussian-mixture posterior (e.g. ``InverseProblem.exact_posterior`` of
  :mod:`amortized_ppl.models.inverse_problems`): the weight the draws give each mode (:func:`mode_weights`),
  its total variation to the exact weights (:func:`total_variation`) and which modes were
  found at all (:func:`modes_found`);
- against reference draws (exact, or NUTS): the energy distance (:func:`energy_distance`) and the
  MMD (:func:`amortized_ppl.diagnostics.distances.mmd`);
- the normalizing constant: the importance-sampling estimate of ``log Z`` from log weights and
  its effective sample size (:func:`log_evidence_estimate`).

:func:`posterior_report` computes whichever of these its inputs allow, as a
:class:`PosteriorReport` with a JSON-ready :meth:`PosteriorReport.to_dict`.

Mixtures are duck-typed: any object with ``weights (K,)``, ``means (K, d)``, ``assign(x)`` and
``responsibilities(x)`` works (:class:`amortized_ppl.models.inverse_problems.GaussianMixture` does).
Everything is eager (inputs are checked on concrete values); the heavy parts are jitted.

References:
    Venkatraman, S., Jain, M., Scimeca, L., et al. (2024). Amortizing intractable inference in
    diffusion models for vision, language, and control. *NeurIPS*. (Relative trajectory
    balance; its toy reports mode weights and log-partition estimates.)
    Székely, G. J. and Rizzo, M. L. (2013). Energy statistics: a class of statistics based on
    distances. *Journal of Statistical Planning and Inference* 143, 1249-1272.
    Kong, A. (1992). A note on importance sampling using standardized weights. Technical
    report 348, University of Chicago. (The effective sample size.)
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl._checks import check_key
from amortized_ppl.diagnostics.mmd import mmd

if TYPE_CHECKING:
    from collections.abc import Callable

    from amortized_ppl.models.inverse_problems import GaussianMixture

__all__ = [
    "LogEvidenceEstimate",
    "ModesFound",
    "PosteriorReport",
    "energy_distance",
    "log_evidence_estimate",
    "mode_weights",
    "modes_found",
    "posterior_report",
    "total_variation",
]

_SHAPE_ERROR = "{name}: expected shape {expected}, got {got}."
# Elements of the (rows, m, d) difference block that energy_distance builds at once: 16 MiB of
# float32, whatever n, m and d.
_BLOCK_ELEMENTS = 1 << 22


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _as_samples(value: Any, name: str, *, dim: int | None = None, min_rows: int = 1) -> jax.Array:
    """Return ``value`` as a finite floating ``(n, d)`` array, ``n >= min_rows``."""
    array = jnp.asarray(value)
    expected = f"(n, {dim if dim is not None else 'd'})"
    if array.ndim != 2 or (dim is not None and array.shape[1] != dim) or array.shape[1] == 0:
        raise ValueError(_SHAPE_ERROR.format(name=name, expected=expected, got=array.shape))
    if array.shape[0] < min_rows:
        raise ValueError(
            f"{name}: expected at least {min_rows} draws (rows), got {array.shape[0]} "
            f"(shape {array.shape})."
        )
    if not jnp.issubdtype(array.dtype, jnp.floating):
        array = array.astype(jnp.result_type(float))
    num_bad = int(jnp.sum(~jnp.isfinite(array)))
    if num_bad:
        raise ValueError(
            f"{name}: contains {num_bad} NaN or infinite value(s); drop diverged draws first "
            "(a sampler that produced them has failed on its own)."
        )
    return array


def _check_mixture(mixture: Any, name: str = "mixture") -> int:
    """Return the number of components ``K`` of a Gaussian-mixture-like object."""
    missing = [
        attr
        for attr in ("weights", "means", "assign", "responsibilities")
        if not hasattr(mixture, attr)
    ]
    if missing:
        raise ValueError(
            f"{name}: expected a GaussianMixture (weights, means, assign, responsibilities), "
            f"got {type(mixture).__name__} without {missing}."
        )
    means = jnp.asarray(mixture.means)
    if means.ndim != 2:
        raise ValueError(
            _SHAPE_ERROR.format(name=f"{name}.means", expected="(K, d)", got=means.shape)
        )
    return means.shape[0]


def _check_count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_nonnegative(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a non-negative number, got {value!r}.") from None
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{name}: expected a non-negative number, got {value!r}.")
    return number


def _as_weight_vector(value: Any, name: str, *, atol: float) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(_SHAPE_ERROR.format(name=name, expected="(K,)", got=array.shape))
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected numbers, got dtype {array.dtype}.")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: contains NaN or infinite weights.")
    if np.any(array < 0):
        raise ValueError(f"{name}: expected non-negative weights, got minimum {array.min():.3g}.")
    total = float(array.sum())
    if abs(total - 1.0) > atol:
        raise ValueError(f"{name}: expected weights summing to 1 (within {atol:g}), got {total!r}.")
    return array


# ---------------------------------------------------------------------------------------------
# Mode weights
# ---------------------------------------------------------------------------------------------


def mode_weights(samples: Any, mixture: GaussianMixture, *, soft: bool = False) -> jax.Array:
    """Fraction of the draws that fall in each component of a reference mixture.

    Hard (default): each draw goes to its most probable component, ``mixture.assign``; the
    result is ``bincount / n``. Soft: the mean of the responsibilities ``p(k | x_i)``. Both
    estimate the sampler's weight of mode ``k`` when the modes are well separated (as in the
    2-D toy, where modes are ~9 SDs apart); the soft version is smoother but spreads each draw
    over overlapping components. Compare either with ``mixture.weights`` by
    :func:`total_variation`.

    Args:
        samples: Draws of shape ``(n, d)``, finite.
        mixture: The reference mixture, ``K`` components in ``R^d`` (usually the exact
            posterior).
        soft: Average responsibilities instead of counting hard assignments.

    Returns:
        Weights of shape ``(K,)``, non-negative, summing to 1.

    Raises:
        ValueError: for ``samples`` not ``(n, d)`` with the mixture's ``d``, NaN/Inf draws, or a
            ``mixture`` without the mixture methods.

    Examples:
        >>> from amortized_ppl.models.inverse_problems import toy_2d_problem
        >>> post = toy_2d_problem().exact_posterior
        >>> weights = mode_weights(post.sample(jax.random.key(0), 1000), post)
        >>> weights.shape
        (25,)
    """
    num_components = _check_mixture(mixture)
    samples = _as_samples(samples, "samples", dim=jnp.shape(mixture.means)[1])
    if soft:
        return jnp.mean(mixture.responsibilities(samples), axis=0)
    counts = jnp.bincount(mixture.assign(samples), length=num_components)
    return counts.astype(samples.dtype) / samples.shape[0]


def total_variation(p: Any, q: Any, *, atol: float = 1e-4) -> float:
    """Total variation distance ``(1/2) sum_k |p_k - q_k|`` between two weight vectors.

    0 for identical vectors, 1 for vectors with disjoint supports. For mode weights it is the
    mass a sampler puts in the wrong modes: with ``n`` exact draws its expectation is about
    ``sum_k sqrt(2 p_k (1 - p_k) / (pi n))`` / 2 (0.011 for the 2-D toy and ``n = 5000``).

    Args:
        p: Weights of shape ``(K,)``, non-negative, summing to 1 within ``atol``.
        q: Weights of the same shape.
        atol: Tolerance on the sums (float32 weights sum to 1 only up to rounding).

    Returns:
        The distance, a Python float in ``[0, 1]``.

    Raises:
        ValueError: naming ``p`` or ``q``, for a shape other than ``(K,)``, shapes that differ,
            NaN/Inf or negative entries, or sums not within ``atol`` of 1.

    Examples:
        >>> total_variation([0.5, 0.5, 0.0], [0.0, 0.5, 0.5])
        0.5
    """
    atol = _check_nonnegative(atol, "atol")
    p = _as_weight_vector(p, "p", atol=atol)
    q = _as_weight_vector(q, "q", atol=atol)
    if p.shape != q.shape:
        raise ValueError(_SHAPE_ERROR.format(name="q", expected=f"{p.shape} (as p)", got=q.shape))
    return float(min(1.0, 0.5 * np.sum(np.abs(p - q))))


class ModesFound(NamedTuple):
    """Which modes of a reference mixture a sampler's draws reached.

    Attributes:
        counts: Draws assigned to each component (``mixture.assign``), int array ``(K,)``.
        is_significant: Components whose exact weight exceeds ``min_weight``, bool ``(K,)``.
        is_found: Components with at least ``min_count`` draws, bool ``(K,)``.
        num_found: Significant components that were found, an int.
        num_significant: Significant components, an int.
        all_found: Whether every significant component was found, a bool.
        missing: Indices of the significant components that were not found, a tuple of ints.
    """

    counts: jax.Array
    is_significant: jax.Array
    is_found: jax.Array
    num_found: int
    num_significant: int
    all_found: bool
    missing: tuple[int, ...]


def modes_found(
    samples: Any, mixture: GaussianMixture, min_weight: float = 1e-3, min_count: int = 1
) -> ModesFound:
    """Check which components of a mixture with weight above ``min_weight`` got draws.

    A component counts as found when at least ``min_count`` draws are assigned to it
    (``mixture.assign``). Only components whose exact weight exceeds ``min_weight`` are
    required: with ``n`` exact draws, a component of weight ``w`` is missed with probability
    ``(1 - w)^n``, so choose ``min_weight`` well above ``1 / n`` (with the defaults and
    ``n = 5000`` the 2-D toy's 9 centre modes, weights >= 0.00999, are missed by exact draws
    with probability ``4 * 0.99^5000 ~ 1e-21``).

    Args:
        samples: Draws of shape ``(n, d)``, finite.
        mixture: The reference mixture (usually the exact posterior).
        min_weight: Exact weight above which a component must be found, in ``[0, 1)``.
        min_count: Draws a component needs to count as found, at least 1.

    Returns:
        A :class:`ModesFound`.

    Raises:
        ValueError: for bad ``samples`` or ``mixture`` (see :func:`mode_weights`), ``min_weight``
            outside ``[0, 1)`` or ``min_count`` not an integer >= 1.

    Examples:
        >>> from amortized_ppl.models.inverse_problems import toy_2d_problem
        >>> post = toy_2d_problem().exact_posterior
        >>> found = modes_found(post.sample(jax.random.key(0), 5000), post)
        >>> found.num_found, found.num_significant
        (9, 9)
    """
    num_components = _check_mixture(mixture)
    samples = _as_samples(samples, "samples", dim=jnp.shape(mixture.means)[1])
    min_weight = _check_nonnegative(min_weight, "min_weight")
    if min_weight >= 1:
        raise ValueError(f"min_weight: expected a number in [0, 1), got {min_weight!r}.")
    min_count = _check_count(min_count, "min_count", 1)
    counts = jnp.bincount(mixture.assign(samples), length=num_components)
    is_significant = jnp.asarray(mixture.weights) > min_weight
    is_found = counts >= min_count
    missing = np.flatnonzero(np.asarray(is_significant & ~is_found))
    num_significant = int(jnp.sum(is_significant))
    return ModesFound(
        counts=counts,
        is_significant=is_significant,
        is_found=is_found,
        num_found=num_significant - missing.size,
        num_significant=num_significant,
        all_found=missing.size == 0,
        missing=tuple(int(k) for k in missing),
    )


# ---------------------------------------------------------------------------------------------
# Energy distance
# ---------------------------------------------------------------------------------------------


def _distance_sum(a: jax.Array, b: jax.Array, rows: int) -> jax.Array:
    """``sum_{i, j} |a_i - b_j|`` (Euclidean), ``rows`` rows of ``a`` at a time.

    Differences are formed explicitly, not by expanding ``|a|^2 + |b|^2 - 2 a.b``: the expansion
    cancels catastrophically for nearby points and its rounding noise, square-rooted, would bias
    the within-sample terms.
    """
    num_rows, dim = a.shape
    num_blocks = -(-num_rows // rows)
    padded = jnp.pad(a, ((0, num_blocks * rows - num_rows), (0, 0)))
    is_real = (jnp.arange(num_blocks * rows) < num_rows).reshape(num_blocks, rows)

    def block(args):
        block_rows, block_is_real = args
        diff = block_rows[:, None, :] - b[None, :, :]
        per_row = jnp.sum(jnp.sqrt(jnp.sum(diff * diff, axis=-1)), axis=-1)
        return jnp.sum(jnp.where(block_is_real, per_row, 0.0))

    return jnp.sum(jax.lax.map(block, (padded.reshape(num_blocks, rows, dim), is_real)))


@functools.partial(jax.jit, static_argnames=("rows_xy", "rows_xx", "rows_yy"))
def _energy_sums(x, y, *, rows_xy, rows_xx, rows_yy):
    return _distance_sum(x, y, rows_xy), _distance_sum(x, x, rows_xx), _distance_sum(y, y, rows_yy)


def _block_rows(num_rows: int, num_cols: int, dim: int) -> int:
    return max(1, min(num_rows, _BLOCK_ELEMENTS // max(1, num_cols * dim)))


def energy_distance(x: Any, y: Any, *, unbiased: bool = False) -> jax.Array:
    """Energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` between two samples.

    The default is the **V-statistic**: every expectation is a mean over all pairs, the
    within-sample ones including the zero distances ``i = j``, i.e. divided by ``n^2`` and
    ``m^2``. It is the exact energy distance between the two empirical distributions, so it is
    never negative, and it is 0 only for identical samples; for two samples of one distribution
    it is of order ``1 / n + 1 / m`` (biased upward). With ``unbiased=True`` the within-sample
    sums are divided by ``n (n - 1)`` and ``m (m - 1)`` instead (the **U-statistic**): unbiased,
    0 in expectation for equal distributions, and possibly slightly negative. In 1-D the
    V-statistic equals ``scipy.stats.energy_distance(x, y) ** 2``.

    Distances are Euclidean on the raw coordinates (no standardization, unlike :func:`mmd`):
    the energy distance has the units of ``x``. The pairwise distances are never stored: they
    are summed in blocks of rows of at most 4M differences (16 MiB of float32), so memory is
    ``O(m d)`` beyond the inputs whatever ``n`` and ``m``; ``n = m = 5000`` in ``d = 16``
    (75M pairs) takes about a second on a CPU.

    Args:
        x: Draws of shape ``(n, d)``, ``n >= 1`` (``n >= 2`` when ``unbiased``).
        y: Reference draws of shape ``(m, d)``, same ``d``.
        unbiased: Return the U-statistic instead of the V-statistic.

    Returns:
        The energy distance, a scalar array (of the squared-distance kind: no square root).

    Raises:
        ValueError: naming ``x`` or ``y``, for shapes other than ``(n, d)`` and ``(m, d)``,
            ``d`` that differ, too few draws, or NaN/Inf values.

    References:
        Székely and Rizzo (2013), Section 3 (the two-sample energy statistic).

    Examples:
        >>> float(energy_distance(jnp.zeros((3, 1)), jnp.ones((4, 1))))  # point masses: 2|a - b|
        2.0
    """
    min_rows = 2 if unbiased else 1
    x = _as_samples(x, "x", min_rows=min_rows)
    y = _as_samples(y, "y", dim=x.shape[1], min_rows=min_rows)
    dtype = jnp.result_type(x.dtype, y.dtype)
    x, y = x.astype(dtype), y.astype(dtype)
    (n, dim), m = x.shape, y.shape[0]
    sum_xy, sum_xx, sum_yy = _energy_sums(
        x,
        y,
        rows_xy=_block_rows(n, m, dim),
        rows_xx=_block_rows(n, n, dim),
        rows_yy=_block_rows(m, m, dim),
    )
    pairs_xx, pairs_yy = (n * (n - 1), m * (m - 1)) if unbiased else (n * n, m * m)
    return 2.0 * sum_xy / (n * m) - sum_xx / pairs_xx - sum_yy / pairs_yy


# ---------------------------------------------------------------------------------------------
# Log evidence
# ---------------------------------------------------------------------------------------------


class LogEvidenceEstimate(NamedTuple):
    """An importance-sampling estimate of ``log Z`` and how many draws it effectively rests on.

    Attributes:
        log_z: ``logsumexp(log_weights) - log n``, shape ``(...)``; ``-inf`` when every weight
            is zero.
        ess: Kish's effective sample size ``(sum w)^2 / sum w^2``, in ``[1, n]`` (0 when every
            weight is zero), shape ``(...)``. ``ess / n`` near 1: the proposal is close to the
            target and ``log_z`` is trustworthy; ``ess`` of a few: one draw dominates and
            ``log_z`` is most likely an underestimate.
    """

    log_z: jax.Array
    ess: jax.Array


@jax.jit
def _log_evidence(log_weights):
    num = log_weights.shape[-1]
    log_sum = jax.nn.logsumexp(log_weights, axis=-1)
    log_sum_sq = jax.nn.logsumexp(2.0 * log_weights, axis=-1)
    is_empty = log_sum == -jnp.inf
    ess = jnp.where(is_empty, 0.0, jnp.exp(2.0 * log_sum - jnp.where(is_empty, 0.0, log_sum_sq)))
    return LogEvidenceEstimate(log_sum - math.log(num), jnp.minimum(ess, num))


def log_evidence_estimate(log_weights: Any) -> LogEvidenceEstimate:
    """Estimate ``log Z`` from the log importance weights of ``n`` independent draws.

    ``Z_hat = (1 / n) sum_i w_i`` is unbiased for ``Z``, so ``log Z_hat`` (returned, computed
    as ``logsumexp(log_weights) - log n``) is a stochastic lower bound in expectation (Jensen).
    For a trajectory sampler trained by relative trajectory balance the weights of trajectories
    ``tau = (x_0, ..., x_N)`` drawn from the posterior sampler are

        ``log w = log p_prior(tau) + log r(x_N) - log p_post(tau)``,

    (prior diffusion's and posterior sampler's trajectory log densities, ``r`` the constraint /
    likelihood), and ``Z = E_prior[r(x_N)]``, the evidence ``p(y)`` when ``r`` is a normalized
    likelihood. For a sampler with a tractable density ``q`` they are
    ``log p~(x) - log q(x)``.

    Args:
        log_weights: Log weights of shape ``(..., n)``, ``n >= 1``; the last axis holds the
            draws of one estimate. ``-inf`` (a zero weight, e.g. a draw outside the target's
            support) is allowed; NaN and ``+inf`` are not.

    Returns:
        A :class:`LogEvidenceEstimate` with fields of shape ``(...)``.

    Raises:
        ValueError: naming ``log_weights``, when it is a scalar or empty, or holds NaN or
            ``+inf`` (an overflow or a ``0 / 0`` upstream: a weight that is not a number says
            nothing about ``Z``); inside ``jit`` the same as an ``eqx.error_if`` runtime error.

    References:
        Kong (1992) and Kish (1965) for the effective sample size.

    Examples:
        >>> est = log_evidence_estimate(jnp.log(jnp.array([1.0, 1.0, 4.0, 2.0])))
        >>> round(float(est.log_z), 4), round(float(est.ess), 4)  # log(2); 64 / 22
        (0.6931, 2.9091)
    """
    log_weights = jnp.asarray(log_weights)
    if log_weights.ndim < 1 or log_weights.shape[-1] == 0:
        raise ValueError(
            _SHAPE_ERROR.format(
                name="log_weights", expected="(..., n), n >= 1", got=log_weights.shape
            )
        )
    if not jnp.issubdtype(log_weights.dtype, jnp.floating):
        log_weights = log_weights.astype(jnp.result_type(float))
    message = (
        "log_weights: contains {} NaN value(s); a NaN log weight usually comes from inf - inf "
        "or 0 / 0 in a log density. Fix the density, or pass -inf for draws of zero weight."
    )
    plus_inf = "log_weights: contains {} +inf value(s); a log density overflowed."
    if isinstance(log_weights, jax.core.Tracer):
        log_weights = eqx.error_if(
            log_weights, jnp.any(jnp.isnan(log_weights)), message.format("some")
        )
        log_weights = eqx.error_if(
            log_weights, jnp.any(log_weights == jnp.inf), plus_inf.format("some")
        )
    else:
        num_nan = int(jnp.sum(jnp.isnan(log_weights)))
        if num_nan:
            raise ValueError(message.format(num_nan))
        num_inf = int(jnp.sum(log_weights == jnp.inf))
        if num_inf:
            raise ValueError(plus_inf.format(num_inf))
    return _log_evidence(log_weights)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


class PosteriorReport(NamedTuple):
    """Metrics of one sampler's draws; a field is ``None`` when the inputs did not allow it.

    Attributes:
        num_samples: Number of draws ``n`` judged.
        mode_weights: Hard-assignment mode weights of the draws under ``exact``
            (:func:`mode_weights`), array ``(K,)``. Needs ``exact``.
        exact_weights: ``exact.weights``, array ``(K,)``. Needs ``exact``.
        mode_weight_tv: :func:`total_variation` between ``mode_weights`` and ``exact_weights``;
            0 is perfect, the share of the mass in the wrong modes. Needs ``exact``.
        modes: :class:`ModesFound` for ``exact`` with ``min_weight`` and ``min_count``
            (``modes.num_found`` of ``modes.num_significant``). Needs ``exact``.
        energy_distance: :func:`energy_distance` (V-statistic, raw coordinates) between the
            draws and the reference draws, each thinned to ``max_distance_samples``. Needs
            ``reference_samples``, or ``exact`` and ``key``.
        mmd2: Unbiased MMD^2 with the median-heuristic Gaussian kernel on reference-standardized
            coordinates (:func:`amortized_ppl.diagnostics.distances.mmd`), same draws as
            ``energy_distance``.
        num_reference: Number of reference draws used by the two distances (after thinning).
        mean_log_likelihood: ``log_likelihood(samples).mean()``, the mean constraint
            ``log r(x)``; compare with its value on exact draws (too high: collapsed on the
            likelihood's peak and ignoring the prior; too low: off the posterior). Needs
            ``log_likelihood``.
        mean_exact_log_prob: ``exact.log_prob(samples).mean()``, the cross-entropy of the exact
            posterior under the draws (with a minus sign); exact draws give minus its entropy.
            Needs ``exact``.
        log_z_estimate: The sampler's estimate of ``log Z``, as given.
        log_z_ess: Effective sample size of that estimate, when ``log_z_estimate`` was a
            :class:`LogEvidenceEstimate`.
        true_log_z: The exact ``log Z``, as given.
        log_z_error: ``log_z_estimate - true_log_z`` (negative: underestimate, the usual
            direction of importance-sampling bias). Needs both.
    """

    num_samples: int
    mode_weights: jax.Array | None = None
    exact_weights: jax.Array | None = None
    mode_weight_tv: float | None = None
    modes: ModesFound | None = None
    energy_distance: float | None = None
    mmd2: float | None = None
    num_reference: int | None = None
    mean_log_likelihood: float | None = None
    mean_exact_log_prob: float | None = None
    log_z_estimate: float | None = None
    log_z_ess: float | None = None
    true_log_z: float | None = None
    log_z_error: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready Python values (``None`` for what was not computed).

        Arrays become lists; ``modes`` becomes ``num_modes_found``, ``num_modes_significant``,
        ``all_modes_found``, ``missing_modes`` and ``mode_counts``.
        """
        out: dict[str, Any] = {}
        for name, value in self._asdict().items():
            if name == "modes":
                out["num_modes_found"] = None if value is None else value.num_found
                out["num_modes_significant"] = None if value is None else value.num_significant
                out["all_modes_found"] = None if value is None else value.all_found
                out["missing_modes"] = None if value is None else list(value.missing)
                out["mode_counts"] = None if value is None else np.asarray(value.counts).tolist()
            elif isinstance(value, jax.Array | np.ndarray):
                out[name] = np.asarray(value).tolist()
            else:
                out[name] = value
        return out


def _thin(values: jax.Array, max_rows: int | None) -> jax.Array:
    """Keep at most ``max_rows`` rows, evenly spaced (deterministic; thins MCMC chains too)."""
    if max_rows is None or values.shape[0] <= max_rows:
        return values
    return values[np.linspace(0, values.shape[0] - 1, max_rows).astype(np.int64)]


def _scalar(value: Any, name: str) -> float:
    try:
        number = float(np.asarray(value).reshape(()))
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a scalar, got {value!r}.") from None
    if math.isnan(number):
        raise ValueError(f"{name}: expected a number, got NaN.")
    return number


def posterior_report(
    samples: Any,
    *,
    reference_samples: Any = None,
    exact: GaussianMixture | None = None,
    log_likelihood: Callable[[jax.Array], jax.Array] | None = None,
    log_z_estimate: LogEvidenceEstimate | float | None = None,
    true_log_z: Any = None,
    key: jax.Array | None = None,
    min_weight: float = 1e-3,
    min_count: int = 1,
    num_reference: int | None = None,
    max_distance_samples: int | None = 2000,
) -> PosteriorReport:
    """Compute every metric of :class:`PosteriorReport` that the inputs allow.

    - ``exact`` (a Gaussian mixture): mode weights, their total variation to the exact weights,
      modes found, and the mean exact log density of the draws;
    - ``reference_samples``, or ``exact`` with ``key`` (then ``num_reference`` exact draws are
      taken as the reference): energy distance and MMD^2, on at most
      ``max_distance_samples`` evenly spaced draws of each (the MMD's kernel matrix is
      ``O((n + m)^2)``);
    - ``log_likelihood``: the mean log likelihood of the draws;
    - ``log_z_estimate`` (and ``true_log_z``): the estimate, its ESS and its error.

    Args:
        samples: The sampler's draws, shape ``(n, d)``, finite.
        reference_samples: Reference draws ``(m, d)`` (exact or MCMC), ``m >= 2``.
        exact: The exact posterior mixture (e.g. ``problem.exact_posterior``).
        log_likelihood: ``x (n, d) -> (n,)``, e.g. ``problem.log_likelihood``.
        log_z_estimate: A scalar or a :class:`LogEvidenceEstimate` (from
            :func:`log_evidence_estimate`).
        true_log_z: The exact ``log Z`` (e.g. ``problem.log_evidence``).
        key: PRNG key to draw a reference from ``exact`` when ``reference_samples`` is None.
        min_weight: As for :func:`modes_found`.
        min_count: As for :func:`modes_found`.
        num_reference: Exact reference draws to take with ``key``; default ``n``.
        max_distance_samples: Thin both samples to at most this many draws for the distances
            (``None``: no thinning), at least 2.

    Returns:
        A :class:`PosteriorReport`; ``report.to_dict()`` is ready for ``json.dumps``.

    Raises:
        ValueError: naming the argument, for bad shapes, NaN/Inf draws, a ``true_log_z``
            without ``log_z_estimate``, or bad counts.

    Examples:
        >>> problem = toy_2d_problem()  # doctest: +SKIP
        >>> report = posterior_report(  # doctest: +SKIP
        ...     draws, exact=problem.exact_posterior, log_likelihood=problem.log_likelihood,
        ...     log_z_estimate=log_evidence_estimate(log_weights),
        ...     true_log_z=problem.log_evidence, key=jax.random.key(0))
        >>> print(json.dumps(report.to_dict(), indent=2))  # doctest: +SKIP
    """
    samples = _as_samples(samples, "samples")
    num_samples, dim = samples.shape
    if max_distance_samples is not None:
        max_distance_samples = _check_count(max_distance_samples, "max_distance_samples", 2)
    fields: dict[str, Any] = {"num_samples": num_samples}

    if exact is not None:
        _check_mixture(exact, "exact")
        if jnp.shape(exact.means)[1] != dim:
            raise ValueError(
                f"exact: expected a mixture in d = {dim} dimensions (as samples), got means of "
                f"shape {jnp.shape(exact.means)}."
            )
        weights = mode_weights(samples, exact)
        exact_weights = jnp.asarray(exact.weights)
        fields.update(
            mode_weights=weights,
            exact_weights=exact_weights,
            mode_weight_tv=total_variation(weights, exact_weights),
            modes=modes_found(samples, exact, min_weight=min_weight, min_count=min_count),
            mean_exact_log_prob=float(jnp.mean(exact.log_prob(samples))),
        )

    if reference_samples is None and exact is not None and key is not None:
        check_key(key, "key")
        if num_reference is None:
            num_reference = num_samples
        num_reference = _check_count(num_reference, "num_reference", 2)
        reference_samples = exact.sample(key, num_reference)
    if reference_samples is not None:
        reference = _as_samples(reference_samples, "reference_samples", dim=dim, min_rows=2)
        if num_samples < 2:
            raise ValueError(
                f"samples: expected at least 2 draws to compare with reference_samples, got "
                f"{num_samples}."
            )
        x = _thin(samples, max_distance_samples)
        reference = _thin(reference, max_distance_samples)
        fields.update(
            energy_distance=float(energy_distance(x, reference)),
            mmd2=float(mmd(x, reference)),
            num_reference=int(reference.shape[0]),
        )

    if log_likelihood is not None:
        if not callable(log_likelihood):
            raise ValueError(
                f"log_likelihood: expected a callable x (n, d) -> (n,), got "
                f"{type(log_likelihood).__name__}."
            )
        values = jnp.asarray(log_likelihood(samples))
        if values.shape != (num_samples,):
            raise ValueError(
                _SHAPE_ERROR.format(
                    name="log_likelihood(samples)", expected=f"({num_samples},)", got=values.shape
                )
            )
        fields["mean_log_likelihood"] = float(jnp.mean(values))

    if log_z_estimate is not None:
        if isinstance(log_z_estimate, LogEvidenceEstimate):
            fields["log_z_ess"] = _scalar(log_z_estimate.ess, "log_z_estimate.ess")
            log_z_estimate = log_z_estimate.log_z
        fields["log_z_estimate"] = _scalar(log_z_estimate, "log_z_estimate")
    if true_log_z is not None:
        fields["true_log_z"] = _scalar(true_log_z, "true_log_z")
        if log_z_estimate is None:
            raise ValueError(
                "true_log_z: given without log_z_estimate; pass the sampler's estimate "
                "(e.g. log_evidence_estimate(log_weights)) to get the log Z error."
            )
        fields["log_z_error"] = fields["log_z_estimate"] - fields["true_log_z"]
    return PosteriorReport(**fields)
