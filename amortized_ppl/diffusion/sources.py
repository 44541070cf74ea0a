"""Where RTB's off-policy terminal states come from: a prioritized replay buffer, or the joint.

Relative trajectory balance holds for trajectories from any full-support distribution, so besides
its own (exploratory) trajectories RTB trains on terminal states ``x_N`` drawn from an
*off-policy source* and turned into whole trajectories by the fixed noising kernel. A source is
three pure functions, in the style of optax's ``GradientTransformation``; its state is returned,
never mutated, and lives in the training state:

- ``init(dim, dtype) -> state``;
- ``sample(key, state, num) -> SourceDraw(x (num, d), cond (num, m) | None, valid (num,))``:
  terminal states, the observations they go with (``None`` for a posterior of one observation),
  and which rows are real (an empty buffer returns placeholder rows marked invalid);
- ``add(state, x (B, d), log_reward (B,)) -> state``: offer the states the training step reached,
  with their tempered log reward ``beta log r(x)``.

Two sources:

- :func:`prioritized_replay`: the states exploration found, kept in a ring buffer and drawn by
  rank-based priority of their log target density (Sendera et al., 2024) — RTB for one
  observation;
- :func:`joint_samples`: simulated pairs ``(x, y) ~ p(x) p(y | x)``, for RTB amortized over
  observations: each ``x`` is an exact posterior draw for its own ``y``, so it replaces the
  buffer, and its ``y`` conditions the step's trajectories. Nothing is stored.

The training kernel only calls ``sample`` and ``add``; whether RTB is amortized is read from the
data (``draw.cond is None`` or not), never from a flag.

References:
    Sendera, M., Kim, M., Mittal, S., et al. (2024). Improved off-policy training of diffusion
    samplers. *NeurIPS*.
    Venkatraman, S., Jain, M., Scimeca, L., et al. (2024). Amortizing intractable inference in
    diffusion models for vision, language, and control. *NeurIPS*.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from amortized_ppl._checks import check_int, check_positive_float
from amortized_ppl.diffusion.buffer import buffer_add, buffer_init, buffer_sample

__all__ = ["OffPolicySource", "SourceDraw", "joint_samples", "prioritized_replay"]


class SourceDraw(NamedTuple):
    """Terminal states drawn from an off-policy source.

    Attributes:
        x: ``(num, d)`` terminal states.
        cond: ``(num, m)`` observations each state goes with, or ``None`` (one observation).
        valid: ``(num,)`` bool; False marks placeholder rows (an empty buffer), which the loss
            masks out.
    """

    x: jax.Array
    cond: jax.Array | None
    valid: jax.Array


class OffPolicySource(NamedTuple):
    """An off-policy source of terminal states: ``init``, ``sample``, ``add`` (see the module).

    Attributes:
        init: ``init(dim, dtype) -> state``.
        sample: ``sample(key, state, num) -> SourceDraw``.
        add: ``add(state, x (B, d), log_reward (B,)) -> state``; non-finite rewards are dropped.
    """

    init: Callable[[int, Any], Any]
    sample: Callable[[jax.Array, Any, int], SourceDraw]
    add: Callable[[Any, jax.Array, jax.Array], Any]


def prioritized_replay(capacity: int = 4096, priority: float = 0.01, *,
                       log_prior_fn: Callable | None = None) -> OffPolicySource:
    """A ring buffer of explored terminal states, drawn by rank-based priority.

    States are ranked by ``log_prior_fn(x) + beta log r(x)`` (the log target density up to a
    constant), or by ``beta log r(x)`` alone without ``log_prior_fn``. The state is a
    :class:`~amortized_ppl.diffusion.buffer.ReplayBuffer`.

    Args:
        capacity: Slots (a training step offers ``batch_size + backtrack_size`` states; first
            in, first out).
        priority: Rank-priority constant (small: favour the best states; large: nearly uniform).
        log_prior_fn: Optional ``(x (B, d)) -> (B,)`` prior log density.

    Examples:
        >>> source = prioritized_replay(4096, log_prior_fn=problem.prior.log_prob)  # doctest: +SKIP
        >>> algorithm = build_rtb(key, drift, schedule, log_r, source=source)  # doctest: +SKIP
    """
    capacity = check_int(capacity, "capacity")
    priority = check_positive_float(priority, "priority")
    if log_prior_fn is not None and not callable(log_prior_fn):
        raise TypeError(f"log_prior_fn: expected a callable or None, got {log_prior_fn!r}.")

    def init(dim, dtype=None):
        return buffer_init(capacity, dim, dtype)

    def sample(key, state, num):
        x, _ = buffer_sample(key, state, num, priority)
        return SourceDraw(x, None, jnp.broadcast_to(state.count > 0, (num,)))

    def add(state, x, log_reward):
        score = log_reward if log_prior_fn is None else log_reward + log_prior_fn(x)
        return buffer_add(state, x, score)

    return OffPolicySource(init, sample, add)


def joint_samples(sample_pair_fn: Callable) -> OffPolicySource:
    """Simulated pairs from the joint ``p(x) p(y | x)``: the source of amortized RTB.

    ``sample_pair_fn(key, num) -> (x (num, d), y (num, m))`` (e.g.
    ``amortized_ppl.models.inverse_problems.joint_sampler(problem)``). Each draw is fresh; ``add``
    keeps nothing and the state is ``()``.
    """
    if not callable(sample_pair_fn):
        raise TypeError(f"sample_pair_fn: expected a callable (key, num) -> (x, y), got "
                        f"{sample_pair_fn!r}.")

    def init(dim, dtype=None):
        del dim, dtype
        return ()

    def sample(key, state, num):
        del state
        x, y = sample_pair_fn(key, num)
        if (jnp.ndim(x) != 2 or jnp.ndim(y) != 2 or jnp.shape(x)[0] != num
                or jnp.shape(y)[0] != num):
            raise ValueError(
                f"sample_pair_fn: expected (x ({num}, d), y ({num}, m)), got shapes "
                f"{jnp.shape(x)} and {jnp.shape(y)}."
            )
        return SourceDraw(x, y, jnp.ones((num,), bool))

    def add(state, x, log_reward):
        del x, log_reward
        return state

    return OffPolicySource(init, sample, add)
