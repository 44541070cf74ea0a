"""The parametric regime: a NumPyro model's amortized posterior, predicting through its likelihood.

The implicit and explicit learners predict ``y_q`` from the context directly. The parametric
predictor instead infers the model's own latents: a trained amortized guide (any
:class:`~amortized_ppl.guides.AutoAmortized`) draws them from ``q(theta | context)``, and the
model, run on the query inputs with those draws (NumPyro's :class:`~numpyro.infer.Predictive`),
gives draws of ``y_q``. Their mean and SD are the predictive moments, the form every learner of
:mod:`amortized_ppl.icl` returns. With the right model the query distribution does not enter the
posterior, so *wide* and *far* queries cost only what the posterior's error costs at those inputs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from numpyro.infer import Predictive

from amortized_ppl._checks import check_int, check_key

__all__ = ["parametric_moments"]


def parametric_moments(
    key: jax.Array,
    guide,
    params,
    context_x,
    context_y,
    context_mask,
    query_x,
    *,
    num_draws: int = 64,
    x_name: str = "x",
    y_name: str = "y",
):
    """Posterior predictive moments of ``y`` at ``query_x`` for a batch of tasks.

    Args:
        key: PRNG key (posterior draws, then the likelihood's).
        guide: a trained amortized guide of a model ``model(x, y=None)`` whose observed site
            ``y_name`` sits in a plate over the rows of ``x``.
        params: the guide's parameters.
        context_x: ``(B, n, d)``; context_y: ``(B, n)``; context_mask: ``(B, n)`` bool (False rows
            are padding); query_x: ``(B, m, d)``.
        num_draws: posterior draws per task (each gives one draw of every ``y_q``).
        x_name: the model's argument name for the inputs.
        y_name: the model's argument name for the observations, which is also the name of its
            observed site (as in the zoo's models).

    Returns:
        ``(mean, log_scale)``, each ``(B, m)``: the mean and the log of the (population) SD of
        the ``num_draws`` draws of ``y_q`` per query.

    The model's latents must be global (outside the plate over rows): per-row latents have no
    value at new query rows.
    """
    check_key(key, "key")
    num_draws = check_int(num_draws, "num_draws", minimum=2)
    context_x, query_x = jnp.asarray(context_x), jnp.asarray(query_x)
    if context_x.ndim != 3:
        raise ValueError(f"context_x: expected shape (B, n, d), got {context_x.shape}.")
    if query_x.ndim != 3 or query_x.shape[::2] != context_x.shape[::2]:
        raise ValueError(
            f"query_x: expected shape (B, m, d) with B = {context_x.shape[0]} tasks and d = "
            f"{context_x.shape[2]} inputs like context_x, got {query_x.shape}."
        )
    key_post, key_pred = jax.random.split(key)
    draws = guide.sample_posterior(
        key_post, params, **{x_name: context_x, y_name: context_y}, data_mask=context_mask,
        sample_shape=(num_draws,),
    )
    return _predictive_program(guide.model, x_name, y_name)(draws, query_x, key_pred)


@functools.lru_cache(maxsize=16)
def _predictive_program(model, x_name, y_name):
    """The model's predictive at every task's queries, compiled once per model and shapes."""

    @jax.jit
    def run(draws, query_x, key):
        def one(task_draws, qx, k):
            predictive = Predictive(model, posterior_samples=task_draws, return_sites=[y_name])
            return predictive(k, **{x_name: qx})[y_name]  # (S, m)

        keys = jax.random.split(key, query_x.shape[0])
        ys = jax.vmap(one)(draws, query_x, keys)
        return jnp.mean(ys, axis=1), 0.5 * jnp.log(jnp.var(ys, axis=1))

    return run
