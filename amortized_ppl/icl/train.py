"""Train in-context learners on fresh tasks: a pure init/step kernel, ``fit_icl`` and evaluation.

Each step draws a batch of tasks (:func:`~amortized_ppl.icl.tasks.sample_tasks`), predicts every
real query from its task's context and takes one optax step on

- ``objective="nll"``: the mean Gaussian negative log predictive density of the queries (the
  expected prequential code of a query, what an Occam learner minimises), or
- ``objective="mse"``: the mean squared error of the predictive mean (the noise-free comparison),
- ``objective="train_risk"``: the NLL of the context's own points, each predicted from a context
  that holds it (Elmoznino et al.'s train-risk ICL: it learns to fit what it has seen, not to
  predict the next point, and its prequential code is longer at small n),

plus, for an :class:`~amortized_ppl.icl.explicit.ExplicitLearner`, ``probe_weight`` times the
probe's mean squared error against the true task latent (the probe reads ``stop_gradient(z)``,
so this term trains the probe only). Steps run on the one driver,
:func:`amortized_ppl.loop.run_chunked_loop`.

References:
    Mittal, S., et al. (2024). Does learning the right latent variables necessarily improve
    in-context learning? arXiv:2405.19162.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from amortized_ppl._checks import check_int
from amortized_ppl.icl.explicit import ExplicitLearner
from amortized_ppl.icl.iterative import IterativeExplicitLearner
from amortized_ppl.icl.predictor import gaussian_log_density
from amortized_ppl.icl.tasks import QUERY_SHIFTS, TaskBatch, TaskFamily, sample_tasks
from amortized_ppl.loop import run_chunked_loop
from amortized_ppl.train import skip_nonfinite, warmup_cosine_schedule

__all__ = [
    "OBJECTIVES",
    "ICLFitResult",
    "ICLTrainInfo",
    "ICLTrainState",
    "build_icl_train_kernel",
    "evaluate_learner",
    "fit_icl",
    "icl_loss",
]

OBJECTIVES = ("nll", "mse", "train_risk")


class ICLTrainState(NamedTuple):
    """Learner parameters (the inexact arrays), optimizer state, step count ``()``."""

    params: Any
    opt_state: Any
    step: jax.Array


class ICLTrainInfo(NamedTuple):
    """Per-step diagnostics, each ``()``: the loss, the query MSE and NLL, the probe's MSE (NaN
    for learners without a probe) and the gradient norm."""

    loss: jax.Array
    mse: jax.Array
    nll: jax.Array
    probe_mse: jax.Array
    grad_norm: jax.Array


class ICLFitResult(NamedTuple):
    """What :func:`fit_icl` returns: the trained learner, the final state, the stacked
    :class:`ICLTrainInfo` of every step, the wall time (compilation included) and why the loop
    stopped."""

    learner: Any
    state: ICLTrainState
    infos: ICLTrainInfo
    seconds: float
    reason: str


def _masked_mean(values, mask):
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def icl_loss(learner, batch: TaskBatch, *, objective: str = "nll", probe_weight: float = 1.0):
    """The training loss of ``learner`` on a batch, and ``(mse, nll, probe_mse)``.

    Args:
        learner: a learner, ``learner(context_x, context_y, context_mask, query_x) ->
            (mean, log_scale)`` on one task.
        batch: a :class:`~amortized_ppl.icl.tasks.TaskBatch`.
        objective: one of :data:`OBJECTIVES`.
        probe_weight: weight of the probe's MSE (explicit learners only).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {OBJECTIVES}, got {objective!r}.")
    if objective == "train_risk":  # the queries are the context's own points
        batch = batch._replace(query_x=batch.context_x, query_y=batch.context_y,
                               query_mask=batch.context_mask)
    mean, log_scale = jax.vmap(learner)(
        batch.context_x, batch.context_y, batch.context_mask, batch.query_x
    )
    mse = _masked_mean((mean - batch.query_y) ** 2, batch.query_mask)
    nll = -_masked_mean(gaussian_log_density(batch.query_y, mean, log_scale), batch.query_mask)
    loss = mse if objective == "mse" else nll
    probe_mse = jnp.full((), jnp.nan)
    if isinstance(learner, ExplicitLearner | IterativeExplicitLearner):
        guess = jax.vmap(learner.probe_latent)(batch.context_x, batch.context_y, batch.context_mask)
        probe_mse = jnp.mean((guess - batch.latent) ** 2)
        loss = loss + probe_weight * probe_mse
    return loss, (mse, nll, probe_mse)


