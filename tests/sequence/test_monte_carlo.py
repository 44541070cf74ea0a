"""Monte Carlo predictors (amortized_ppl/sequence/monte_carlo.py): mixtures, decoders, weights.

``FactorizedCategorical`` (amortized_ppl/families/categorical.py), the predictor's posterior
family, is tested here too.
"""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.families.categorical import FactorizedCategorical
from amortized_ppl.sequence.evaluate import forward_kl
from amortized_ppl.sequence.monte_carlo import MonteCarloPredictor, mixture_log_probs
from amortized_ppl.sequence.oracle import bayes_oracle, environment_predictives, oracle_batch
from amortized_ppl.sequence.study import monte_carlo_log_probs
from amortized_ppl.sequence.train import fit_sequence_model
from tests.sequence.helpers import TOY_STEPS, toy_problem


def _env_of(z):
    """The toy family's environment of factors ``(..., 2)``."""
    return z[..., 0] * 2 + z[..., 1]


def test_factorized_categorical():
    family = FactorizedCategorical((2, 3))
    raw = jax.random.normal(jax.random.key(0), (4, 5))
    table = jnp.array(list(itertools.product(range(2), range(3))))
    values = jnp.broadcast_to(table[4], (4, 2))

    @jax.jit
    def compute(raw, key):
        return (family.log_probs(raw), family.joint_log_prob_table(raw, table),
                family.log_prob(raw, values), family.sample(key, raw, (1000,)))

    lps, joint, log_prob, draws = compute(raw, jax.random.key(1))  # joint: (4, 6)
    assert [lp.shape for lp in lps] == [(4, 2), (4, 3)]
    np.testing.assert_allclose(jnp.exp(joint).sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(log_prob, joint[:, 4], atol=1e-6)
    assert draws.shape == (1000, 4, 2) and draws.dtype == jnp.int32
    # 1,000 draws: a frequency's SD is at most 0.016, so 0.05 is a three-SD bound.
    freq = jnp.mean(draws[:, 0, 1][:, None] == jnp.arange(3), axis=0)
    np.testing.assert_allclose(freq, jnp.exp(lps[1][0]), atol=0.05)
    assert len(family.distributions(raw)) == 2
    with pytest.raises(ValueError, match="trailing axis of 5"):
        family.log_probs(jnp.zeros((4, 6)))
    with pytest.raises(ValueError, match="sizes"):
        FactorizedCategorical((2, 0))


# Jitted (the smoothing and the weights' presence are static): op by op, each primitive of these
# small functions compiles on its own.
_mixture = jax.jit(mixture_log_probs, static_argnames="smoothing")


def test_mixture_log_probs():
    comps = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (4, 3, 6)))
    mix = _mixture(comps)
    np.testing.assert_allclose(jnp.exp(mix), jnp.exp(comps).mean(0), atol=1e-6)
    ruled_out = jax.nn.log_softmax(comps.at[..., 0].set(-jnp.inf), axis=-1)
    smooth = _mixture(ruled_out, smoothing=0.01)
    assert bool(jnp.all(jnp.isfinite(smooth)))
    np.testing.assert_allclose(jnp.exp(smooth).sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="smoothing"):
        mixture_log_probs(jax.nn.log_softmax(jnp.zeros((2, 3))), smoothing=1.0)


def test_weighted_mixture_log_probs():
    comps = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (3, 2, 5)))
    log_w = jnp.log(jnp.array([[0.5, 0.0], [0.5, 0.0], [0.0, 1.0]]))  # (M, T)
    mix = _mixture(comps, log_weights=log_w)
    expected = jnp.stack([jnp.exp(comps[:2, 0]).mean(0), jnp.exp(comps[2, 1])])
    np.testing.assert_allclose(jnp.exp(mix), expected, atol=1e-6)
    # All weights -inf: equal weights rather than NaN.
    fallback = _mixture(comps, log_weights=jnp.full((3, 2), -jnp.inf))
    np.testing.assert_allclose(fallback, _mixture(comps), atol=1e-6)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_learned_decoder_is_normalized_and_the_known_decoder_needs_env_of_factors():
    _, _, sample_fn = toy_problem()
    model = MonteCarloPredictor(4, TOY_STEPS, (2, 2), size=16, num_heads=2, num_blocks=1,
                                key=jax.random.key(0))
    _, xs = sample_fn(jax.random.key(5), 1)
    predict = eqx.filter_jit(MonteCarloPredictor.predict)  # M and the flags are static
    learned = predict(model, jax.random.key(0), xs[0], 5)
    assert learned.shape == (TOY_STEPS, 4)
    np.testing.assert_allclose(jnp.exp(learned).sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="env_of_factors"):
        predict(model, jax.random.key(0), xs[0], 5, env_log_probs=jnp.zeros((4, TOY_STEPS, 4)))
    with pytest.raises(ValueError, match="known decoder"):
        predict(model, jax.random.key(0), xs[0], 4, importance=True)


@pytest.mark.slow
def test_importance_weighted_monte_carlo_recovers_the_oracle_from_an_untrained_posterior():
    (li, lt, le), _, sample_fn = toy_problem()
    model = MonteCarloPredictor(4, TOY_STEPS, (2, 2), size=16, num_heads=2, num_blocks=1,
                                key=jax.random.key(3))
    _, xs = sample_fn(jax.random.key(6), 4)

    @jax.jit
    def kls(key, x):
        oracle = bayes_oracle(li, lt, le, x)
        per_env = environment_predictives(li, lt, le, x)
        out = []
        for importance in (False, True):
            pred = model.predict(key, x, 256, env_log_probs=per_env, env_of_factors=_env_of,
                                 smoothing=0.0, importance=importance)
            out.append(jnp.mean(forward_kl(oracle.log_probs, pred)))
        return jnp.stack(out)

    plain_kl, is_kl = np.mean([kls(jax.random.key(b), xs[b]) for b in range(4)], axis=0)
    # The untrained q is far from the posterior; the likelihood weights correct it (the oracle's
    # prior is uniform over the same 4 environments, so the target is exactly the oracle).
    # Over 6 seeds of the network and the sequences: 0.0004-0.0013 with weights, 0.22-0.69
    # without.
    assert is_kl < 0.01 < 0.1 < plain_kl


@pytest.mark.slow
def test_monte_carlo_predictor_with_known_decoder_approaches_the_oracle():
    (li, lt, le), _, sample_fn = toy_problem()
    model = MonteCarloPredictor(4, TOY_STEPS, (2, 2), size=16, num_heads=2, num_blocks=1,
                                key=jax.random.key(0))
    fitted = fit_sequence_model(jax.random.key(1), model, sample_fn, num_steps=80, batch_size=16,
                                learning_rate=3e-3, chunk_size=80, progress=False).model
    _, xs = sample_fn(jax.random.key(5), 16)
    oracle = oracle_batch(li, lt, le, xs)

    def mean_kl(num_samples, decoder="hmm"):
        pred = monte_carlo_log_probs(jax.random.key(7), fitted, li, lt, le, xs,
                                     num_samples=num_samples, decoder=decoder,
                                     factor_sizes=(2, 2))
        return float(jnp.mean(forward_kl(oracle.log_probs, pred)))

    # More samples from the amortized posterior bring the prediction closer to the oracle.
    assert mean_kl(32) < mean_kl(1)
