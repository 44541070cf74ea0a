"""Per-example gradients: non-finite examples left out and counted, outliers' norms clipped.

A training batch of simulated data sets is heavy-tailed. Drawn from a wide prior, a few data
sets sit where the model's density overflows (a noise scale near zero), and their loss or
gradient is infinite or NaN; a few more give losses thousands of times the typical one.
Averaging the batch's loss first lets one such data set poison or steer the whole step (on the
README's unknown-noise regression, ``fit_iterative`` stopped at its first step this way; see
``tests/iterative/test_train.py``). Here every example's
gradient is taken on its own (a ``vmap`` of ``value_and_grad``, which optax and equinox leave to
the caller), examples with a non-finite loss or gradient are dropped and counted, and each
remaining gradient is clipped to a norm of ``max_norm`` before the mean (per-example clipping,
as in DP-SGD, without the noise), so that one outlier moves the parameters at most as much as a
typical example does. Where every example is dropped the gradient is NaN, so an optimizer
wrapped in ``optax.apply_if_finite`` skips the step.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["PerExampleGrad", "per_example_value_and_grad"]


class PerExampleGrad(NamedTuple):
    """The batch's mean loss and gradient over the examples kept.

    Attributes:
        loss: mean loss of the kept examples (NaN if none was kept).
        grads: mean of their clipped gradients (NaN if none was kept).
        num_dropped: examples whose loss or gradient was not finite.
        num_clipped: kept examples whose gradient norm exceeded ``max_norm``.
    """

    loss: jax.Array
    grads: object
    num_dropped: jax.Array
    num_clipped: jax.Array


def per_example_value_and_grad(loss_fn: Callable, max_norm: float | None = 1.0) -> Callable:
    """``fn(params, keys) -> PerExampleGrad`` from ``loss_fn(params, key) -> scalar`` (one
    example per key).

    Args:
        loss_fn: the loss of one example (e.g. one simulated data set drawn with ``key``).
        max_norm: each example's gradient is scaled down to at most this global norm (None: no
            clipping).
    """

    def fn(params, keys) -> PerExampleGrad:
        losses, grads = jax.vmap(jax.value_and_grad(loss_fn), in_axes=(None, 0))(params, keys)
        leaves = jax.tree.leaves(grads)
        finite = jnp.isfinite(losses)
        for leaf in leaves:
            finite &= jnp.all(jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1)
        norms = jnp.sqrt(sum(jnp.sum(leaf.reshape(leaf.shape[0], -1) ** 2, axis=1)
                             for leaf in leaves))
        factor = (jnp.ones_like(norms) if max_norm is None
                  else jnp.minimum(1.0, max_norm / jnp.maximum(norms, 1e-30)))
        weight = jnp.where(finite, factor, 0.0)
        count = jnp.sum(finite)
        # Where nothing is kept the mean is 0 / 0 = NaN on purpose: apply_if_finite skips it.
        denominator = count.astype(losses.dtype)

        def mean(leaf):
            w = weight.reshape((-1,) + (1,) * (leaf.ndim - 1)).astype(leaf.dtype)
            return jnp.sum(jnp.where(w > 0, leaf, 0.0) * w, axis=0) / denominator

        loss = jnp.sum(jnp.where(finite, losses, 0.0)) / denominator
        clipped = finite & (factor < 1.0)
        return PerExampleGrad(loss, jax.tree.map(mean, grads), jnp.sum(~finite),
                              jnp.sum(clipped))

    return fn

