"""Warm-up of the reference chains: NUTS step size and inverse mass matrix, one chain at a time.

Two warm-ups of one chain, and :func:`warmup_chains`, which vectorizes either over chains with
:func:`jax.vmap` (each chain adapts its own parameters):

- :func:`window_warmup` (a cold start): Stan's window adaptation (blackjax's
  ``window_adaptation``): dual averaging of the step size towards ``target_accept`` and a diagonal
  inverse mass matrix estimated from the draws of widening slow windows.
- :func:`step_size_warmup` (a warm start): the inverse mass matrix is given (e.g. an amortized
  guide's covariance) and stays fixed; only the step size is tuned, by dual averaging from a unit
  step, which suits a target that the metric has made close to standard normal.

All are pure functions of a key and a position, to be called inside ``jit``.

References:
    Hoffman, M. D. and Gelman, A. (2014). The No-U-Turn sampler. *JMLR* 15 (sec. 3.2.1: dual
    averaging).
    Stan Development Team. *Stan Reference Manual*, MCMC sampling: the adaptation windows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import blackjax
import jax
import jax.numpy as jnp
from blackjax.adaptation.base import get_filter_adapt_info_fn
from blackjax.adaptation.step_size import dual_averaging_adaptation
from blackjax.mcmc.hmc import HMCState

__all__ = ["WarmupResult", "step_size_warmup", "warmup_chains", "window_warmup"]


class WarmupResult(NamedTuple):
    """A chain's state and NUTS parameters at the end of warm-up.

    ``D`` is the size of the raveled unconstrained position (sites sorted by name). From
    :func:`warmup_chains` every field has a leading chain axis ``C``.

    Attributes:
        state: blackjax ``HMCState`` (``position``: a dict site -> unconstrained value,
            ``logdensity`` ``()``, ``logdensity_grad`` like ``position``) of the last warm-up step.
        step_size: The adapted step size, ``()`` float.
        inverse_mass_matrix: The inverse mass matrix, ``(D,)`` (diagonal) or ``(D, D)``.
    """

    state: HMCState
    step_size: jax.Array
    inverse_mass_matrix: jax.Array


def window_warmup(
    key: jax.Array,
    position: dict,
    logdensity_fn: Callable,
    *,
    num_steps: int,
    target_accept: float,
    max_num_doublings: int,
) -> WarmupResult:
    """Adapt the step size and a diagonal inverse mass matrix of one chain (window adaptation).

    Args:
        key: A JAX PRNG key.
        position: The chain's initial unconstrained position, a dict site -> value.
        logdensity_fn: The unconstrained log density of one position.
        num_steps: Warm-up steps (NUTS transitions).
        target_accept: Target mean acceptance rate of the step-size adaptation, in ``(0, 1)``.
        max_num_doublings: Maximum NUTS tree depth.

    Returns:
        A :class:`WarmupResult` with a ``(D,)`` inverse mass matrix.
    """
    warmup = blackjax.window_adaptation(
        blackjax.nuts,
        logdensity_fn,
        target_acceptance_rate=target_accept,
        adaptation_info_fn=get_filter_adapt_info_fn(),
        max_num_doublings=max_num_doublings,
    )
    (state, parameters), _ = warmup.run(key, position, num_steps)
    return WarmupResult(state, parameters["step_size"], parameters["inverse_mass_matrix"])


def step_size_warmup(
    key: jax.Array,
    position: dict,
    logdensity_fn: Callable,
    inverse_mass_matrix: jax.Array,
    *,
    num_steps: int,
    target_accept: float,
    max_num_doublings: int,
) -> WarmupResult:
    """Adapt the step size of one chain by dual averaging, the inverse mass matrix fixed.

    Args:
        key: A JAX PRNG key, split into one key per step.
        position: The chain's initial unconstrained position, a dict site -> value.
        logdensity_fn: The unconstrained log density of one position.
        inverse_mass_matrix: The metric, ``(D,)`` or ``(D, D)``; returned unchanged.
        num_steps: Warm-up steps (NUTS transitions).
        target_accept: Target mean acceptance rate, in ``(0, 1)``.
        max_num_doublings: Maximum NUTS tree depth.

    Returns:
        A :class:`WarmupResult`; its step size is dual averaging's final (averaged) iterate.
    """
    nuts_kernel = blackjax.nuts.build_kernel()
    da_init, da_update, da_final = dual_averaging_adaptation(target_accept)

    def one_step(carry, step_key):
        state, da_state = carry
        state, info = nuts_kernel(
            step_key,
            state,
            logdensity_fn,
            jnp.exp(da_state.log_step_size),
            inverse_mass_matrix,
            max_num_doublings=max_num_doublings,
        )
        return (state, da_update(da_state, info.acceptance_rate)), None

    state = blackjax.nuts.init(position, logdensity_fn)
    (state, da_state), _ = jax.lax.scan(
        one_step, (state, da_init(1.0)), jax.random.split(key, num_steps)
    )
    return WarmupResult(state, da_final(da_state), inverse_mass_matrix)


def warmup_chains(
    key: jax.Array,
    positions: dict,
    logdensity_fn: Callable,
    inverse_mass_matrix: jax.Array | None = None,
    *,
    num_steps: int,
    target_accept: float,
    max_num_doublings: int,
) -> WarmupResult:
    """Warm up every chain independently, vectorized with :func:`jax.vmap`.

    Args:
        key: A JAX PRNG key, split into one key per chain.
        positions: Initial unconstrained positions, a dict site -> ``(C, *shape)``.
        logdensity_fn: The unconstrained log density of one (unbatched) position.
        inverse_mass_matrix: ``None`` for :func:`window_warmup` of each chain (a cold start), or
            a metric ``(D,)``/``(D, D)`` shared by all chains for :func:`step_size_warmup`.
        num_steps, target_accept, max_num_doublings: As for the one-chain warm-ups.

    Returns:
        A :class:`WarmupResult` whose fields have a leading chain axis: ``step_size`` ``(C,)``,
        ``inverse_mass_matrix`` ``(C, D)`` (or ``(C, D, D)`` for a dense given metric).
    """
    num_chains = jax.tree.leaves(positions)[0].shape[0]
    keys = jax.random.split(key, num_chains)
    config = dict(
        num_steps=num_steps, target_accept=target_accept, max_num_doublings=max_num_doublings
    )
    if inverse_mass_matrix is None:
        return jax.vmap(lambda k, p: window_warmup(k, p, logdensity_fn, **config))(keys, positions)
    return jax.vmap(
        lambda k, p: step_size_warmup(k, p, logdensity_fn, inverse_mass_matrix, **config)
    )(keys, positions)
