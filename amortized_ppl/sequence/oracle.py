"""The exact Bayesian predictor over a finite family of HMMs ("environments").

Given E environments that share a start distribution and differ in their transition and emission
matrices, and a uniform prior over them, the Bayes-optimal next-symbol distribution after a prefix
is the posterior-weighted average of the environments' own filtering predictives:

    p(x_t | x_<t) = sum_e p(e | x_<t) p(x_t | x_<t, e),  p(e | x_<t) ∝ p(x_<t | e).

Its cumulative loss ``sum_t -log p(x_t | x_<t)`` is ``-log p(x_1:T)``, the log evidence of the
sequence under the family (the prequential code length of an exact Bayesian learner). The entropy
of ``p(e | x_<t)`` measures how ambiguous the context is.

Conventions: position ``t`` (0-based) predicts symbol ``x_t`` from the symbols before it, so row 0
is the prior predictive of the first symbol. This matches a next-token model fed ``[BOS, x_0, ...]``.

The filter runs in probability space with a normalization at every step (the scaled forward
algorithm): for categorical emissions it is a few matrix products per step for all environments at
once, which is what makes the 12,288-environment family cheap. An environment that cannot produce
the prefix gets probability exactly zero (its log evidence is ``-inf``) and weight zero.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp, xlogy

__all__ = ["OracleResult", "bayes_oracle", "environment_predictives", "oracle_batch"]


class OracleResult(NamedTuple):
    """The oracle on one sequence of length T over a family of E environments and V symbols.

    Attributes:
        log_probs: ``(T, V)``, ``log p(x_t = v | x_<t)``.
        token_log_probs: ``(T,)``, ``log p(x_t | x_<t)`` of the observed symbols; the negative
            cumulative sum is ``-log p(x_1:t)``.
        ambiguity: ``(T,)``, entropy in nats of ``p(e | x_<t)`` (``log E`` at position 0).
        log_posterior: ``(T, E)``, ``log p(e | x_<t)``, or None unless asked for.
    """

    log_probs: jax.Array
    token_log_probs: jax.Array
    ambiguity: jax.Array
    log_posterior: jax.Array | None = None

    @property
    def log_evidence(self) -> jax.Array:
        """``log p(x_1:T)`` under the family, the sum of ``token_log_probs``."""
        return jnp.sum(self.token_log_probs, axis=-1)


# Jitted: op by op (or with a fresh closure under lax.map, as in oracle_batch) every call would
# trace and compile the filter again, seconds per call against milliseconds of work.
@functools.partial(jax.jit, static_argnames="return_posterior")
def bayes_oracle(
    log_init: jax.Array,
    log_trans: jax.Array,
    log_emit: jax.Array,
    symbols: jax.Array,
    *,
    return_posterior: bool = False,
) -> OracleResult:
    """Exact next-symbol predictive, evidence and ambiguity for one sequence.

    Args:
        log_init: ``(S,)``, the shared start distribution (log).
        log_trans: ``(E, S, S)``, each environment's transitions (log; ``-inf`` allowed).
        log_emit: ``(E, S, V)``, each environment's emissions (log; ``-inf`` allowed).
        symbols: ``(T,)`` integer symbols in ``[0, V)`` (others raise, as does a sequence that
            every environment rules out).
        return_posterior: also return ``log p(e | x_<t)``, ``(T, E)``.

    The prior over environments is uniform over the E given; pass a subset of the arrays to
    condition on a subset (e.g. the training environments).
    """
    trans, emit = jnp.exp(log_trans), jnp.exp(log_emit)
    num_envs, num_states, vocab = emit.shape
    # Two layouts of the emissions: (E*S, V) for the mixture, one matrix product per step
    # (XLA turns the vmap over a chunk of sequences into one GEMM), and (V, E, S) so that
    # conditioning on a symbol reads one contiguous slice.
    emit_flat = emit.reshape(num_envs * num_states, vocab)
    emit_by_symbol = jnp.moveaxis(emit, -1, 0)
    # Position 0: the start distribution is every environment's predicted state.
    init = jnp.broadcast_to(jnp.exp(log_init), (num_envs, num_states))

    def step(carry, x):
        pred_state, log_ev = carry
        # The prefix has probability 0 under every environment: the oracle is undefined there.
        log_ev = eqx.error_if(
            log_ev, jnp.all(jnp.isneginf(log_ev)),
            "symbols: the sequence is impossible under every environment of the family.",
        )
        log_post = log_ev - logsumexp(log_ev)
        post = jnp.exp(log_post)
        weighted = (post[:, None] * pred_state).reshape(-1)
        log_mix = jnp.log(weighted @ emit_flat)
        ambiguity = -jnp.sum(xlogy(post, post))
        # Condition on x: alpha_e ∝ pred_state_e * emit_e[:, x]; the normalizer is p(x | x_<t, e).
        joint = pred_state * emit_by_symbol[x]
        norm = jnp.sum(joint, axis=-1)
        alpha = joint / jnp.where(norm > 0, norm, 1.0)[:, None]
        new_pred = jnp.einsum("es,est->et", alpha, trans)
        outputs = (log_mix, log_mix[x], ambiguity, log_post if return_posterior else None)
        return (new_pred, log_ev + jnp.log(norm)), outputs

    log_ev0 = jnp.zeros(num_envs, dtype=init.dtype)
    symbols = eqx.error_if(
        jnp.asarray(symbols), (jnp.asarray(symbols) < 0) | (jnp.asarray(symbols) >= vocab),
        f"symbols: every symbol must be in the vocabulary [0, {vocab}).",
    )
    _, (log_probs, token_lp, ambiguity, log_post) = jax.lax.scan(step, (init, log_ev0), symbols)
    return OracleResult(log_probs, token_lp, ambiguity, log_post)


@functools.partial(jax.jit, static_argnames=("return_posterior", "chunk_size"))
def oracle_batch(
    log_init: jax.Array,
    log_trans: jax.Array,
    log_emit: jax.Array,
    symbols: jax.Array,
    *,
    return_posterior: bool = False,
    chunk_size: int = 32,
) -> OracleResult:
    """:func:`bayes_oracle` over a batch ``(B, T)`` of sequences, ``chunk_size`` at a time.

    Chunking bounds memory: for the 12,288-environment family one sequence's intermediate
    arrays are tens of megabytes. Results gain a leading ``(B,)`` axis.
    """
    fn = lambda s: bayes_oracle(log_init, log_trans, log_emit, s, return_posterior=return_posterior)
    return jax.lax.map(fn, jnp.asarray(symbols), batch_size=chunk_size)


def environment_predictives(
    log_init: jax.Array, log_trans: jax.Array, log_emit: jax.Array, symbols: jax.Array
) -> jax.Array:
    """``log p(x_t = v | x_<t, e)`` for every environment: ``(E, T, V)`` for one sequence ``(T,)``.

    The decoder of a Monte Carlo predictor that knows the HMM family: pick rows of the sampled
    environments. (For one environment pass arrays with a leading axis of 1.)
    """
    trans, emit = jnp.exp(log_trans), jnp.exp(log_emit)
    init = jnp.broadcast_to(jnp.exp(log_init), (trans.shape[0],) + log_init.shape)

    def step(pred_state, x):
        sym = jnp.einsum("es,esv->ev", pred_state, emit)
        joint = pred_state * emit[:, :, x]
        norm = jnp.sum(joint, axis=-1, keepdims=True)
        alpha = joint / jnp.where(norm > 0, norm, 1.0)
        # An impossible environment keeps a zero state; its predictive is then all zeros (log
        # -inf), which callers must tolerate (a Monte Carlo average smooths it).
        return jnp.einsum("es,est->et", alpha, trans), jnp.log(sym)

    _, log_sym = jax.lax.scan(step, init, jnp.asarray(symbols))
    return jnp.moveaxis(log_sym, 0, 1)
