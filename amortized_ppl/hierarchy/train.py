"""Training the hierarchical network by forward KL on fresh simulations, on the one driver.

The loss is the negative log density of the simulated latents under the guide's factorization,
the globals under ``q(global | data)`` and every real group's locals under
``q(local_j | global, data)`` at the true globals (the conditional is trained where the data put
it, as in neural posterior estimation). :func:`build_hierarchy_kernel` gives the pure
``(init, step)`` pair; :func:`fit_hierarchical` runs it on :func:`amortized_ppl.loop.run_chunked_loop`
(progress, wall-time budget, interruption keeps the last complete state, non-finite chunks
dropped).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from amortized_ppl._checks import check_int, check_key, check_positive_float
from amortized_ppl.hierarchy.network import HierarchicalNetwork
from amortized_ppl.hierarchy.problem import HierarchicalProblem
from amortized_ppl.loop import LoopResult, run_chunked_loop

__all__ = ["HierarchyTrainState", "build_hierarchy_kernel", "fit_hierarchical",
           "hierarchical_nll"]


class HierarchyTrainState(NamedTuple):
    params: HierarchicalNetwork
    opt_state: optax.OptState


class HierarchyInfo(NamedTuple):
    loss: jax.Array
    global_nll: jax.Array
    local_nll: jax.Array


def hierarchical_nll(network: HierarchicalNetwork, problem: HierarchicalProblem, data, g, u):
    """``(global NLL, summed local NLL)`` of the true latents of one data set."""
    h, s, group_mask = network.encode(problem, data)
    global_nll = -network.global_posterior(problem, s).log_prob(g)
    local = network.local_posterior(problem, h, s, g).log_prob(u)
    return global_nll, -jnp.sum(jnp.where(group_mask, local, 0.0))


def build_hierarchy_kernel(problem: HierarchicalProblem, network: HierarchicalNetwork,
                           optimizer: optax.GradientTransformation, batch_size: int):
    """``(init, step)``: ``init(network) -> state``; ``step(key, state) -> (state, info)``."""
    _, static = eqx.partition(network, eqx.is_inexact_array)

    def init(net):
        params = eqx.filter(net, eqx.is_inexact_array)
        return HierarchyTrainState(params, optimizer.init(params))

    def loss_fn(params, key):
        net = eqx.combine(params, static)
        data, g, u = jax.vmap(problem.simulate)(jax.random.split(key, batch_size))
        global_nll, local_nll = jax.vmap(
            lambda d, gg, ll: hierarchical_nll(net, problem, d, gg, ll))(data, g, u)
        loss = jnp.mean(global_nll + local_nll)
        return loss, (jnp.mean(global_nll), jnp.mean(local_nll))

    def step(key, state):
        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, key)
        finite = jnp.isfinite(loss)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = eqx.apply_updates(state.params, updates)
        # A non-finite loss (a simulation far in the prior's tails) skips the step.
        params = jax.tree.map(lambda new, old: jnp.where(finite, new, old), params, state.params)
        opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), opt_state,
                                 state.opt_state)
        return HierarchyTrainState(params, opt_state), HierarchyInfo(loss, *parts)

    return init, step


def fit_hierarchical(
    key: jax.Array,
    problem: HierarchicalProblem,
    network: HierarchicalNetwork,
    *,
    num_steps: int,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    max_seconds: float | None = None,
    progress: bool = True,
) -> tuple[HierarchicalNetwork, LoopResult]:
    """Train ``network`` for ``num_steps`` steps (Adam, cosine decay, gradient clipping).

    Returns:
        ``(trained network, loop result)``; the result's ``history`` holds the losses.
    """
    key = check_key(key, "key")
    num_steps = check_int(num_steps, "num_steps")
    batch_size = check_int(batch_size, "batch_size")
    learning_rate = check_positive_float(learning_rate, "learning_rate")
    schedule = optax.cosine_decay_schedule(learning_rate, num_steps, alpha=0.05)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    init, step = build_hierarchy_kernel(problem, network, optimizer, batch_size)
    result = run_chunked_loop(key, init(network), jax.jit(step), num_steps=num_steps,
                              max_seconds=max_seconds, progress=progress, desc="hierarchy")
    _, static = eqx.partition(network, eqx.is_inexact_array)
    return eqx.combine(result.state.params, static), result
