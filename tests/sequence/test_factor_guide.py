"""The amortized guide over discrete factor sites, on the MetaHMM family's NumPyro model."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer import Predictive, Trace_ELBO

from amortized_ppl.models.metahmm import build_metahmm, env_index, get_config
from amortized_ppl.models.metahmm_model import make_model
from amortized_ppl.sequence import AmortizedFactorGuide, CategoricalHMM, MonteCarloPredictor
from amortized_ppl.sequence.oracle import bayes_oracle


@pytest.fixture(scope="module")
def setting():
    hmm = build_metahmm(get_config("tiny"))
    model = make_model(hmm)
    predictor = MonteCarloPredictor(hmm.num_symbols, 64, hmm.factor_sizes, size=16, num_heads=2,
                                    num_blocks=1, key=jax.random.key(0))
    prior_predictive = jax.jit(lambda key: Predictive(model, num_samples=1)(key)["symbols"][0])
    symbols = prior_predictive(jax.random.key(1))
    return hmm, model, predictor, symbols


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_model_observes_the_sequence_through_the_exact_filter(setting):
    hmm, model, _, symbols = setting
    e = 7

    @jax.jit
    def run(symbols, key):
        dist_e = CategoricalHMM(hmm.log_init, hmm.log_trans[e], hmm.log_emit[e], 64)
        exact = bayes_oracle(hmm.log_init, hmm.log_trans[e:e + 1], hmm.log_emit[e:e + 1], symbols)
        return dist_e.log_prob(symbols), exact.log_evidence, dist_e.sample(key, (3, 2))

    log_prob, log_evidence, draws = run(symbols, jax.random.key(0))
    np.testing.assert_allclose(log_prob, log_evidence, rtol=1e-6)
    assert draws.shape == (3, 2, 64) and int(draws.max()) < hmm.num_symbols
    with pytest.raises(ValueError, match="vocabulary"):
        model(symbols=symbols.at[3].set(99))


@pytest.mark.slow  # Predictive and an ELBO through the exact filter
def test_guide_runs_under_predictive_and_the_elbo(setting):
    hmm, model, predictor, symbols = setting
    guide = AmortizedFactorGuide(model, predictor, hmm.factor_names)
    x = symbols[:40]
    sites = list(hmm.factor_names) + ["env"]

    @jax.jit
    def run(x, keys):
        pred = Predictive(model, guide=guide, num_samples=4, return_sites=sites)(
            keys[0], symbols=x)
        loss = Trace_ELBO().loss(keys[1], {}, model, guide, symbols=x)
        draws = guide.sample_posterior(keys[2], x, (2000,))
        return pred, loss, draws, guide.posterior(x)[0].probs

    pred, loss, draws, q_probs = run(x, jax.random.split(jax.random.key(2), 3))
    for name, size in zip(hmm.factor_names, hmm.factor_sizes):
        assert pred[name].shape == (4,) and int(pred[name].max()) < size
    # The model ran on the guide's factors: its environment is theirs.
    factors = jnp.stack([pred[n] for n in hmm.factor_names], axis=-1)
    np.testing.assert_array_equal(pred["env"], env_index(hmm, factors))
    assert np.isfinite(float(loss))
    # 2,000 draws: the frequency's SD is at most 0.011, so 0.04 is a 3.5-SD bound.
    freq = np.mean(np.asarray(draws[hmm.factor_names[0]]) == 1)
    assert abs(freq - float(q_probs[1])) < 0.04


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_guide_errors(setting):
    hmm, model, predictor, symbols = setting
    with pytest.raises(ValueError, match="not a latent sample site"):
        AmortizedFactorGuide(model, predictor, ("nope",) + hmm.factor_names[1:])
    with pytest.raises(ValueError, match="names for a predictor"):
        AmortizedFactorGuide(model, predictor, hmm.factor_names[:-1])
    swapped = list(hmm.factor_names)
    i = hmm.factor_sizes.index(1)  # a one-valued factor put where a two-valued one belongs
    swapped[0], swapped[i] = swapped[i], swapped[0]
    with pytest.raises(ValueError, match="values but the predictor"):
        AmortizedFactorGuide(model, predictor, swapped)
    guide = AmortizedFactorGuide(model, predictor, hmm.factor_names)
    with pytest.raises(ValueError, match="at most 63"):
        guide.posterior(symbols)
    with pytest.raises(ValueError, match="non-empty"):
        guide.posterior(jnp.zeros((0,), jnp.int32))
    with pytest.raises(Exception, match="vocabulary"):
        eqx.filter_jit(guide.posterior)(symbols[:10].at[0].set(hmm.num_symbols))
    with pytest.raises(TypeError, match="PRNG key"):
        guide.sample_posterior(0, symbols[:10])