def build_icl_train_kernel(
    static,
    family: TaskFamily,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    max_context: int = 128,
    min_context: int = 16,
    objective: str = "nll",
    probe_weight: float = 1.0,
):
    """Build ``init(params) -> ICLTrainState`` and ``step(key, state) -> (state, info)``.

    Args:
        static: the learner's non-array part (``eqx.partition(learner, eqx.is_inexact_array)[1]``).
        family: the task family to train on.
        optimizer: an optax transformation.
        batch_size: tasks per step.
        max_context, min_context: the context sizes (see
            :func:`~amortized_ppl.icl.tasks.sample_tasks`).
        objective: one of :data:`OBJECTIVES`.
        probe_weight: weight of the probe's loss.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {OBJECTIVES}, got {objective!r}.")

    def init(params) -> ICLTrainState:
        return ICLTrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))

    def step(key, state: ICLTrainState):
        batch = sample_tasks(
            key, family, batch_size, max_context=max_context, min_context=min_context
        )

        def objective_fn(params):
            return icl_loss(
                eqx.combine(params, static), batch, objective=objective, probe_weight=probe_weight
            )

        (loss, (mse, nll, probe_mse)), grads = jax.value_and_grad(objective_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        info = ICLTrainInfo(loss, mse, nll, probe_mse, optax.tree.norm(grads))
        return ICLTrainState(params, opt_state, state.step + 1), info

    return init, step


def fit_icl(
    key,
    learner,
    family: TaskFamily,
    *,
    num_steps: int,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    max_context: int = 128,
    min_context: int = 16,
    objective: str = "nll",
    probe_weight: float = 1.0,
    chunk_size: int = 50,
    max_seconds: float | None = None,
    progress: bool = False,
) -> ICLFitResult:
    """Train ``learner`` on fresh tasks from ``family`` with Adam (warm-up, cosine decay).

    Examples:
        >>> from amortized_ppl.icl import ImplicitLearner, linear_regression
        >>> learner = ImplicitLearner(1, size=16, num_blocks=1, key=jax.random.key(0))
        >>> result = fit_icl(jax.random.key(1), learner, linear_regression(1), num_steps=2,
        ...                  batch_size=2, max_context=8, min_context=2, chunk_size=2)
        >>> result.infos.loss.shape
        (2,)
    """
    num_steps = check_int(num_steps, "num_steps")
    schedule = warmup_cosine_schedule(learning_rate, num_steps)
    optimizer = skip_nonfinite(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule)))
    params, static = eqx.partition(learner, eqx.is_inexact_array)
    init, step = build_icl_train_kernel(
        static,
        family,
        optimizer,
        batch_size=batch_size,
        max_context=max_context,
        min_context=min_context,
        objective=objective,
        probe_weight=probe_weight,
    )
    run = run_chunked_loop(
        key,
        init(params),
        step,
        num_steps=num_steps,
        chunk_size=min(chunk_size, num_steps),
        max_seconds=max_seconds,
        progress=progress,
        desc="icl",
    )
    return ICLFitResult(
        eqx.combine(run.state.params, static), run.state, run.infos, run.seconds, run.reason
    )


@eqx.filter_jit
def _evaluate_batch(learner, key, family, shift, *, batch_size, max_context, min_context):
    """``(mse, nll, probe_mse)`` on one batch; compiled once per learner structure and sizes."""
    batch = sample_tasks(
        key, family, batch_size, max_context=max_context, min_context=min_context, shift=shift
    )
    return icl_loss(learner, batch, objective="mse", probe_weight=0.0)[1]


def evaluate_learner(
    key,
    learner,
    family: TaskFamily,
    *,
    shift: str = "iid",
    num_tasks: int = 256,
    batch_size: int = 64,
    max_context: int = 128,
    min_context: int = 16,
) -> dict:
    """Mean query MSE, NLL and (explicit learners) probe MSE over ``num_tasks`` fresh tasks.

    ``learner`` may be any ``(context_x, context_y, context_mask, query_x) -> (mean, log_scale)``
    callable on one task, a learner module or a moments function alike.
    """
    if shift not in QUERY_SHIFTS:
        raise ValueError(f"shift: expected one of {QUERY_SHIFTS}, got {shift!r}.")
    num_batches = -(-check_int(num_tasks, "num_tasks") // batch_size)
    sizes = dict(batch_size=batch_size, max_context=max_context, min_context=min_context)
    totals = np.mean(
        [
            np.asarray(_evaluate_batch(learner, k, family, shift, **sizes))
            for k in jax.random.split(key, num_batches)
        ],
        axis=0,
    )
    return {"mse": float(totals[0]), "nll": float(totals[1]), "probe_mse": float(totals[2])}
