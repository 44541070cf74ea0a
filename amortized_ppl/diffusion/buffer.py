"""A fixed-size replay buffer of terminal states, sampled with rank-based priority.

Off-policy diffusion samplers replay good terminal states ``x_N`` that exploration found, so that
modes reached once keep being trained on (Sendera et al., 2024). The buffer is a ring of
``capacity`` slots (first in, first out) that stores each state with a score (its log target
density, or log reward); sampling picks a slot with probability proportional to
``1 / (priority * capacity + rank)``, where rank 0 is the best score (rank-based prioritization,
Tripp et al., 2020): a small ``priority`` favours the best states, a large one is nearly uniform.

Everything is a pure function on a :class:`ReplayBuffer` pytree, so it lives inside a jitted
training step; :func:`~amortized_ppl.diffusion.sources.prioritized_replay` wraps it as RTB's
off-policy source. Every array of a buffer stays finite (empty slots hold zeros and are told
apart by ``count``), as the training driver's non-finite policy asks of a state.

References:
    Sendera, M., Kim, M., Mittal, S., et al. (2024). Improved off-policy training of diffusion
    samplers. *NeurIPS*.
    Tripp, A., Daxberger, E., Hernández-Lobato, J. M. (2020). Sample-efficient optimization in the
    latent space of deep generative models via weighted retraining. *NeurIPS*.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from amortized_ppl._checks import check_int

__all__ = ["ReplayBuffer", "buffer_add", "buffer_init", "buffer_sample"]


class ReplayBuffer(NamedTuple):
    """Stored states and scores.

    Slots fill in order, so slots ``0 .. count - 1`` are the filled ones.

    Attributes:
        states: ``(capacity, d)``; zeros in empty slots.
        scores: ``(capacity,)``; zeros in empty slots (finite, so the state is finite).
        count: Number of filled slots (at most ``capacity``), an int32 scalar.
        position: Next slot to write, an int32 scalar.
    """

    states: jax.Array
    scores: jax.Array
    count: jax.Array
    position: jax.Array


def buffer_init(capacity: int, dim: int, dtype=None) -> ReplayBuffer:
    """An empty buffer of ``capacity`` states in ``R^dim``."""
    capacity = check_int(capacity, "capacity")
    dim = check_int(dim, "dim")
    dtype = jnp.result_type(float) if dtype is None else dtype
    return ReplayBuffer(
        jnp.zeros((capacity, dim), dtype),
        jnp.zeros((capacity,), dtype),
        jnp.zeros((), jnp.int32),
        jnp.zeros((), jnp.int32),
    )


def buffer_add(buffer: ReplayBuffer, states, scores) -> ReplayBuffer:
    """Write ``states (B, d)`` with ``scores (B,)`` over the oldest slots; non-finite scores skip.

    A state whose score is NaN or ``-inf`` is not stored (its slot keeps its old content), so a
    failed reward never enters the buffer. First in, first out: when one call brings more
    storable states than the capacity, the last ``capacity`` of them are kept.
    """
    capacity = buffer.scores.shape[0]
    keep = jnp.isfinite(scores)
    # Slots for the kept states only, in order, so skipped ones do not leave holes; states that
    # later ones of the same call would overwrite are dropped, so no two share a slot.
    offsets = jnp.cumsum(keep) - 1
    added = jnp.sum(keep).astype(jnp.int32)
    write = keep & (offsets >= added - capacity)
    slots = jnp.where(write, (buffer.position + offsets) % capacity, capacity)  # capacity: dropped
    new_states = buffer.states.at[slots].set(states.astype(buffer.states.dtype), mode="drop")
    new_scores = buffer.scores.at[slots].set(scores.astype(buffer.scores.dtype), mode="drop")
    return ReplayBuffer(
        new_states,
        new_scores,
        jnp.minimum(buffer.count + added, capacity),
        (buffer.position + added) % capacity,
    )


def buffer_sample(key: jax.Array, buffer: ReplayBuffer, num: int, priority: float = 0.01):
    """Draw ``num`` stored states (with replacement) by rank-based priority.

    Returns ``(states (num, d), scores (num,))``. An empty buffer gives zeros with score
    ``-inf``; callers check ``buffer.count`` first.
    """
    capacity = buffer.scores.shape[0]
    filled = jnp.arange(capacity) < buffer.count
    scores = jnp.where(filled, buffer.scores, -jnp.inf)
    order = jnp.argsort(-scores)  # empty slots (-inf) last
    ranks = jnp.empty_like(order).at[order].set(jnp.arange(capacity))
    logits = jnp.where(filled, -jnp.log(priority * capacity + ranks.astype(scores.dtype)),
                       -jnp.inf)
    # An empty buffer: uniform over slots, never NaN probabilities.
    logits = jnp.where(buffer.count > 0, logits, 0.0)
    idx = jax.random.categorical(key, logits, shape=(num,))
    return buffer.states[idx], scores[idx]
