"""Plain SVI on the iterative guide's state: the baseline with no learned update.

The same Gaussian, the same mini-batches (shuffled passes, likelihood scaled to the data set) and
the same gradient evaluations per step (the log joint's gradient at the ``2 D`` cubature points)
as the learned update, but the parameters ``(loc, L)`` follow Adam on the mini-batch ELBO, as
NumPyro's ``SVI`` with an ``AutoMultivariateNormal`` guide would. Comparing the two at an equal
number of steps measures what the learned natural-gradient update buys.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from amortized_ppl.iterative.kernel import cubature_points
from amortized_ppl.iterative.passes import run_passes

__all__ = ["SVIState", "svi_refine"]


class SVIState(NamedTuple):
    """Adam state over ``(loc (D,), raw (D, D))``; ``L = tril(raw, -1) + diag(exp(diag(raw)))``."""

    params: tuple[jax.Array, jax.Array]
    opt_state: optax.OptState
    step: jax.Array


def _scale_tril(raw):
    return jnp.tril(raw, -1) + jnp.diag(jnp.exp(jnp.diag(raw)))


def _raw(scale_tril):
    return jnp.tril(scale_tril, -1) + jnp.diag(jnp.log(jnp.diag(scale_tril)))


def svi_refine(
    key: jax.Array,
    problem,
    arguments: dict,
    mask: jax.Array,
    *,
    loc: jax.Array | None = None,
    scale_tril: jax.Array | None = None,
    batch_size: int,
    num_passes: int,
    learning_rate: float | jax.Array = 1e-2,
    full_rank: bool = True,
):
    """Fit ``N(loc, L L^T)`` to one data set by Adam on the mini-batch ELBO (jittable, vmappable).

    Args:
        key: PRNG key.
        problem: the :class:`~amortized_ppl.problem.Problem` (the model's density, mini-batches).
        arguments: the model's bound arguments for one data set; mask: ``(N,)`` bool.
        loc, scale_tril: the initial Gaussian (default: the problem's prior moments).
        batch_size, num_passes: as for the learned update.
        learning_rate: Adam's learning rate (pass a JAX scalar to ``svi_refine_jit`` to try
            several rates with one compilation; a Python float is a static argument).
        full_rank: a full-rank Gaussian (True) or a diagonal one.

    Returns:
        ``(loc, scale_tril, elbo)``: the final Gaussian and the ELBO estimate per step
        ``(num_passes, P)``.
    """
    loc = problem.prior_loc if loc is None else loc
    scale_tril = problem.prior_scale_tril if scale_tril is None else scale_tril
    optimizer = optax.adam(learning_rate)
    params = (jnp.asarray(loc), _raw(jnp.asarray(scale_tril)))
    state = SVIState(params, optimizer.init(params), jnp.zeros((), jnp.int32))

    def step(key, _network, state, batch_arguments, batch_mask, per_pass):
        scale = jnp.asarray(per_pass, jnp.float32)
        points = cubature_points(key, state.params[0].shape[0])

        def negative_elbo(params):
            loc, raw = params
            tril = _scale_tril(raw if full_rank else jnp.diag(jnp.diag(raw)))
            thetas = loc + points @ tril.T
            values = jax.vmap(lambda u: problem.log_density(u, batch_arguments, batch_mask, scale))(
                thetas
            )
            return -(jnp.mean(values) + jnp.sum(jnp.diag(raw)))

        value, grads = jax.value_and_grad(negative_elbo)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return SVIState(params, opt_state, state.step + 1), -value

    state, elbo = run_passes(
        key,
        step,
        None,
        state,
        arguments,
        mask,
        problem.take,
        batch_size=batch_size,
        num_passes=num_passes,
    )
    loc, raw = state.params
    tril = _scale_tril(raw if full_rank else jnp.diag(jnp.diag(raw)))
    return loc, tril, elbo


svi_refine_jit = eqx.filter_jit(svi_refine)
