"""Passes over a data set held in memory: shuffled mini-batches and the scanned update.

Each pass visits every observation once, in a fresh random order (sampling without replacement,
"random reshuffling"): that is what makes the pass average of the natural-gradient update exact for
linear-Gaussian models. A pass has ``P = ceil(N / m)`` mini-batches; the last one is padded and
masked. Only one mini-batch is gathered at a time, so the memory beyond the data array is the
order of one pass (``N`` int32) plus a mini-batch.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from amortized_ppl._checks import check_int

__all__ = ["batch_at", "pass_order", "run_passes", "steps_per_pass"]


def steps_per_pass(num_positions: int, batch_size: int) -> int:
    """``P = ceil(N / m)``: mini-batches in one pass over ``N`` positions."""
    return -(-int(num_positions) // int(batch_size))


def pass_order(key: jax.Array, num_positions: int, batch_size: int) -> jax.Array:
    """A random order of ``range(N)``, padded with -1 to ``P * m`` entries (``(P * m,)`` int32)."""
    total = steps_per_pass(num_positions, batch_size) * int(batch_size)
    order = jax.random.permutation(key, int(num_positions)).astype(jnp.int32)
    return jnp.concatenate([order, -jnp.ones((total - int(num_positions),), jnp.int32)])


def batch_at(order: jax.Array, j: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Positions ``(m,)`` of mini-batch ``j`` of a pass and whether each is real (``(m,)`` bool)."""
    chunk = jax.lax.dynamic_slice(order, (j * batch_size,), (batch_size,))
    valid = chunk >= 0
    return jnp.where(valid, chunk, 0), valid


def run_passes(
    key: jax.Array,
    step_fn: Callable,
    network: Any,
    state,
    arguments: dict,
    mask: jax.Array,
    take_fn: Callable,
    *,
    batch_size: int,
    num_passes: int,
):
    """Refine ``state`` over ``num_passes`` shuffled passes of one data set (jittable, vmappable).

    Args:
        key: PRNG key.
        step_fn: the kernel's ``step``.
        network: the update network.
        state: an ``IterativeState``.
        arguments: the model's bound arguments for the data set (``N`` observations).
        mask: ``(N,)`` bool, False for padded observations.
        take_fn: ``(arguments, positions (m,)) -> mini-batch arguments``.
        batch_size: ``m`` (at most ``N``).
        num_passes: number of passes.

    Returns:
        The final state and the per-step infos, each of shape ``(num_passes, P)``.
    """
    # Checked here, under every state's passes: zero passes would return the start unchanged, as
    # if it were refined.
    batch_size = check_int(batch_size, "batch_size")
    num_passes = check_int(num_passes, "num_passes")
    num_positions = mask.shape[0]
    num_steps = steps_per_pass(num_positions, batch_size)

    def one_pass(state, pass_key):
        order_key, step_key = jax.random.split(pass_key)
        order = pass_order(order_key, num_positions, batch_size)

        def one_step(state, inputs):
            j, step_key = inputs
            positions, valid = batch_at(order, j, batch_size)
            batch = take_fn(arguments, positions)
            return step_fn(step_key, network, state, batch, valid & mask[positions], num_steps)

        steps = (jnp.arange(num_steps), jax.random.split(step_key, num_steps))
        return jax.lax.scan(one_step, state, steps)

    return jax.lax.scan(one_pass, state, jax.random.split(key, num_passes))
