"""Maximum mean discrepancy between guide draws and reference draws, and its permutation test.

A Gaussian kernel on standardized draws (see :mod:`~amortized_ppl.diagnostics.two_sample`), its
bandwidth the median pairwise distance by default. Cost: the ``(n + m, n + m)`` kernel matrix of
each data set, all data sets at once under ``vmap``; with ``n = m = 2000`` that is 64 MB per
data set, and the permutation test adds one ``(num_permutations, n + m) x (n + m, n + m)``
product.

References:
    Gretton, A., Borgwardt, K. M., Rasch, M. J., Schölkopf, B. and Smola, A. (2012). A kernel
    two-sample test. *JMLR* 13, 723-773.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from amortized_ppl.diagnostics.two_sample import (
    batch_keys,
    check_count,
    check_pair,
    over_batch,
    random_order,
    standardize,
)

__all__ = ["median_bandwidth", "mmd", "mmd_test"]

_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 on GPUs: distances cancel large terms


def _pooled_sq_distances(x: Float[Array, "n d"], y: Float[Array, "m d"]) -> Float[Array, "N N"]:
    """Squared Euclidean distances between all standardized draws of ``[x; y]``, N = n + m."""
    x, y = standardize(x, y)
    z = jnp.concatenate([x, y])
    sq_norms = jnp.sum(z * z, axis=-1)
    gram = jnp.matmul(z, z.T, precision=_HIGHEST)
    sq_dists = jnp.maximum(sq_norms[:, None] + sq_norms[None, :] - 2.0 * gram, 0.0)
    # The expansion leaves rounding noise on the diagonal; self-distances are exactly 0.
    return jnp.where(jnp.eye(z.shape[0], dtype=bool), 0.0, sq_dists)


def _kth_smallest_bits(bits: Array, rank: int, upper: Array) -> Array:
    """Smallest ``t`` with at least ``rank`` entries of ``bits`` at most ``t``, by bisection.

    ``upper`` must have at least ``rank`` entries below or at it. Each step is one counting pass
    over the array; a bit width's worth of steps makes the answer exact.
    """
    num_steps = 8 * bits.dtype.itemsize

    def halve(_, bounds):
        # Invariant: count(low) < rank <= count(high).
        low, high = bounds
        mid = low + (high - low) // 2
        is_enough = jnp.sum(bits <= mid) >= rank
        return jnp.where(is_enough, low, mid), jnp.where(is_enough, mid, high)

    low = jnp.asarray(-1, bits.dtype)
    return jax.lax.fori_loop(0, num_steps, halve, (low, upper))[1]


def _median_off_diagonal(sq_dists: Float[Array, "N N"]) -> Float[Array, ""]:
    """Median distance over distinct pairs; 1 (one reference SD) if that median is 0.

    Exact, without sorting the ``N^2`` distances (sorting 16M numbers, ``n = m = 2000``, takes
    tens of seconds on a CPU): the two middle order statistics are found by bisection on the
    bit patterns of the squared distances, which for non-negative floats order like the values.
    """
    size = sq_dists.shape[0]
    int_dtype = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[sq_dists.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(sq_dists, int_dtype)
    # Each pair appears twice off the diagonal, which leaves the median unchanged; the diagonal
    # gets the largest integer so that it is never counted. The N (N - 1) off-diagonal entries
    # are an even count: the median is the mean of the two middle ones.
    is_diagonal = jnp.eye(size, dtype=bool)
    upper = jnp.max(jnp.where(is_diagonal, 0, bits))
    bits = jnp.where(is_diagonal, jnp.iinfo(int_dtype).max, bits)
    rank = size * (size - 1) // 2
    low = _kth_smallest_bits(bits, rank, upper)
    # The next order statistic is `low` again if it is tied, else the next larger value.
    next_larger = jnp.min(jnp.where(bits > low, bits, upper))
    high = jnp.where(jnp.sum(bits <= low) > rank, low, next_larger)
    middle = jax.lax.bitcast_convert_type(jnp.stack([low, high]), sq_dists.dtype)
    median = jnp.mean(jnp.sqrt(middle))
    # A zero median (more than half of the pairs tied, e.g. discrete draws) would give a
    # degenerate kernel.
    return jnp.where(median > 0, median, 1.0)


def _zero_diagonal_kernel(sq_dists: Float[Array, "N N"], bandwidth: Float[Array, ""]):
    """Gaussian kernel ``exp(-d^2 / (2 h^2))`` with its diagonal zeroed (the U-statistic's i != j)."""
    kernel = jnp.exp(-sq_dists / (2.0 * bandwidth**2))
    return jnp.where(jnp.eye(kernel.shape[0], dtype=bool), 0.0, kernel)


def _mmd2_from_kernel(
    kernel: Float[Array, "N N"], in_x: Float[Array, "P N"], num_x: int, num_y: int
) -> Float[Array, " P"]:
    """Unbiased MMD^2 for ``P`` splits of the pooled sample into ``num_x`` and ``num_y`` draws.

    With ``a`` the 0/1 indicator of the first sample, ``K`` the zero-diagonal kernel matrix,
    ``r = K 1`` and ``t = 1' K 1``: ``sum_XX = a'Ka``, ``sum_XY = a'r - a'Ka`` and
    ``sum_YY = t - 2 a'r + a'Ka``. One matrix product thus serves every permutation.
    """
    row_sums = jnp.sum(kernel, axis=-1)
    total = jnp.sum(row_sums)
    sum_xx = jnp.sum(in_x * jnp.matmul(in_x, kernel, precision=_HIGHEST), axis=-1)
    sum_x_all = jnp.matmul(in_x, row_sums, precision=_HIGHEST)
    sum_xy = sum_x_all - sum_xx
    sum_yy = total - 2.0 * sum_x_all + sum_xx
    return (
        sum_xx / (num_x * (num_x - 1))
        + sum_yy / (num_y * (num_y - 1))
        - 2.0 * sum_xy / (num_x * num_y)
    )


def _bandwidth_per_dataset(bandwidth: Any, batch_shape: tuple[int, ...]) -> jax.Array | None:
    if bandwidth is None:
        return None
    bandwidth = jnp.asarray(bandwidth)
    if not jnp.issubdtype(bandwidth.dtype, jnp.floating):
        bandwidth = bandwidth.astype(jnp.result_type(float))
    try:
        return jnp.broadcast_to(bandwidth, batch_shape)
    except ValueError:
        raise ValueError(
            f"bandwidth: expected a scalar or an array broadcastable to the batch shape "
            f"{batch_shape}, got shape {bandwidth.shape}."
        ) from None


def median_bandwidth(x: Any, y: Any) -> jax.Array:
    """Median heuristic for the Gaussian kernel's bandwidth, per data set.

    Each dimension of both samples is first standardized by the reference ``y``'s SD (and
    centred on its mean), so that dimensions with different scales count equally; the bandwidth
    is then the median Euclidean distance between distinct draws of the pooled sample
    ``[x; y]``. It is therefore in units of reference SDs, the units in which :func:`mmd` applies
    the kernel, and it does not change when a dimension of both samples is rescaled.

    Args:
        x: Draws of shape ``(..., n, D)``, ``n >= 2``.
        y: Reference draws of shape ``(..., m, D)``, ``m >= 2``.

    Returns:
        Bandwidths of shape ``(...)``; 1 where the median distance is 0 (ties).
    """
    x, y = check_pair(x, y, min_draws=2)
    return _median_bandwidth_batched(x, y)


@jax.jit
def _median_bandwidth_batched(x, y):
    return over_batch(
        lambda xs, ys: _median_off_diagonal(_pooled_sq_distances(xs, ys)), x.shape[:-2], x, y
    )


def _mmd2_one(x, y, bandwidth, in_x):
    sq_dists = _pooled_sq_distances(x, y)
    if bandwidth is None:
        bandwidth = _median_off_diagonal(sq_dists)
    kernel = _zero_diagonal_kernel(sq_dists, bandwidth)
    return _mmd2_from_kernel(kernel, in_x, x.shape[0], y.shape[0])


def _first_sample_indicator(num_x: int, num_y: int, dtype) -> jax.Array:
    return jnp.concatenate([jnp.ones(num_x, dtype), jnp.zeros(num_y, dtype)])


def mmd(x: Any, y: Any, *, bandwidth: Any | None = None) -> jax.Array:
    """Unbiased estimate of the squared maximum mean discrepancy with a Gaussian kernel.

    ``MMD^2_u = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j)``
    with ``k(a, b) = exp(-|a - b|^2 / (2 h^2))`` on draws standardized by the reference ``y``'s
    mean and SD per dimension. The estimate is unbiased for a fixed kernel, so it can be
    slightly negative when the two distributions agree (it is 0 in expectation then); it grows
    as they separate, up to at most 2.

    Args:
        x: Draws of shape ``(..., n, D)``, ``n >= 2``.
        y: Reference draws of shape ``(..., m, D)``, ``m >= 2``.
        bandwidth: Kernel bandwidth ``h`` in reference-SD units, a scalar or shape ``(...)``;
            by default :func:`median_bandwidth` of each data set.

    Returns:
        MMD^2 estimates of shape ``(...)``.

    References:
        Gretton et al. (2012), Lemma 6 (the unbiased statistic) and Section 8 (median heuristic).

    Examples:
        >>> x = jax.random.normal(jax.random.key(0), (300, 2))
        >>> y = jax.random.normal(jax.random.key(1), (400, 2))
        >>> float(mmd(x, y)) < 0.01
        True
    """
    x, y = check_pair(x, y, min_draws=2, why=" for the unbiased MMD")
    return _mmd_batched(x, y, _bandwidth_per_dataset(bandwidth, x.shape[:-2]))


@jax.jit
def _mmd_batched(x, y, bandwidths):
    in_x = _first_sample_indicator(x.shape[-2], y.shape[-2], x.dtype)[None]

    def one(xs, ys, *h):
        return _mmd2_one(xs, ys, h[0] if h else None, in_x)[0]

    arrays = (x, y) if bandwidths is None else (x, y, bandwidths)
    return over_batch(one, x.shape[:-2], *arrays)


def mmd_test(
    key: PRNGKeyArray,
    x: Any,
    y: Any,
    *,
    num_permutations: int = 200,
    bandwidth: Any | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Permutation test of ``x`` and ``y`` having the same distribution, with MMD^2 as statistic.

    The pooled draws are randomly reassigned to samples of sizes ``n`` and ``m``
    ``num_permutations`` times; the p-value is ``(1 + #{permuted MMD^2 >= observed}) /
    (1 + num_permutations)``, valid for any sample size (the smallest attainable is
    ``1 / (1 + num_permutations)``). The kernel and its bandwidth are those of :func:`mmd` and
    stay fixed across permutations. The kernel matrix is built once; all permutations share one
    matrix product.

    Args:
        key: PRNG key; data set ``i`` of the flattened batch uses ``split(key, B)[i]``, and an
            unbatched call uses ``key`` itself.
        x: Draws of shape ``(..., n, D)``, ``n >= 2``.
        y: Reference draws of shape ``(..., m, D)``, ``m >= 2``.
        num_permutations: Number of random permutations.
        bandwidth: As for :func:`mmd`.

    Returns:
        ``(mmd2, p_value)``, each of shape ``(...)``.

    Note:
        Permutations assume exchangeable draws. For autocorrelated draws (e.g. MCMC without
        thinning) the p-value is too small; thin the reference to roughly independent draws.

    Examples:
        >>> mmd2, p_value = mmd_test(jax.random.key(0), guide_draws, nuts_draws)  # doctest: +SKIP
    """
    num_permutations = check_count(num_permutations, "num_permutations", 1)
    x, y = check_pair(x, y, min_draws=2, why=" for the unbiased MMD")
    batch_shape = x.shape[:-2]
    bandwidths = _bandwidth_per_dataset(bandwidth, batch_shape)
    return _mmd_test_batched(
        batch_keys(key, batch_shape), x, y, bandwidths, num_permutations=num_permutations
    )


@functools.partial(jax.jit, static_argnames="num_permutations")
def _mmd_test_batched(keys, x, y, bandwidths, *, num_permutations):
    observed = _first_sample_indicator(x.shape[-2], y.shape[-2], x.dtype)

    def one(key, xs, ys, *h):
        permuted = observed[random_order(key, (num_permutations, observed.shape[0]))]
        # Row 0 is the observed split, so statistic and null draws come from the same product.
        stats = _mmd2_one(xs, ys, h[0] if h else None, jnp.concatenate([observed[None], permuted]))
        p_value = (1.0 + jnp.sum(stats[1:] >= stats[0])) / (1.0 + num_permutations)
        return stats[0], p_value.astype(stats.dtype)

    arrays = (keys, x, y) if bandwidths is None else (keys, x, y, bandwidths)
    return over_batch(one, x.shape[:-2], *arrays)
