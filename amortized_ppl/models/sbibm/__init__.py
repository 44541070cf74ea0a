"""The sbibm benchmark tasks (Lueckmann et al. 2021) as NumPyro models, with references.

``TASKS`` maps each name to a :class:`~amortized_ppl.models.sbibm.task.Task`; :func:`get_task`
refuses an unknown name with the list of known ones. Each task's model has the latent ``theta``
and the observed ``x`` (``(num_obs, x_dim)``); its reference sampler is computed here (closed
form, exact rejection, or NUTS with its checks; slcp's four modes by symmetry completion).

    >>> task = get_task("two_moons")
    >>> theta_true, x = observation(task, 0)
    >>> draws = reference_draws(jax.random.key(0), task, x, 10_000)   # (10000, 2)

Not included: lotka_volterra and sir (they need an ODE solver).
"""

from __future__ import annotations

from amortized_ppl.models.sbibm import (
    bernoulli_glm,
    gaussian_linear,
    gaussian_mixture,
    slcp,
    slcp_distractors,
    two_moons,
)
from amortized_ppl.models.sbibm.task import (
    NUM_OBSERVATIONS,
    OBSERVATION_SEED,
    ReferenceCheckError,
    Task,
    check_observation,
    observation,
    reference_draws,
    simulate,
)

__all__ = [
    "NUM_OBSERVATIONS",
    "OBSERVATION_SEED",
    "ReferenceCheckError",
    "TASKS",
    "Task",
    "check_observation",
    "get_task",
    "observation",
    "reference_draws",
    "simulate",
]


def _tasks() -> dict[str, Task]:
    rows = [
        ("gaussian_linear", gaussian_linear.model, 10, 10, 1, gaussian_linear.reference, True),
        ("gaussian_linear_uniform", gaussian_linear.model_uniform, 10, 10, 1,
         gaussian_linear.reference_uniform, True),
        ("gaussian_mixture", gaussian_mixture.model, 2, 2, 1, gaussian_mixture.reference, True),
        ("two_moons", two_moons.model, 2, 2, 1, two_moons.reference, True),
        ("slcp", slcp.model, 5, 2, 4, slcp.reference, False),
        ("slcp_distractors", slcp_distractors.model, 5, slcp_distractors.X_DIM, 1,
         slcp_distractors.reference, False),
        ("bernoulli_glm", bernoulli_glm.model, 10, 10, 1, bernoulli_glm.reference, False),
    ]
    return {name: Task(name, index, *rest) for index, (name, *rest) in enumerate(rows)}


TASKS = _tasks()


def get_task(name: str) -> Task:
    """The task called ``name``, or ``ValueError`` listing the known names."""
    if name not in TASKS:
        raise ValueError(f"Unknown sbibm task {name!r}; known: {sorted(TASKS)}.")
    return TASKS[name]
