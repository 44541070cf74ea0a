"""Prequential code length: the bits a learner needs to transmit a data set point by point.

For data ``d_1..d_n`` (inputs ``x_i`` given to both ends, outputs ``y_i`` coded) and a learner
``T`` that predicts from a prefix, the prequential code length is

    ``L_preq(D) = sum_i -log p_T(y_i | x_i, d_<i)``    (nats; divide by ``log 2`` for bits).

It measures data fit plus model complexity; training next-point prediction minimises its
expectation, which is why in-context learners are Occam learners. For an exact Bayesian model the
chain rule gives ``L_preq(D) = -log p(y_1..n | x_1..n)``, the negative log evidence, whatever
the order of the points: a test oracle for any implementation.

Any predictor of the protocol in :mod:`amortized_ppl.icl.predictor` works: prefix ``i`` is the
whole data set with ``context_mask = arange(n) < i``, so one compiled call (``vmap`` over ``i``)
codes every point.

References:
    Dawid, A. P. (1984). Present position and potential developments: some personal views.
    Statistical theory: the prequential approach. JRSS A 147(2).
    Elmoznino, E., et al. (2024). In-context learning and Occam's razor. arXiv:2410.14086.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from amortized_ppl.icl.predictor import LogPredictiveFn

__all__ = ["PrequentialResult", "prequential_code_length"]


class PrequentialResult(NamedTuple):
    """Prequential code length of one data set of ``n`` points (or a batch, with leading axes).

    Attributes:
        per_point_nats: ``(n,)``, ``-log p(y_i | x_i, d_<i)``.
        curve_nats: ``(n,)``, the cumulative code length after ``i + 1`` points.
        total_nats: ``()``, the sum.
        total_bits: ``()``, the sum in bits.
    """

    per_point_nats: jax.Array
    curve_nats: jax.Array
    total_nats: jax.Array
    total_bits: jax.Array


def prequential_code_length(log_predictive: LogPredictiveFn, x, y) -> PrequentialResult:
    """Code ``y`` point by point with ``log_predictive`` reading every earlier point.

    Args:
        log_predictive: a predictor (``(context_x, context_y, context_mask, query_x, query_y)
            -> (m,)`` log densities) that ignores masked-out context rows.
        x: inputs, ``(n, d)``.
        y: outputs, ``(n,)``.

    Returns:
        A :class:`PrequentialResult`; map over data sets with ``jax.vmap``.

    Examples:
        >>> from amortized_ppl.icl.predictor import bayesian_linear_predictor
        >>> x, y = jnp.ones((4, 1)), jnp.zeros(4)
        >>> result = prequential_code_length(bayesian_linear_predictor(0.5), x, y)
        >>> result.per_point_nats.shape
        (4,)
    """
    if not callable(log_predictive):
        raise TypeError(
            f"log_predictive: expected a callable (context_x, context_y, context_mask, query_x, "
            f"query_y) -> log densities, got {type(log_predictive).__name__}."
        )
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"x: expected an (n, d) array with n >= 1, got shape {x.shape}.")
    if y.shape != x.shape[:1]:
        raise ValueError(f"y: expected shape ({x.shape[0]},) to match x, got shape {y.shape}.")
    num_points = x.shape[0]

    def code_point(i):
        mask = jnp.arange(num_points) < i
        query_x = jax.lax.dynamic_slice_in_dim(x, i, 1)
        query_y = jax.lax.dynamic_slice_in_dim(y, i, 1)
        log_prob = log_predictive(x, y, mask, query_x, query_y)
        if jnp.shape(log_prob) != (1,):
            raise ValueError(
                f"log_predictive: expected (m,) log densities, one per query, got shape "
                f"{jnp.shape(log_prob)} for m = 1."
            )
        return -log_prob[0]

    per_point = jax.vmap(code_point)(jnp.arange(num_points))
    curve = jnp.cumsum(per_point)
    return PrequentialResult(per_point, curve, curve[-1], curve[-1] / math.log(2.0))
