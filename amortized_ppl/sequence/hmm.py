"""Forward filtering for hidden Markov models, in log space.

One function, :func:`forward_filter`, serves every HMM in the project: it takes the per-step
log-likelihoods of the observations under each hidden state, so categorical emissions (MetaHMM)
and Gaussian emissions (the continuous Bayesian HMM) share it. Everything works on one sequence;
batch with ``jax.vmap``.

The filter normalizes at every step (the log of the normalizer is ``log p(x_t | x_<t)``), so it is
stable for sequences of any length, and it is differentiable, so a NumPyro model can marginalize
its hidden states with it and NUTS can run on the result.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

__all__ = [
    "FilterResult",
    "categorical_log_likelihoods",
    "enumerate_log_evidence",
    "forward_filter",
    "next_symbol_log_probs",
]


class FilterResult(NamedTuple):
    """The forward filter's output for one sequence of length T over S hidden states.

    Attributes:
        log_normalizers: ``(T,)``, ``log p(x_t | x_1:t-1)``; their cumulative sum is
            ``log p(x_1:t)`` and their total the log evidence of the whole sequence.
        log_filtered: ``(T, S)``, ``log p(z_t | x_1:t)``, each row normalized.
    """

    log_normalizers: jax.Array
    log_filtered: jax.Array

    @property
    def log_evidence(self) -> jax.Array:
        """``log p(x_1:T)``, a scalar."""
        return jnp.sum(self.log_normalizers)


def forward_filter(
    log_init: jax.Array, log_trans: jax.Array, log_lik: jax.Array
) -> FilterResult:
    """Run the forward algorithm on one sequence.

    Args:
        log_init: ``(S,)``, ``log p(z_1)``.
        log_trans: ``(S, S)``, ``log p(z_t+1 = j | z_t = i)`` at ``[i, j]``.
        log_lik: ``(T, S)``, ``log p(x_t | z_t = s)``.

    Returns:
        A :class:`FilterResult`.
    """

    def normalize(log_joint):
        log_norm = logsumexp(log_joint)
        # An observation impossible in every state: evidence -inf, and a filtered row of -inf
        # rather than the nan of -inf - -inf.
        return log_norm, jnp.where(jnp.isfinite(log_norm), log_joint - log_norm, -jnp.inf)

    def step(log_alpha, ll):
        # log p(z_t | x_<t) = logsumexp_i (log_alpha_i + log_trans_ij)
        log_pred = logsumexp(log_alpha[:, None] + log_trans, axis=0)
        log_norm, log_alpha = normalize(log_pred + ll)
        return log_alpha, (log_norm, log_alpha)

    norm0, alpha0 = normalize(log_init + log_lik[0])
    _, (norms, alphas) = jax.lax.scan(step, alpha0, log_lik[1:])
    return FilterResult(
        log_normalizers=jnp.concatenate([norm0[None], norms]),
        log_filtered=jnp.concatenate([alpha0[None], alphas]),
    )


def categorical_log_likelihoods(log_emit: jax.Array, symbols: jax.Array) -> jax.Array:
    """Per-step log-likelihoods ``(T, S)`` of symbols ``(T,)`` under emissions ``(S, V)``."""
    return jnp.take(log_emit, symbols, axis=1).T


def next_symbol_log_probs(
    log_filtered: jax.Array, log_trans: jax.Array, log_emit: jax.Array
) -> jax.Array:
    """``log p(x_t+1 = v | x_1:t)`` for every t: ``(T, S)`` filtered -> ``(T, V)``.

    Row t is the predictive for the symbol after the first t + 1 observations.
    """
    log_next_state = logsumexp(log_filtered[:, :, None] + log_trans[None], axis=1)  # (T, S)
    return logsumexp(log_next_state[:, :, None] + log_emit[None], axis=1)


def enumerate_log_evidence(
    log_init: jax.Array, log_trans: jax.Array, log_lik: jax.Array
) -> jax.Array:
    """``log p(x_1:T)`` by summing over all ``S**T`` hidden paths (a test oracle; tiny S, T only)."""
    num_steps, num_states = log_lik.shape
    paths = jnp.asarray(list(itertools.product(range(num_states), repeat=num_steps)))
    log_path = log_init[paths[:, 0]] + jnp.sum(log_trans[paths[:, :-1], paths[:, 1:]], axis=1)
    log_path = log_path + jnp.sum(log_lik[jnp.arange(num_steps), paths], axis=1)
    return logsumexp(log_path)
