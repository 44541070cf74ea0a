"""Two-sample distances between guide draws and reference draws: MMD and classifier tests.

Where :mod:`amortized_ppl.diagnostics.metrics` compares the first two moments of each dimension,
the distances here compare whole joint distributions, so they also see wrong correlations, skew
and multimodality. Draws are flat arrays ``x`` of shape ``(..., n, D)`` (e.g. a guide's, from
:func:`~amortized_ppl.diagnostics.metrics.flatten_draws`) and ``y`` of shape ``(..., m, D)``
(the reference, e.g. NUTS); the leading axes ``...`` (typically data sets) must agree and every
result has shape ``(...)``, one value per data set.

Both tests first standardize each dimension by the reference ``y``'s mean and SD, so that a
dimension counts the same whatever its scale or units. Everything is plain JAX and runs under
``jit``; shape and argument errors are raised at trace time, and NaN / Inf draws are reported
eagerly (by :func:`check_draws_finite`) whenever the arrays are concrete.

Cost: the MMD builds the ``(n + m, n + m)`` kernel matrix of each data set, all data sets at
once under ``vmap``; with ``n = m = 2000`` that is 64 MB per data set, and the permutation test
adds one ``(num_permutations, n + m) x (n + m, n + m)`` product. The C2ST trains
``num_folds`` networks per data set for ``num_steps`` full-batch steps each; it is by far the
most expensive check for large ``n`` and ``D`` (an accelerator helps).

References:
    Gretton, A., Borgwardt, K. M., Rasch, M. J., Schölkopf, B. and Smola, A. (2012). A kernel
    two-sample test. *JMLR* 13, 723-773.
    Lopez-Paz, D. and Oquab, M. (2017). Revisiting classifier two-sample tests. *ICLR*.
    Lueckmann, J.-M., Boelts, J., Greenberg, D., Gonçalves, P. and Macke, J. (2021).
    Benchmarking simulation-based inference. *AISTATS*. (The C2ST variant of ``sbi``.)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from amortized_ppl.diagnostics.metrics import (
    SD_RATIO_BOUNDS,
    gaussian_moments_from_draws,
    moment_errors,
)

__all__ = [
    "DistanceReport",
    "c2st",
    "check_draws_finite",
    "compare_to_reference",
    "median_bandwidth",
    "mmd",
    "mmd_test",
]

_SHAPE_ERROR = "{name}: expected shape {expected}, got {got}."
_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 on GPUs: distances cancel large terms
_NUM_FOLDS = 5  # the default of `c2st`, and so of `compare_to_reference`


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def check_draws_finite(draws: Any, name: str = "draws") -> None:
    """Raise if draws ``(..., S, D)`` hold NaN or Inf, naming the data sets that do.

    Eager only: a traced array (inside ``jit``) cannot be inspected and is passed over silently,
    so call this before jitting when the draws come from an untrusted source.

    Args:
        draws: Draws of shape ``(..., S, D)``; the leading axes index data sets.
        name: The argument's name, used in the message.

    Raises:
        ValueError: if any entry is NaN or Inf; the message gives the indices of the offending
            data sets (the first five) and how many there are.
    """
    if isinstance(draws, jax.core.Tracer):
        return
    values = np.asarray(draws)
    if values.ndim < 2 or not np.issubdtype(values.dtype, np.inexact):
        return  # shapes are the shape checks' business; integers cannot be NaN
    is_bad = ~np.all(np.isfinite(values), axis=(-2, -1))
    if not np.any(is_bad):
        return
    if values.ndim == 2:
        raise ValueError(f"{name} holds NaN or Inf values.")
    bad = [tuple(int(i) for i in index) for index in np.argwhere(is_bad)]
    shown = ", ".join(str(index) for index in bad[:5]) + (", ..." if len(bad) > 5 else "")
    raise ValueError(
        f"{name} holds NaN or Inf values in {len(bad)} of {is_bad.size} data sets, at batch "
        f"indices {shown}."
    )


def _as_draws(value: Any, name: str) -> jax.Array:
    value = jnp.asarray(value)
    if value.ndim < 2:
        raise ValueError(_SHAPE_ERROR.format(name=name, expected="(..., S, D)", got=value.shape))
    if not jnp.issubdtype(value.dtype, jnp.floating):
        value = value.astype(jnp.result_type(float))
    return value


def _check_pair(
    x: Any, y: Any, *, min_draws: int, names: tuple[str, str] = ("x", "y"), why: str = ""
) -> tuple[jax.Array, jax.Array]:
    """Check two draw arrays against each other; return them as floating arrays."""
    x, y = _as_draws(x, names[0]), _as_draws(y, names[1])
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same number of dimensions D (last axis); "
            f"got shapes {x.shape} and {y.shape}."
        )
    if x.shape[:-2] != y.shape[:-2]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same leading (data set) axes; got "
            f"{x.shape[:-2]} and {y.shape[:-2]} (from shapes {x.shape} and {y.shape})."
        )
    for value, name in zip((x, y), names):
        if value.shape[-2] < min_draws:
            raise ValueError(
                f"{name}: expected at least {min_draws} draws (axis -2){why}, got "
                f"{value.shape[-2]} (shape {value.shape})."
            )
        check_draws_finite(value, name)
    dtype = jnp.result_type(x.dtype, y.dtype)
    return x.astype(dtype), y.astype(dtype)


def _check_count(value: int, name: str, minimum: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}.")
    return int(value)


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _over_batch(fn: Callable, batch_shape: tuple[int, ...], *arrays: Any) -> Any:
    """Apply ``fn`` (one data set) to every batch element with ``vmap``; keep the batch shape."""
    size = math.prod(batch_shape)
    flat = [a.reshape((size,) + a.shape[len(batch_shape) :]) for a in arrays]
    out = jax.vmap(fn)(*flat)
    return jax.tree.map(lambda o: o.reshape(batch_shape + o.shape[1:]), out)


def _batch_keys(key: PRNGKeyArray, batch_shape: tuple[int, ...]) -> PRNGKeyArray:
    """One key per data set: ``split(key, B)`` over the flattened batch; ``key`` if unbatched."""
    if not batch_shape:
        return key
    keys = jax.random.split(key, math.prod(batch_shape))
    return keys.reshape(batch_shape + keys.shape[1:])


def _random_order(key: PRNGKeyArray, shape: int | tuple[int, ...]) -> jax.Array:
    """Random permutations of ``range(shape[-1])``, independent along leading axes.

    The argsort of uniform draws: one random draw and one sort, which compiles much faster than
    ``jax.random.permutation`` (several sort rounds, each with fresh random bits). Ties among the
    float32 uniforms keep their input order, a bias far below what a permutation test resolves.
    """
    return jnp.argsort(jax.random.uniform(key, shape), axis=-1)


def _standardize(
    x: Float[Array, "n d"], y: Float[Array, "m d"]
) -> tuple[Float[Array, "n d"], Float[Array, "m d"]]:
    """Centre and scale both samples by the reference ``y``'s mean and SD (ddof=1) per dimension.

    A constant reference dimension (SD 0) is only centred: dividing by 0 would turn every
    distance into NaN.
    """
    mean, sd = gaussian_moments_from_draws(y)
    sd = jnp.where(sd > 0, sd, 1.0)
    return (x - mean) / sd, (y - mean) / sd


def _pooled_sq_distances(x: Float[Array, "n d"], y: Float[Array, "m d"]) -> Float[Array, "N N"]:
    """Squared Euclidean distances between all standardized draws of ``[x; y]``, N = n + m."""
    x, y = _standardize(x, y)
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


# ---------------------------------------------------------------------------------------------
# Maximum mean discrepancy
# ---------------------------------------------------------------------------------------------


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
    x, y = _check_pair(x, y, min_draws=2)
    return _median_bandwidth_batched(x, y)


@jax.jit
def _median_bandwidth_batched(x, y):
    return _over_batch(
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
    x, y = _check_pair(x, y, min_draws=2, why=" for the unbiased MMD")
    return _mmd_batched(x, y, _bandwidth_per_dataset(bandwidth, x.shape[:-2]))


@jax.jit
def _mmd_batched(x, y, bandwidths):
    in_x = _first_sample_indicator(x.shape[-2], y.shape[-2], x.dtype)[None]

    def one(xs, ys, *h):
        return _mmd2_one(xs, ys, h[0] if h else None, in_x)[0]

    arrays = (x, y) if bandwidths is None else (x, y, bandwidths)
    return _over_batch(one, x.shape[:-2], *arrays)


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
    num_permutations = _check_count(num_permutations, "num_permutations", 1)
    x, y = _check_pair(x, y, min_draws=2, why=" for the unbiased MMD")
    batch_shape = x.shape[:-2]
    bandwidths = _bandwidth_per_dataset(bandwidth, batch_shape)
    return _mmd_test_batched(
        _batch_keys(key, batch_shape), x, y, bandwidths, num_permutations=num_permutations
    )


@functools.partial(jax.jit, static_argnames="num_permutations")
def _mmd_test_batched(keys, x, y, bandwidths, *, num_permutations):
    observed = _first_sample_indicator(x.shape[-2], y.shape[-2], x.dtype)

    def one(key, xs, ys, *h):
        permuted = observed[_random_order(key, (num_permutations, observed.shape[0]))]
        # Row 0 is the observed split, so statistic and null draws come from the same product.
        stats = _mmd2_one(xs, ys, h[0] if h else None, jnp.concatenate([observed[None], permuted]))
        p_value = (1.0 + jnp.sum(stats[1:] >= stats[0])) / (1.0 + num_permutations)
        return stats[0], p_value.astype(stats.dtype)

    arrays = (keys, x, y) if bandwidths is None else (keys, x, y, bandwidths)
    return _over_batch(one, x.shape[:-2], *arrays)


# ---------------------------------------------------------------------------------------------
# Classifier two-sample test
# ---------------------------------------------------------------------------------------------


class _Classifier(eqx.Module):
    """MLP with two ReLU hidden layers and one logit, on one standardized draw.

    Attributes:
        weights: Shapes ``(H, D)``, ``(H, H)`` and ``(H,)``.
        biases: Shapes ``(H,)``, ``(H,)`` and ``()``.
    """

    weights: tuple[jax.Array, jax.Array, jax.Array]
    biases: tuple[jax.Array, jax.Array, jax.Array]

    def __init__(self, in_size: int, hidden_size: int, *, key: PRNGKeyArray):
        # The initialization of `eqx.nn.Linear`, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights
        # and biases, but from one uniform draw: every separate draw compiles its own threefry
        # hash, which made up most of the compile time of the whole test.
        shapes = [
            (hidden_size, in_size),
            (hidden_size,),
            (hidden_size, hidden_size),
            (hidden_size,),
            (hidden_size,),
            (),
        ]
        fan_ins = [in_size, in_size, hidden_size, hidden_size, hidden_size, hidden_size]
        sizes = [math.prod(shape) for shape in shapes]
        flat = jax.random.uniform(key, (sum(sizes),), minval=-1.0, maxval=1.0)
        parts = jnp.split(flat, np.cumsum(sizes)[:-1])
        params = [
            part.reshape(shape) / math.sqrt(fan_in)
            for part, shape, fan_in in zip(parts, shapes, fan_ins)
        ]
        self.weights = tuple(params[0::2])
        self.biases = tuple(params[1::2])

    def __call__(self, z: Float[Array, " D"]) -> Float[Array, ""]:
        hidden = jax.nn.relu(self.weights[0] @ z + self.biases[0])
        hidden = jax.nn.relu(self.weights[1] @ hidden + self.biases[1])
        return self.weights[2] @ hidden + self.biases[2]


def _fold_accuracy(
    key: PRNGKeyArray,
    z: Float[Array, "N D"],
    labels: Float[Array, " N"],
    is_test: Array,
    *,
    hidden_size: int,
    num_steps: int,
    learning_rate: float,
) -> Float[Array, ""]:
    """Train a fresh classifier full batch on the draws outside the fold; score it on the fold."""
    model = _Classifier(z.shape[-1], hidden_size, key=key)
    optimizer = optax.adam(learning_rate)
    # Masks rather than index sets: every fold then has the same static shapes, so folds vmap.
    train_weight = (~is_test).astype(z.dtype)

    def loss_fn(model):
        logits = jax.vmap(model)(z)
        losses = optax.sigmoid_binary_cross_entropy(logits, labels)
        return jnp.sum(train_weight * losses) / jnp.sum(train_weight)

    def step(carry, _):
        model, opt_state = carry
        grads = jax.grad(loss_fn)(model)
        updates, opt_state = optimizer.update(grads, opt_state, model)
        return (eqx.apply_updates(model, updates), opt_state), None

    (model, _), _ = jax.lax.scan(step, (model, optimizer.init(model)), length=num_steps)
    is_correct = (jax.vmap(model)(z) > 0) == (labels > 0.5)
    return jnp.sum(is_test & is_correct) / jnp.sum(is_test)


def _c2st_folds(key, x, y, *, num_folds):
    """Balance, shuffle and split one data set: keys ``(K,)``, ``z (2k, D)``, labels, test masks.

    Class 1 is ``x`` and class 0 is ``y``, ``k = min(n, m)`` draws each; ``is_test`` is
    ``(K, 2k)``, True on the held-out fold.
    """
    x, y = _standardize(x, y)
    num_per_class = min(x.shape[0], y.shape[0])
    x_key, y_key, fold_key = jax.random.split(key, 3)
    # A random subset of the larger sample balances the classes; shuffling both also makes the
    # contiguous folds below random, and stratified (equal counts of each class per fold).
    x = x[_random_order(x_key, x.shape[0])[:num_per_class]]
    y = y[_random_order(y_key, y.shape[0])[:num_per_class]]
    z = jnp.concatenate([x, y])
    labels = jnp.concatenate([jnp.ones(num_per_class, z.dtype), jnp.zeros(num_per_class, z.dtype)])
    fold_of = jnp.tile(jnp.arange(num_per_class) * num_folds // num_per_class, 2)
    is_test = fold_of[None, :] == jnp.arange(num_folds)[:, None]
    return jax.random.split(fold_key, num_folds), z, labels, is_test


def c2st(
    key: PRNGKeyArray,
    x: Any,
    y: Any,
    *,
    num_folds: int = _NUM_FOLDS,
    hidden_size: int | None = None,
    num_steps: int = 500,
    learning_rate: float = 1e-2,
) -> jax.Array:
    """Classifier two-sample test: cross-validated accuracy of a classifier telling x from y.

    The variant of ``sbi`` (Lueckmann et al., 2021): both samples are standardized by the
    reference ``y``'s mean and SD per dimension, classes are balanced (the larger sample is
    randomly subsampled to the size of the smaller), and an MLP with two ReLU hidden layers of
    ``hidden_size`` units is trained on ``num_folds - 1`` folds and scored on the held-out one.
    Here training is full batch with Adam for a fixed ``num_steps``, and folds are stratified.
    The accuracy is 0.5 when the classifier cannot tell the samples apart, 1 when it always can.

    Args:
        key: PRNG key for subsampling, folds and initialization; data set ``i`` of the flattened
            batch uses ``split(key, B)[i]``, and an unbatched call uses ``key`` itself.
        x: Draws of shape ``(..., n, D)``.
        y: Reference draws of shape ``(..., m, D)``.
        num_folds: Number of cross-validation folds, at least 2; ``n`` and ``m`` must both be at
            least ``2 * num_folds`` so that every held-out fold has two draws of each class.
        hidden_size: Units per hidden layer; ``10 * D`` by default, as in ``sbi``.
        num_steps: Full-batch Adam steps per fold.
        learning_rate: Adam's learning rate.

    Returns:
        Accuracy averaged over folds, shape ``(...)``. With ``k = min(n, m)`` draws per class its
        sampling SD under the null is about ``sqrt(0.25 / (2 k))``, 0.02 for ``k = 300``.

    References:
        Lopez-Paz and Oquab (2017); Lueckmann et al. (2021), Section 3.

    Examples:
        >>> accuracy = c2st(jax.random.key(0), guide_draws, nuts_draws)  # doctest: +SKIP
    """
    num_folds = _check_count(num_folds, "num_folds", 2)
    num_steps = _check_count(num_steps, "num_steps", 1)
    if not learning_rate > 0:
        raise ValueError(f"learning_rate: expected a positive number, got {learning_rate!r}.")
    x, y = _check_pair(
        x, y, min_draws=2 * num_folds, why=f" (2 * num_folds, num_folds={num_folds})"
    )
    if hidden_size is None:
        hidden_size = 10 * x.shape[-1]
    hidden_size = _check_count(hidden_size, "hidden_size", 1)
    return _c2st_batched(
        _batch_keys(key, x.shape[:-2]),
        x,
        y,
        num_folds=num_folds,
        hidden_size=hidden_size,
        num_steps=num_steps,
        learning_rate=float(learning_rate),
    )


@functools.partial(
    jax.jit, static_argnames=("num_folds", "hidden_size", "num_steps", "learning_rate")
)
def _c2st_batched(keys, x, y, *, num_folds, **train_config):
    batch_shape = x.shape[:-2]
    fold_keys, z, labels, is_test = _over_batch(
        functools.partial(_c2st_folds, num_folds=num_folds), batch_shape, keys, x, y
    )
    # One vmap over (data set, fold) pairs, each with its own copy of the draws: XLA compiles
    # this several times faster than a vmap over folds nested in a vmap over data sets.
    flat = math.prod(batch_shape) * num_folds
    z = jnp.broadcast_to(z[..., None, :, :], batch_shape + (num_folds,) + z.shape[-2:])
    labels = jnp.broadcast_to(labels[..., None, :], is_test.shape)
    accuracy = jax.vmap(functools.partial(_fold_accuracy, **train_config))(
        fold_keys.reshape((flat,) + fold_keys.shape[len(batch_shape) + 1 :]),
        z.reshape((flat,) + z.shape[-2:]),
        labels.reshape(flat, -1),
        is_test.reshape(flat, -1),
    )
    return jnp.mean(accuracy.reshape(batch_shape + (num_folds,)), axis=-1)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


class DistanceReport(NamedTuple):
    """How far draws are from reference draws, per data set (and per dimension for moments).

    Attributes:
        mean_error: ``|mean - ref_mean| / ref_sd``, shape ``(..., D)``.
        sd_ratio: ``sd / ref_sd``, shape ``(..., D)``.
        mmd2: Unbiased MMD^2 (median-heuristic Gaussian kernel), shape ``(...)``.
        mmd_p_value: Permutation p-value of the MMD test, shape ``(...)``.
        c2st_accuracy: Classifier two-sample test accuracy (0.5 = indistinguishable), ``(...)``.
    """

    mean_error: jax.Array
    sd_ratio: jax.Array
    mmd2: jax.Array
    mmd_p_value: jax.Array
    c2st_accuracy: jax.Array

    def to_dict(self, *, include_arrays: bool = False) -> dict[str, Any]:
        """Summarize over data sets (and dimensions) as JSON-ready Python floats.

        Medians describe the typical data set, maxima (minima for p-values and SD ratios) the
        worst; ``fraction_sd_ratio_ok`` counts SD ratios inside
        :data:`~amortized_ppl.diagnostics.metrics.SD_RATIO_BOUNDS`. With ``include_arrays``
        the raw arrays are added as nested lists.
        """
        arrays = {name: np.asarray(value) for name, value in self._asdict().items()}
        low, high = SD_RATIO_BOUNDS
        sd_ratio = arrays["sd_ratio"]
        out: dict[str, Any] = {
            "num_datasets": int(arrays["mmd2"].size),
            "median_mean_error": float(np.median(arrays["mean_error"])),
            "max_mean_error": float(np.max(arrays["mean_error"])),
            "median_sd_ratio": float(np.median(sd_ratio)),
            "min_sd_ratio": float(np.min(sd_ratio)),
            "max_sd_ratio": float(np.max(sd_ratio)),
            "fraction_sd_ratio_ok": float(np.mean((sd_ratio >= low) & (sd_ratio <= high))),
            "median_mmd2": float(np.median(arrays["mmd2"])),
            "max_mmd2": float(np.max(arrays["mmd2"])),
            "median_mmd_p_value": float(np.median(arrays["mmd_p_value"])),
            "min_mmd_p_value": float(np.min(arrays["mmd_p_value"])),
            "median_c2st_accuracy": float(np.median(arrays["c2st_accuracy"])),
            "max_c2st_accuracy": float(np.max(arrays["c2st_accuracy"])),
        }
        if include_arrays:
            out.update({name: value.tolist() for name, value in arrays.items()})
        return out


def compare_to_reference(
    key: PRNGKeyArray,
    draws: Any,
    reference: Any,
    *,
    mmd_kwargs: Mapping[str, Any] | None = None,
    c2st_kwargs: Mapping[str, Any] | None = None,
) -> DistanceReport:
    """Compare draws with reference draws per data set: moments, MMD test and C2ST.

    Args:
        key: PRNG key, split between the MMD permutations and the C2ST.
        draws: Draws to judge (e.g. a guide's), shape ``(..., n, D)``.
        reference: Reference draws (e.g. NUTS, chains merged), shape ``(..., m, D)``.
        mmd_kwargs: Keyword arguments for :func:`mmd_test` (``num_permutations``,
            ``bandwidth``).
        c2st_kwargs: Keyword arguments for :func:`c2st` (``num_folds``, ``hidden_size``,
            ``num_steps``, ``learning_rate``).

    Returns:
        A :class:`DistanceReport`; ``report.to_dict()`` is ready for ``json.dumps``.

    Examples:
        >>> guide = flatten_draws(guide_samples, sites, batch_ndim=1)  # doctest: +SKIP
        >>> nuts = flatten_draws(nuts_samples, sites, batch_ndim=1)  # doctest: +SKIP
        >>> report = compare_to_reference(jax.random.key(0), guide, nuts)  # doctest: +SKIP
        >>> print(json.dumps(report.to_dict(), indent=2))  # doctest: +SKIP
    """
    c2st_kwargs = dict(c2st_kwargs or {})
    num_folds = c2st_kwargs.get("num_folds", _NUM_FOLDS)
    # Check the draw counts here too, so that errors name `draws` and `reference`, not x and y.
    min_draws = 2 * num_folds if isinstance(num_folds, int) else 2
    draws, reference = _check_pair(
        draws,
        reference,
        min_draws=min_draws,
        names=("draws", "reference"),
        why=f" (2 * num_folds for the C2ST, num_folds={num_folds})",
    )
    mmd_key, c2st_key = jax.random.split(key)
    ref_mean, ref_sd = gaussian_moments_from_draws(reference)
    mean_error, sd_ratio = moment_errors(draws, ref_mean, ref_sd)
    mmd2, p_value = mmd_test(mmd_key, draws, reference, **dict(mmd_kwargs or {}))
    accuracy = c2st(c2st_key, draws, reference, **c2st_kwargs)
    return DistanceReport(
        mean_error=mean_error,
        sd_ratio=sd_ratio,
        mmd2=mmd2,
        mmd_p_value=p_value,
        c2st_accuracy=accuracy,
    )
