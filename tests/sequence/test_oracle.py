"""The exact Bayesian oracle over a finite family of HMMs (amortized_ppl/sequence/oracle.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp

from amortized_ppl.sequence.hmm import (
    categorical_log_likelihoods,
    enumerate_log_evidence,
    forward_filter,
)
from amortized_ppl.sequence.oracle import bayes_oracle, environment_predictives, oracle_batch
from tests.sequence.helpers import random_family, sample_symbols

# Jitted once per shape: op by op, every call compiles each primitive of the filter again.
_oracle = jax.jit(bayes_oracle, static_argnames="return_posterior")


@pytest.mark.parametrize("sparse", [False, True])
def test_oracle_evidence_and_cumulative_loss_match_enumeration(sparse):
    li, lt, le = random_family(jax.random.key(4), sparse=sparse)
    x = sample_symbols(jax.random.key(5), li, lt[0], le[0], 6)
    result = _oracle(li, lt, le, x, return_posterior=True)
    num_envs = lt.shape[0]
    lengths = (1, 4, 6)

    @jax.jit
    def family_evidences(x):
        """log p(x_1:t) for t in ``lengths`` by enumerating every environment's hidden paths."""
        out = []
        for t in lengths:
            per_env = [enumerate_log_evidence(li, lt[e], categorical_log_likelihoods(le[e], x[:t]))
                       for e in range(num_envs)]
            out.append(logsumexp(jnp.array(per_env)) - jnp.log(num_envs))
        return jnp.stack(out)

    evidences = family_evidences(x)
    # Cumulative next-token loss = -log p(x_1:t) (prequential code length of the exact learner).
    cumulative = -jnp.cumsum(result.token_log_probs)
    for t, evidence in zip(lengths, evidences):
        assert abs(float(cumulative[t - 1] + evidence)) < 1e-5
    assert abs(float(result.log_evidence - evidences[-1])) < 1e-5
    np.testing.assert_allclose(jnp.exp(result.log_probs).sum(-1), 1.0, atol=1e-5)
    assert abs(float(result.ambiguity[0] - jnp.log(num_envs))) < 1e-5
    assert bool(jnp.all(result.ambiguity >= -1e-6))
    assert bool(jnp.all(jnp.isfinite(result.log_posterior) | (result.log_posterior == -jnp.inf)))


def test_oracle_is_the_posterior_mixture_of_environment_predictives():
    li, lt, le = random_family(jax.random.key(6), sparse=True)
    x = sample_symbols(jax.random.key(7), li, lt[2], le[2], 8)

    @jax.jit
    def run(x):
        single = forward_filter(li, lt[2], categorical_log_likelihoods(le[2], x))
        return environment_predictives(li, lt, le, x), single

    result = _oracle(li, lt, le, x, return_posterior=True)
    per_env, single = run(x)  # (E, T, V)
    mix = logsumexp(result.log_posterior.T[:, :, None] + per_env, axis=0)
    np.testing.assert_allclose(mix, result.log_probs, atol=1e-5)
    # One environment's own filter is the single-HMM predictive.
    np.testing.assert_allclose(per_env[2, 1:][jnp.arange(7), x[1:]], single.log_normalizers[1:],
                               atol=1e-5)


def test_oracle_batch_matches_single_sequences():
    li, lt, le = random_family(jax.random.key(8))
    xs = jax.random.randint(jax.random.key(9), (5, 6), 0, 4)
    batch = oracle_batch(li, lt, le, xs, chunk_size=2)
    for b in range(5):
        one = _oracle(li, lt, le, xs[b])
        np.testing.assert_allclose(batch.log_probs[b], one.log_probs, atol=1e-6)
        np.testing.assert_allclose(batch.ambiguity[b], one.ambiguity, atol=1e-6)


def test_bad_symbols_and_impossible_sequences_raise_instead_of_silent_answers():
    li, lt, le = random_family(jax.random.key(12), sparse=True)
    for bad in (4, -1):
        with pytest.raises(Exception, match="vocabulary"):
            _oracle(li, lt, le, jnp.array([0, bad]))
    # A symbol no state of any environment emits: the oracle refuses rather than return nan.
    impossible = le.at[:, :, 3].set(-jnp.inf)
    impossible = impossible - logsumexp(impossible, axis=-1, keepdims=True)
    with pytest.raises(Exception, match="impossible under every environment"):
        _oracle(li, lt, impossible, jnp.array([0, 3, 1]))
