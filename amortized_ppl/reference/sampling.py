"""Sampling of the reference chains: a :func:`jax.lax.scan` of NUTS transitions of every chain.

:func:`build_chains_step` is the transition kernel of all chains at once (``step(key, states) ->
(states, info)``, one key per chain, vectorized with :func:`jax.vmap`, each chain with its own
step size and inverse mass matrix); :func:`sample_chains` scans it over ``num_samples`` steps and
records a :class:`ChainTrace`. Both are pure, to be called inside ``jit``.

References:
    Hoffman, M. D. and Gelman, A. (2014). The No-U-Turn sampler. *JMLR* 15.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import blackjax
import jax
import jax.numpy as jnp
from blackjax.mcmc.hmc import HMCState
from blackjax.mcmc.nuts import NUTSInfo

__all__ = ["ChainTrace", "build_chains_step", "sample_chains"]


class ChainTrace(NamedTuple):
    """Per-transition record of the chains after warm-up, chains first: ``(C, S, ...)``.

    Attributes:
        position: Unconstrained positions, a dict site -> ``(C, S, *unconstrained_shape)``.
        logdensity: Unconstrained log density (with log-Jacobian) of each position, ``(C, S)``.
        is_divergent: Whether each transition diverged, ``(C, S)`` bool.
        acceptance_rate: Mean Metropolis acceptance probability of each trajectory, ``(C, S)``.
        num_integration_steps: Leapfrog steps of each trajectory, ``(C, S)`` int.
        tree_depth: Number of trajectory doublings of each transition, ``(C, S)`` int.
    """

    position: dict
    logdensity: jax.Array
    is_divergent: jax.Array
    acceptance_rate: jax.Array
    num_integration_steps: jax.Array
    tree_depth: jax.Array


def build_chains_step(
    logdensity_fn: Callable,
    step_size: jax.Array,
    inverse_mass_matrix: jax.Array,
    *,
    max_num_doublings: int,
) -> Callable[[jax.Array, HMCState], tuple[HMCState, NUTSInfo]]:
    """Build ``step(key, states) -> (states, info)``, one NUTS transition of every chain.

    Args:
        logdensity_fn: The unconstrained log density of one (unbatched) position.
        step_size: Each chain's step size, ``(C,)``.
        inverse_mass_matrix: Each chain's inverse mass matrix, ``(C, D)`` or ``(C, D, D)``.
        max_num_doublings: Maximum NUTS tree depth.

    Returns:
        A pure function of a key (split into one key per chain) and the chains' ``HMCState``
        (leading axis ``C``), returning the new states and blackjax's ``NUTSInfo`` (``(C,)``
        leaves).
    """
    nuts_kernel = blackjax.nuts.build_kernel()
    num_chains = step_size.shape[0]

    def one_chain(key, state, eps, imm):
        return nuts_kernel(key, state, logdensity_fn, eps, imm, max_num_doublings=max_num_doublings)

    def step(key, states):
        keys = jax.random.split(key, num_chains)
        return jax.vmap(one_chain)(keys, states, step_size, inverse_mass_matrix)

    return step


def sample_chains(
    key: jax.Array,
    states: HMCState,
    logdensity_fn: Callable,
    step_size: jax.Array,
    inverse_mass_matrix: jax.Array,
    *,
    num_samples: int,
    max_num_doublings: int,
    on_step: Callable[[jax.Array], None] | None = None,
) -> tuple[HMCState, ChainTrace]:
    """Run ``num_samples`` NUTS transitions of every chain and record them.

    Args:
        key: A JAX PRNG key, split into one key per transition.
        states: The chains' ``HMCState`` after warm-up (leading axis ``C``).
        logdensity_fn, step_size, inverse_mass_matrix, max_num_doublings: As for
            :func:`build_chains_step`.
        num_samples: Number of transitions ``S``.
        on_step: Optional ``on_step(num_done)``, called inside the scan after each transition
            with the traced count of transitions done (e.g. to drive a progress bar through
            :func:`jax.debug.callback`); returns nothing.

    Returns:
        ``(last_states, trace)``: the chains' final states and a :class:`ChainTrace`.
    """
    step = build_chains_step(
        logdensity_fn, step_size, inverse_mass_matrix, max_num_doublings=max_num_doublings
    )

    def one_step(chain_states, xs):
        index, step_key = xs
        chain_states, info = step(step_key, chain_states)
        if on_step is not None:
            on_step(index + 1)
        record = ChainTrace(
            position=chain_states.position,
            logdensity=chain_states.logdensity,
            is_divergent=info.is_divergent,
            acceptance_rate=info.acceptance_rate,
            num_integration_steps=info.num_integration_steps,
            tree_depth=info.num_trajectory_expansions,
        )
        return chain_states, record

    last_states, trace = jax.lax.scan(
        one_step, states, (jnp.arange(num_samples), jax.random.split(key, num_samples))
    )
    # The scan stacks steps first: (S, C, ...) -> (C, S, ...).
    return last_states, jax.tree.map(lambda leaf: jnp.swapaxes(leaf, 0, 1), trace)
