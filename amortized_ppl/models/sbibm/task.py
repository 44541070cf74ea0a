"""A benchmark task: a NumPyro model with one latent vector ``theta``, and its reference sampler.

The sbibm tasks (Lueckmann et al. 2021, "Benchmarking simulation-based inference") are written
here as NumPyro models from their published definitions: the latent site is ``theta``
(``(theta_dim,)``), the observed site ``x`` sits in a plate ``"data"`` of ``num_obs`` rows of
``x_dim`` numbers (one row for most tasks, as sbibm defines them; slcp's four draws are four rows, a
set). Simulation is the model's own prior predictive; the reference posterior is computed here,
never downloaded: in closed form where the task allows, otherwise by NUTS with its convergence
checked (a failed check raises :class:`ReferenceCheckError`).

The ten observations per task are the model's prior predictive at keys
``fold_in(key(OBSERVATION_SEED), task index * 100 + observation index)``: ours, documented and
fixed, not sbibm's files (which are downloads), so per-observation figures are comparable in
kind, not draw for draw, with the published ones.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.infer import Predictive

from amortized_ppl._checks import check_int, check_key

__all__ = [
    "NUM_OBSERVATIONS",
    "OBSERVATION_SEED",
    "ReferenceCheckError",
    "Task",
    "check_observation",
    "check_nuts",
    "observation",
    "one_row",
    "plate_size",
    "reference_draws",
    "rejection",
    "simulate",
]

OBSERVATION_SEED = 20261207
NUM_OBSERVATIONS = 10


class ReferenceCheckError(RuntimeError):
    """A reference sampler failed its own checks (R-hat, divergences, mode coverage)."""


class Task(NamedTuple):
    """One benchmark task.

    Attributes:
        name: the sbibm name, e.g. ``"two_moons"``.
        index: the task's place in the registry (it seeds the observations).
        model: ``model(x=None, num_obs=...)``, latent ``theta``, observed ``x``
            ``(num_obs, x_dim)``.
        theta_dim, x_dim, num_obs: sizes as the task defines them.
        reference: ``reference(key, x, num_samples) -> (num_samples, theta_dim)`` posterior draws
            for one observation ``x`` (``(num_obs, x_dim)``); raises :class:`ReferenceCheckError`
            when its checks fail.
        exact: whether the reference is exact (closed form or exact rejection) rather than MCMC.
    """

    name: str
    index: int
    model: Callable
    theta_dim: int
    x_dim: int
    num_obs: int
    reference: Callable
    exact: bool


def check_observation(task: Task, x) -> jax.Array:
    """``x`` as a float array of the task's shape ``(num_obs, x_dim)``, or ``ValueError`` naming
    the task, the shape expected and the one given, or the NaN/Inf."""
    x = jnp.asarray(x, dtype=float)
    expected = (task.num_obs, task.x_dim)
    if x.shape != expected:
        raise ValueError(f"{task.name}: an observation has shape {expected} (num_obs, x_dim); "
                         f"got {x.shape}.")
    if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"{task.name}: the observation contains NaN or Inf.")
    return x


def simulate(key: jax.Array, task: Task, num_simulations: int) -> tuple[jax.Array, jax.Array]:
    """``(theta (n, theta_dim), x (n, num_obs, x_dim))`` from the task's prior predictive."""
    key = check_key(key, "key")
    num_simulations = check_int(num_simulations, "num_simulations")
    draws = Predictive(task.model, num_samples=num_simulations)(key)
    return draws["theta"], draws["x"]


def observation(task: Task, index: int) -> tuple[jax.Array, jax.Array]:
    """Observation ``index`` (0-9) of the task: ``(theta_true, x)`` (see the module)."""
    index = check_int(index, "index", 0)
    if index >= NUM_OBSERVATIONS:
        raise ValueError(f"index: the tasks have {NUM_OBSERVATIONS} observations (0-"
                         f"{NUM_OBSERVATIONS - 1}); got {index}.")
    key = jax.random.fold_in(jax.random.key(OBSERVATION_SEED), task.index * 100 + index)
    with handlers.block():
        trace = handlers.trace(handlers.seed(task.model, key)).get_trace()
    return trace["theta"]["value"], trace["x"]["value"]


