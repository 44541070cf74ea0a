"""The forward filter of one HMM (amortized_ppl/sequence/hmm.py) against brute-force enumeration."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from amortized_ppl.sequence.hmm import (
    categorical_log_likelihoods,
    enumerate_log_evidence,
    forward_filter,
    next_symbol_log_probs,
)
from tests.sequence.helpers import random_family


@jax.jit
def _filter_and_prefix_evidences(log_init, log_trans, log_emit, symbols):
    """The filter and the enumerated evidence of prefixes of 2, 5 and all 7 symbols (one compile:
    op by op, the enumeration compiles every primitive again for every prefix length)."""
    ll = categorical_log_likelihoods(log_emit, symbols)
    enumerated = jnp.stack([enumerate_log_evidence(log_init, log_trans, ll[:t]) for t in (2, 5, 7)])
    return forward_filter(log_init, log_trans, ll), enumerated


def test_forward_filter_matches_enumeration():
    li, lt, le = random_family(jax.random.key(0), num_envs=1)
    x = jax.random.randint(jax.random.key(1), (7,), 0, 4)
    result, enumerated = _filter_and_prefix_evidences(li, lt[0], le[0], x)
    assert abs(float(result.log_evidence - enumerated[-1])) < 1e-5
    # Every prefix: cumulative normalizers are the prefix evidence.
    for t, expected in zip((2, 5), enumerated[:2]):
        assert abs(float(jnp.sum(result.log_normalizers[:t]) - expected)) < 1e-5
    np.testing.assert_allclose(jnp.exp(result.log_filtered).sum(-1), 1.0, atol=1e-5)


def test_next_symbol_log_probs_are_the_next_normalizers():
    li, lt, le = random_family(jax.random.key(2), num_envs=1)
    x = jax.random.randint(jax.random.key(3), (9,), 0, 4)

    @jax.jit
    def run(x):
        result = forward_filter(li, lt[0], categorical_log_likelihoods(le[0], x))
        return result, next_symbol_log_probs(result.log_filtered, lt[0], le[0])

    result, pred = run(x)
    np.testing.assert_allclose(jnp.exp(pred).sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(pred[:-1][jnp.arange(8), x[1:]], result.log_normalizers[1:],
                               atol=1e-5)


def test_impossible_sequence_has_evidence_minus_infinity_and_no_nan():
    li, lt, le = random_family(jax.random.key(12), sparse=True)
    # Symbol 3 is emitted by no state: the sequence has probability 0.
    impossible = le.at[:, :, 3].set(-jnp.inf)
    impossible = impossible - logsumexp(impossible, axis=-1, keepdims=True)
    filter_fn = jax.jit(lambda ll: forward_filter(li, lt[0], ll))
    result = filter_fn(categorical_log_likelihoods(impossible[0], jnp.array([0, 3])))
    assert float(result.log_evidence) == -np.inf
    assert not bool(jnp.any(jnp.isnan(result.log_filtered)))
