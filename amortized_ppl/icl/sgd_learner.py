"""The learner in-context learners are measured against: an MLP trained by Adam on the prefix.

Prequential coding with a learner that is *trained* rather than conditioned: the data set is cut
at ``boundaries`` ``t_1 < t_2 < ... < n``; the points of block ``[t_b, t_{b+1})`` are coded by an
MLP trained from scratch on the ``t_b`` points before it (full-batch Adam, early stopping on the
prefix's last tenth, whose points are not trained on). The network predicts the mean; the
predictive SD is the validation points' root mean squared error shrunk toward 1 (the scale of
``y``) as if one more point had error 1, ``s^2 = (sum_valid e^2 + 1) / (n_valid + 1)``. A
network that also learned its SD by NLL was measured first and coded catastrophically: early
stopping on a prefix's one or two validation points let it keep SDs far too small, and one
badly predicted point then costs thousands of nats. The first block ``[0, t_1)`` is coded by
a standard normal predictive. Every block's network trains in one
compiled program (``vmap`` over blocks, the prefix as a mask), so the whole code length is one
call. This is the SGD baseline of Elmoznino et al. (2024), whose MLPs (5 hidden layers of 64,
Adam, early stopping) we follow; block coding is what makes retraining affordable, as there.

Written here because the per-prefix retraining under ``vmap`` with masks and early stopping is
specific to prequential coding; the MLP is equinox's and the optimizer optax's.

References:
    Elmoznino, E., et al. (2024). In-context learning and Occam's razor. arXiv:2410.14086.
    Blier, L., Ollivier, Y. (2018). The description length of deep learning models. NeurIPS.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from amortized_ppl._checks import check_int, check_key, check_positive_float
from amortized_ppl.icl.predictor import gaussian_log_density
from amortized_ppl.icl.prequential import PrequentialResult

__all__ = ["SGDLearner", "log_spaced_boundaries", "sgd_prequential_code_length"]


class SGDLearner(NamedTuple):
    """Settings of the trained MLP (defaults: Elmoznino et al.'s 5 x 64, Adam).

    Attributes:
        width, depth: hidden units per layer and hidden layers.
        learning_rate: Adam's step size.
        num_steps: full-batch steps at most; the parameters kept are those of the best
            validation loss seen (early stopping without stopping the compiled loop).
        validation_fraction: the prefix's last share held out for early stopping (at least one
            point).
    """

    width: int = 64
    depth: int = 5
    learning_rate: float = 1e-3
    num_steps: int = 500
    validation_fraction: float = 0.1


def log_spaced_boundaries(n: int, first: int = 5, num_blocks: int = 10) -> np.ndarray:
    """Block starts ``first = t_1 < ... < n``, evenly spaced in log n (the data-set sizes the
    SGD learner is trained on), ints without repeats."""
    n, first = check_int(n, "n", 2), check_int(first, "first")
    if first >= n:
        raise ValueError(f"first: the first block must start before n = {n}, got {first}.")
    points = np.unique(np.round(np.geomspace(first, n, num_blocks + 1)).astype(int))
    return points[points < n]


def _mlp(key, x_dim: int, settings: SGDLearner) -> eqx.nn.MLP:
    return eqx.nn.MLP(x_dim, "scalar", settings.width, settings.depth, activation=jax.nn.gelu,
                      key=key)


def _errors(mlp, x, y):
    return jax.vmap(mlp)(x) - y


def _train_on_prefix(key, x, y, prefix: jax.Array, settings: SGDLearner, optimizer):
    """The MLP trained on ``x[:prefix]`` (rows beyond it masked), early-stopped on its tail,
    and its predictive log-SD (see the module docstring)."""
    n = x.shape[0]
    index = jnp.arange(n)
    num_valid = jnp.maximum(1, jnp.floor(settings.validation_fraction * prefix).astype(int))
    train_mask = index < prefix - num_valid
    valid_mask = (index >= prefix - num_valid) & (index < prefix)
    params, static = eqx.partition(_mlp(key, x.shape[1], settings), eqx.is_inexact_array)

    def masked_mse(p, mask):
        squared = _errors(eqx.combine(p, static), x, y) ** 2
        return jnp.sum(jnp.where(mask, squared, 0.0)) / jnp.maximum(jnp.sum(mask), 1)

    def step(carry, _):
        p, opt_state, best, best_loss = carry
        grads = jax.grad(masked_mse)(p, train_mask)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        p = optax.apply_updates(p, updates)
        loss = masked_mse(p, valid_mask)
        better = loss < best_loss
        best = jax.tree.map(lambda new, old: jnp.where(better, new, old), p, best)
        return (p, opt_state, best, jnp.where(better, loss, best_loss)), None

    start = (params, optimizer.init(params), params, masked_mse(params, valid_mask))
    (_, _, best, best_loss), _ = jax.lax.scan(step, start, None, length=settings.num_steps)
    variance = (best_loss * num_valid + 1.0) / (num_valid + 1.0)
    return eqx.combine(best, static), 0.5 * jnp.log(variance)


@eqx.filter_jit
def _block_codes(key, x, y, boundaries, settings: SGDLearner):
    n = x.shape[0]
    optimizer = optax.adam(settings.learning_rate)
    ends = jnp.concatenate([boundaries[1:], jnp.array([n])])
    index = jnp.arange(n)

    def block(k, start, end):
        mlp, log_scale = _train_on_prefix(k, x, y, start, settings, optimizer)
        log_p = gaussian_log_density(y, jax.vmap(mlp)(x), log_scale)
        return jnp.where((index >= start) & (index < end), -log_p, 0.0)

    keys = jax.random.split(key, boundaries.shape[0])
    coded = jnp.sum(jax.vmap(block)(keys, boundaries, ends), axis=0)
    # The first block: a standard normal predictive.
    first = -gaussian_log_density(y, jnp.zeros_like(y), jnp.zeros_like(y))
    return jnp.where(index < boundaries[0], first, coded)


def sgd_prequential_code_length(
    key, x, y, boundaries, settings: SGDLearner = SGDLearner()
) -> PrequentialResult:
    """Block-wise prequential code length of ``y`` given ``x`` with MLPs trained on each prefix.

    Args:
        key: PRNG key (the networks' initializations).
        x: inputs ``(n, d)``.
        y: outputs ``(n,)``.
        boundaries: increasing block starts in ``[2, n)`` (:func:`log_spaced_boundaries`); a
            network trains on the points before each.
        settings: the :class:`SGDLearner`.

    Returns:
        A :class:`~amortized_ppl.icl.prequential.PrequentialResult` (its ``per_point_nats``
        coded block by block).
    """
    check_key(key, "key")
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim != 2 or y.shape != x.shape[:1]:
        raise ValueError(f"x, y: expected (n, d) and (n,) arrays, got shapes {x.shape} and "
                         f"{y.shape}.")
    if not (bool(jnp.all(jnp.isfinite(x))) and bool(jnp.all(jnp.isfinite(y)))):
        raise ValueError("x, y: NaN or Inf in the data.")
    bounds = np.asarray(boundaries)
    if bounds.ndim != 1 or bounds.size == 0 or np.any(np.diff(bounds) <= 0) or bounds[0] < 2 \
            or bounds[-1] >= x.shape[0]:
        raise ValueError(f"boundaries: expected increasing block starts in [2, {x.shape[0]}), "
                         f"got {bounds.tolist()}.")
    check_int(settings.num_steps, "num_steps")
    check_positive_float(settings.learning_rate, "learning_rate")
    per_point = _block_codes(key, x, y, jnp.asarray(bounds), settings)
    total = jnp.sum(per_point)
    return PrequentialResult(per_point, jnp.cumsum(per_point), total, total / np.log(2.0))
