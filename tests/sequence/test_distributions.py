"""``CategoricalHMM`` (amortized_ppl/sequence/distributions.py): exact log_prob, sampling shapes."""

import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl.sequence.distributions import CategoricalHMM
from amortized_ppl.sequence.hmm import categorical_log_likelihoods, enumerate_log_evidence
from tests.sequence.helpers import random_family, sample_symbols


def test_log_prob_is_the_enumerated_evidence_and_broadcasts():
    li, lt, le = random_family(jax.random.key(4), sparse=True)
    x = sample_symbols(jax.random.key(5), li, lt[1], le[1], 6)
    batch = jnp.stack([x, x[::-1], x]).reshape(3, 1, 6)

    @jax.jit
    def run(x, batch):
        hmm = CategoricalHMM(li, lt[1], le[1], 6)
        expected = enumerate_log_evidence(li, lt[1], categorical_log_likelihoods(le[1], x))
        return hmm.log_prob(x), expected, hmm.log_prob(batch)

    log_prob, expected, batched = run(x, batch)
    np.testing.assert_allclose(log_prob, expected, rtol=1e-5)
    assert batched.shape == (3, 1)
    np.testing.assert_allclose(batched[0, 0], log_prob, rtol=1e-6)
    np.testing.assert_allclose(batched[2, 0], log_prob, rtol=1e-6)
    hmm = CategoricalHMM(li, lt[1], le[1], 6)
    assert hmm.event_shape == (6,) and hmm.batch_shape == ()


def test_samples_have_the_event_shape_and_positive_probability():
    li, lt, le = random_family(jax.random.key(4), sparse=True)

    @jax.jit
    def run(key):
        hmm = CategoricalHMM(li, lt[1], le[1], 6)
        draws = hmm.sample(key, (3, 2))
        return draws, hmm.log_prob(draws), hmm.sample(key)

    draws, log_probs, single = run(jax.random.key(0))
    assert draws.shape == (3, 2, 6) and draws.dtype == jnp.int32
    assert 0 <= int(draws.min()) and int(draws.max()) < 4
    # The sparse emissions rule out some sequences; none of the draws is one of them.
    assert bool(jnp.all(jnp.isfinite(log_probs)))
    assert single.shape == (6,)