def reference_draws(key: jax.Array, task: Task, x, num_samples: int) -> jax.Array:
    """The task's reference posterior draws ``(num_samples, theta_dim)`` for observation ``x``,
    checked: the observation's shape and values before, finite draws after."""
    key = check_key(key, "key")
    num_samples = check_int(num_samples, "num_samples")
    draws = task.reference(key, check_observation(task, x), num_samples)
    if draws.shape != (num_samples, task.theta_dim) or not bool(jnp.all(jnp.isfinite(draws))):
        raise ReferenceCheckError(f"{task.name}: the reference gave draws of shape {draws.shape}"
                                  f" (expected {(num_samples, task.theta_dim)}) or non-finite "
                                  "values.")
    return draws


def check_nuts(task_name: str, result, *, rhat_threshold: float = 1.01,
               max_divergent_fraction: float = 1e-3) -> None:
    """Raise :class:`ReferenceCheckError` when a NUTS reference's split R-hat exceeds
    ``rhat_threshold`` at any coordinate, or more than ``max_divergent_fraction`` of its
    post-warm-up transitions diverged (a handful in 10,000 at a boundary of the prior's box is
    tolerated; more means a region the sampler does not explore)."""
    worst = max(float(np.max(v)) for v in result.rhat.values())
    if not worst <= rhat_threshold:
        raise ReferenceCheckError(f"{task_name}: the NUTS reference did not converge (split R-hat "
                                  f"{worst:.3f} > {rhat_threshold}); run longer chains.")
    transitions = int(np.prod(next(iter(result.samples.values())).shape[:2]))
    if result.num_divergent > max_divergent_fraction * transitions:
        raise ReferenceCheckError(
            f"{task_name}: the NUTS reference had {result.num_divergent} divergent transitions "
            f"of {transitions} after warm-up (more than {max_divergent_fraction:.1%}); its draws "
            "are not trusted.")


def plate_size(task_name: str, x, num_obs: int | None, x_dim: int) -> int:
    """The plate size: ``x``'s rows when given (checked to be ``(n, x_dim)``), else ``num_obs``."""
    if x is None:
        if num_obs is None:
            raise ValueError(f"{task_name}: pass the observations x, or num_obs to simulate.")
        return int(num_obs)
    if jnp.ndim(x) != 2 or jnp.shape(x)[1] != x_dim:
        raise ValueError(f"{task_name}: x must have shape (num_obs, {x_dim}); got "
                         f"{jnp.shape(x)}.")
    return int(jnp.shape(x)[0])


def rejection(key: jax.Array, sample: Callable, accept: Callable, num_samples: int,
              task_name: str, *, max_rounds: int = 50) -> jax.Array:
    """Exact draws by rejection: ``sample(key, (m,))`` proposals kept where ``accept`` holds, in
    rounds of ``2 num_samples`` proposals; :class:`ReferenceCheckError` when ``max_rounds`` rounds
    do not give ``num_samples`` (an observation the prior can hardly have produced)."""
    num_samples = check_int(num_samples, "num_samples")
    out, count = [], 0
    for _ in range(max_rounds):
        key, sub = jax.random.split(key)
        draws = sample(sub, (2 * num_samples,))
        keep = draws[accept(draws)]
        out.append(keep)
        count += keep.shape[0]
        if count >= num_samples:
            return jnp.concatenate(out)[:num_samples]
    raise ReferenceCheckError(
        f"{task_name}: rejection kept {count} of {2 * num_samples * max_rounds} proposals, fewer "
        f"than the {num_samples} asked for; is the observation one the prior can produce?")


def one_row(task_name: str, x, x_dim: int) -> jax.Array:
    """``x`` (``(1, x_dim)``) as its one row, or ``ValueError``: the task's reference is defined
    for one row, as sbibm's is."""
    x = jnp.asarray(x)
    if x.shape != (1, x_dim):
        raise ValueError(f"{task_name}: the reference takes one row (1, {x_dim}); got "
                         f"{x.shape}.")
    return x[0]
