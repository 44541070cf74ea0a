"""The HMM filter, the Bayesian oracle over a family of HMMs, and the sequence predictors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp

from amortized_ppl.families.categorical import FactorizedCategorical
from amortized_ppl.sequence.evaluate import (
    ambiguity_bins,
    by_ambiguity,
    environment_posterior_kl,
    forward_kl,
    token_nll,
)
from amortized_ppl.sequence.hmm import (
    categorical_log_likelihoods,
    enumerate_log_evidence,
    forward_filter,
    next_symbol_log_probs,
)
from amortized_ppl.sequence.monte_carlo import MonteCarloPredictor, mixture_log_probs
from amortized_ppl.sequence.oracle import bayes_oracle, environment_predictives, oracle_batch
from amortized_ppl.sequence.train import fit_sequence_model
from amortized_ppl.sequence.transformer import CausalTransformer, NextTokenTransformer


def random_family(key, num_envs=5, num_states=3, num_symbols=4, sparse=False):
    """E random HMMs with a shared uniform start; ``sparse`` zeroes some emissions."""
    k1, k2, k3 = jax.random.split(key, 3)
    log_init = jnp.full((num_states,), -jnp.log(num_states))
    log_trans = jax.nn.log_softmax(2.0 * jax.random.normal(k1, (num_envs, num_states, num_states)))
    logits = 2.0 * jax.random.normal(k2, (num_envs, num_states, num_symbols))
    if sparse:
        # Each state emits only half the vocabulary: many prefixes rule environments out.
        keep = jax.random.bernoulli(k3, 0.5, logits.shape).at[..., 0].set(True)
        logits = jnp.where(keep, logits, -jnp.inf)
    return log_init, log_trans, jax.nn.log_softmax(logits, axis=-1)


def sample_symbols(key, log_init, log_trans, log_emit, num_steps):
    """One sequence from one HMM (a plain loop: a test oracle independent of the library)."""
    keys = jax.random.split(key, 2 * num_steps + 1)
    z = int(jax.random.categorical(keys[0], log_init))
    out = []
    for t in range(num_steps):
        out.append(int(jax.random.categorical(keys[2 * t + 1], log_emit[z])))
        z = int(jax.random.categorical(keys[2 * t + 2], log_trans[z]))
    return jnp.array(out)


def test_forward_filter_matches_enumeration():
    li, lt, le = random_family(jax.random.key(0), num_envs=1)
    x = jax.random.randint(jax.random.key(1), (7,), 0, 4)
    ll = categorical_log_likelihoods(le[0], x)
    result = forward_filter(li, lt[0], ll)
    assert abs(float(result.log_evidence - enumerate_log_evidence(li, lt[0], ll))) < 1e-5
    # Every prefix: cumulative normalizers are the prefix evidence.
    for t in (2, 5):
        expected = enumerate_log_evidence(li, lt[0], ll[:t])
        assert abs(float(jnp.sum(result.log_normalizers[:t]) - expected)) < 1e-5
    np.testing.assert_allclose(jnp.exp(result.log_filtered).sum(-1), 1.0, atol=1e-5)


def test_next_symbol_log_probs_are_the_next_normalizers():
    li, lt, le = random_family(jax.random.key(2), num_envs=1)
    x = jax.random.randint(jax.random.key(3), (9,), 0, 4)
    result = forward_filter(li, lt[0], categorical_log_likelihoods(le[0], x))
    pred = next_symbol_log_probs(result.log_filtered, lt[0], le[0])
    np.testing.assert_allclose(jnp.exp(pred).sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(pred[:-1][jnp.arange(8), x[1:]], result.log_normalizers[1:],
                               atol=1e-5)


@pytest.mark.parametrize("sparse", [False, True])
def test_oracle_evidence_and_cumulative_loss_match_enumeration(sparse):
    li, lt, le = random_family(jax.random.key(4), sparse=sparse)
    x = sample_symbols(jax.random.key(5), li, lt[0], le[0], 6)
    result = bayes_oracle(li, lt, le, x, return_posterior=True)
    num_envs = lt.shape[0]

    def family_evidence(prefix):
        per_env = [enumerate_log_evidence(li, lt[e], categorical_log_likelihoods(le[e], prefix))
                   for e in range(num_envs)]
        return logsumexp(jnp.array(per_env)) - jnp.log(num_envs)

    # Cumulative next-token loss = -log p(x_1:t) (prequential code length of the exact learner).
    cumulative = -jnp.cumsum(result.token_log_probs)
    for t in (1, 4, 6):
        assert abs(float(cumulative[t - 1] + family_evidence(x[:t]))) < 1e-5
    assert abs(float(result.log_evidence - family_evidence(x))) < 1e-5
    np.testing.assert_allclose(jnp.exp(result.log_probs).sum(-1), 1.0, atol=1e-5)
    assert abs(float(result.ambiguity[0] - jnp.log(num_envs))) < 1e-5
    assert bool(jnp.all(result.ambiguity >= -1e-6))
    assert bool(jnp.all(jnp.isfinite(result.log_posterior) | (result.log_posterior == -jnp.inf)))


def test_oracle_is_the_posterior_mixture_of_environment_predictives():
    li, lt, le = random_family(jax.random.key(6), sparse=True)
    x = sample_symbols(jax.random.key(7), li, lt[2], le[2], 8)
    result = bayes_oracle(li, lt, le, x, return_posterior=True)
    per_env = environment_predictives(li, lt, le, x)  # (E, T, V)
    mix = logsumexp(result.log_posterior.T[:, :, None] + per_env, axis=0)
    np.testing.assert_allclose(mix, result.log_probs, atol=1e-5)
    # One environment's own filter is the single-HMM predictive.
    single = forward_filter(li, lt[2], categorical_log_likelihoods(le[2], x))
    np.testing.assert_allclose(per_env[2, 1:][jnp.arange(7), x[1:]], single.log_normalizers[1:],
                               atol=1e-5)


def test_oracle_batch_matches_single_sequences():
    li, lt, le = random_family(jax.random.key(8))
    xs = jax.random.randint(jax.random.key(9), (5, 6), 0, 4)
    batch = oracle_batch(li, lt, le, xs, chunk_size=2)
    for b in range(5):
        one = bayes_oracle(li, lt, le, xs[b])
        np.testing.assert_allclose(batch.log_probs[b], one.log_probs, atol=1e-6)
        np.testing.assert_allclose(batch.ambiguity[b], one.ambiguity, atol=1e-6)


def test_causal_transformer_reads_only_the_past():
    trunk = CausalTransformer(6, 16, size=16, num_heads=2, num_blocks=2, key=jax.random.key(0))
    x = jax.random.randint(jax.random.key(1), (12,), 0, 6)
    h = trunk(x)
    h2 = trunk(x.at[5].set((x[5] + 1) % 6))
    # Row t has read x_<t: rows 0..5 cannot see x_5; row 6 does.
    np.testing.assert_allclose(h[:6], h2[:6], atol=1e-6)
    assert float(jnp.abs(h[6] - h2[6]).max()) > 1e-4
    with pytest.raises(ValueError, match="max_len"):
        trunk(jnp.zeros(17, dtype=jnp.int32))
    with pytest.raises(ValueError, match="num_heads"):
        CausalTransformer(6, 16, size=10, num_heads=4, key=jax.random.key(0))


def test_factorized_categorical():
    family = FactorizedCategorical((2, 3))
    raw = jax.random.normal(jax.random.key(0), (4, 5))
    lps = family.log_probs(raw)
    assert [lp.shape for lp in lps] == [(4, 2), (4, 3)]
    table = jnp.array(list(itertools.product(range(2), range(3))))
    joint = family.joint_log_prob_table(raw, table)  # (4, 6)
    np.testing.assert_allclose(jnp.exp(joint).sum(-1), 1.0, atol=1e-6)
    values = jnp.broadcast_to(table[4], (4, 2))
    np.testing.assert_allclose(family.log_prob(raw, values), joint[:, 4], atol=1e-6)
    draws = family.sample(jax.random.key(1), raw, (1000,))
    assert draws.shape == (1000, 4, 2) and draws.dtype == jnp.int32
    freq = jnp.mean(draws[:, 0, 1][:, None] == jnp.arange(3), axis=0)
    np.testing.assert_allclose(freq, jnp.exp(lps[1][0]), atol=0.05)
    assert len(family.distributions(raw)) == 2
    with pytest.raises(ValueError, match="trailing axis of 5"):
        family.log_probs(jnp.zeros((4, 6)))
    with pytest.raises(ValueError, match="sizes"):
        FactorizedCategorical((2, 0))


def test_forward_kl_and_token_nll():
    p = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (3, 5)))
    q = jax.nn.log_softmax(jax.random.normal(jax.random.key(1), (3, 5)))
    np.testing.assert_allclose(forward_kl(p, p), 0.0, atol=1e-6)
    assert bool(jnp.all(forward_kl(p, q) > 0))
    # The oracle may rule symbols out (log 0); they contribute nothing.
    p0 = p.at[:, 0].set(-jnp.inf)
    p0 = p0 - logsumexp(p0, axis=-1, keepdims=True)
    assert bool(jnp.all(jnp.isfinite(forward_kl(p0, q))))
    x = jnp.array([0, 2, 4])
    np.testing.assert_allclose(token_nll(q, x), -q[jnp.arange(3), x])


def test_environment_posterior_kl():
    p = jnp.log(jnp.array([0.5, 0.5, 0.0]))
    np.testing.assert_allclose(environment_posterior_kl(p, p), 0.0, atol=1e-7)
    q = jnp.log(jnp.array([0.25, 0.25, 0.5]))
    np.testing.assert_allclose(environment_posterior_kl(p, q), np.log(2.0), atol=1e-6)


def test_by_ambiguity():
    rng = np.random.default_rng(0)
    amb = rng.uniform(size=300)
    values = 2.0 * amb
    out = by_ambiguity(values, amb)
    assert sum(out["count"]) == 300 and len(out["mean"]) == 3
    assert out["count"] == [100, 100, 100]
    assert out["mean"][0] < out["mean"][1] < out["mean"][2]
    # Ties (many positions with ambiguity exactly 0) still give equal-count bins.
    tied = np.concatenate([np.zeros(200), amb[:100]])
    assert by_ambiguity(tied, tied)["count"] == [100, 100, 100]
    np.testing.assert_array_equal(ambiguity_bins(np.array([0.3, 0.1, 0.2])), [2, 0, 1])
    with pytest.raises(ValueError, match="same size"):
        by_ambiguity(values[:5], amb)


def test_mixture_log_probs():
    comps = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (4, 3, 6)))
    mix = mixture_log_probs(comps)
    np.testing.assert_allclose(jnp.exp(mix), jnp.exp(comps).mean(0), atol=1e-6)
    ruled_out = jax.nn.log_softmax(comps.at[..., 0].set(-jnp.inf), axis=-1)
    smooth = mixture_log_probs(ruled_out, smoothing=0.01)
    assert bool(jnp.all(jnp.isfinite(smooth)))
    np.testing.assert_allclose(jnp.exp(smooth).sum(-1), 1.0, atol=1e-5)


def _toy_problem():
    """Two factors (2 x 2) pick a family of 4 environments over 3 states and 4 symbols."""
    li, lt, le = random_family(jax.random.key(11), num_envs=4, sparse=True)
    table = jnp.array(list(itertools.product(range(2), range(2))))
    num_steps = 10

    def sample_fn(key, batch_size):
        e_key, s_key = jax.random.split(key)
        envs = jax.random.randint(e_key, (batch_size,), 0, 4)

        def one(k, e):
            k0, k1 = jax.random.split(k)

            def step(z, kk):
                a, b = jax.random.split(kk)
                return jax.random.categorical(b, lt[e, z]), jax.random.categorical(a, le[e, z])

            return jax.lax.scan(step, jax.random.categorical(k0, li), jax.random.split(k1, num_steps))[1]

        return table[envs], jax.vmap(one)(jax.random.split(s_key, batch_size), envs)

    return (li, lt, le), table, sample_fn


def test_fit_sequence_model_learns_and_is_deterministic():
    _, _, sample_fn = _toy_problem()
    model = NextTokenTransformer(4, 10, size=16, num_heads=2, num_blocks=1, key=jax.random.key(0))
    kwargs = dict(batch_size=16, learning_rate=3e-3, chunk_size=30, progress=False)
    a = fit_sequence_model(jax.random.key(1), model, sample_fn, num_steps=60, **kwargs)
    b = fit_sequence_model(jax.random.key(1), model, sample_fn, num_steps=60, **kwargs)
    assert a.history.shape == (60,) and not a.interrupted
    np.testing.assert_array_equal(a.history, b.history)
    assert a.history[-20:].mean() < a.history[:5].mean() - 0.1
    with pytest.raises(ValueError, match="num_steps"):
        fit_sequence_model(jax.random.key(1), model, sample_fn, num_steps=0)
    with pytest.raises(TypeError, match="PRNG key"):
        fit_sequence_model(1, model, sample_fn)


@pytest.fixture(scope="module")
def fitted_toy_predictor():
    """A Monte Carlo predictor trained briefly on the toy family (shared: training compiles)."""
    _, _, sample_fn = _toy_problem()
    model = MonteCarloPredictor(4, 10, (2, 2), size=16, num_heads=2, num_blocks=1,
                                key=jax.random.key(0))
    return fit_sequence_model(jax.random.key(1), model, sample_fn, num_steps=80, batch_size=16,
                              learning_rate=3e-3, chunk_size=80, progress=False).model


def test_monte_carlo_predictor_with_known_decoder_approaches_the_oracle(fitted_toy_predictor):
    from amortized_ppl.sequence.study import monte_carlo_log_probs

    (li, lt, le), _, sample_fn = _toy_problem()
    fitted = fitted_toy_predictor
    _, xs = sample_fn(jax.random.key(5), 16)
    oracle = oracle_batch(li, lt, le, xs)

    def mean_kl(num_samples, decoder="hmm"):
        pred = monte_carlo_log_probs(jax.random.key(7), fitted, li, lt, le, xs,
                                     num_samples=num_samples, decoder=decoder,
                                     factor_sizes=(2, 2))
        return float(jnp.mean(forward_kl(oracle.log_probs, pred)))

    # More samples from the amortized posterior bring the prediction closer to the oracle.
    assert mean_kl(32) < mean_kl(1)
    # The learned decoder gives normalized predictions of the right shape.
    learned = fitted.predict(jax.random.key(0), xs[0], 5)
    assert learned.shape == (10, 4)
    np.testing.assert_allclose(jnp.exp(learned).sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="env_of_factors"):
        fitted.predict(jax.random.key(0), xs[0], 5,
                       env_log_probs=environment_predictives(li, lt, le, xs[0]))


def test_importance_weighted_monte_carlo_recovers_the_oracle_from_an_untrained_posterior():
    (li, lt, le), _, sample_fn = _toy_problem()
    model = MonteCarloPredictor(4, 10, (2, 2), size=16, num_heads=2, num_blocks=1,
                                key=jax.random.key(3))
    _, xs = sample_fn(jax.random.key(6), 4)
    env_of = lambda z: z[..., 0] * 2 + z[..., 1]

    @jax.jit
    def kls(key, x):
        oracle = bayes_oracle(li, lt, le, x)
        per_env = environment_predictives(li, lt, le, x)
        out = []
        for importance in (False, True):
            pred = model.predict(key, x, 256, env_log_probs=per_env, env_of_factors=env_of,
                                 smoothing=0.0, importance=importance)
            out.append(jnp.mean(forward_kl(oracle.log_probs, pred)))
        return jnp.stack(out)

    plain_kl, is_kl = np.mean([kls(jax.random.key(b), xs[b]) for b in range(4)], axis=0)
    # The untrained q is far from the posterior; the likelihood weights correct it (the oracle's
    # prior is uniform over the same 4 environments, so the target is exactly the oracle).
    assert is_kl < 0.02 < plain_kl
    with pytest.raises(ValueError, match="known decoder"):
        model.predict(jax.random.key(0), xs[0], 4, importance=True)


def test_weighted_mixture_log_probs():
    comps = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (3, 2, 5)))
    log_w = jnp.log(jnp.array([[0.5, 0.0], [0.5, 0.0], [0.0, 1.0]]))  # (M, T)
    mix = mixture_log_probs(comps, log_weights=log_w)
    expected = jnp.stack([jnp.exp(comps[:2, 0]).mean(0), jnp.exp(comps[2, 1])])
    np.testing.assert_allclose(jnp.exp(mix), expected, atol=1e-6)
    # All weights -inf: equal weights rather than NaN.
    fallback = mixture_log_probs(comps, log_weights=jnp.full((3, 2), -jnp.inf))
    np.testing.assert_allclose(fallback, mixture_log_probs(comps), atol=1e-6)


def test_evaluate_predictors_summarize_and_plots(fitted_toy_predictor):
    import types

    import matplotlib

    matplotlib.use("Agg")
    from amortized_ppl.sequence.plots import plot_kl_by_ambiguity, plot_kl_by_position
    from amortized_ppl.sequence.study import env_of_factors, evaluate_predictors, summarize

    (li, lt, le), table, sample_fn = _toy_problem()
    family = types.SimpleNamespace(
        log_init=li, log_trans=lt, log_emit=le, factors=table, factor_sizes=(2, 2),
        train_envs=jnp.array([0, 1, 2]), ood_envs=jnp.array([3]),
    )
    np.testing.assert_array_equal(env_of_factors((2, 2), table), jnp.arange(4))
    plain = NextTokenTransformer(4, 10, size=16, num_heads=2, num_blocks=1, key=jax.random.key(0))
    mc = fitted_toy_predictor
    _, xs = sample_fn(jax.random.key(2), 6)
    # (The importance-weighted decoder has its own test; leaving it out saves two compilations.)
    out = evaluate_predictors(jax.random.key(3), family, xs, "train", plain=plain, monte_carlo=mc,
                              num_samples=(2, 64), decoders=("hmm", "learned"),
                              exact_posterior=True)
    expected = {"transformer"} | {f"mc_{d}_M{m}" for d in ("hmm", "learned", "exact")
                                  for m in (2, 64)}
    assert set(out["kl"]) == expected
    assert out["ambiguity"].shape == (6, 10) and out["posterior_kl"].shape == (6, 10)
    assert all(np.all(v >= -1e-5) for v in out["kl"].values())
    # The ceiling converges to the oracle as M grows (Monte Carlo error only).
    assert out["kl"]["mc_exact_M64"].mean() < out["kl"]["mc_exact_M2"].mean()
    assert out["kl"]["mc_exact_M64"].mean() < 0.05
    summary = summarize(out)
    assert summary["predictors"]["transformer"]["kl_by_ambiguity"]["count"] == [20, 20, 20]
    assert len(summary["posterior_kl_by_position"]) == 10
    assert plot_kl_by_position(out, ["transformer", "mc_hmm_M2"]) is not None
    assert plot_kl_by_ambiguity(out, num_bins=4) is not None


def test_bad_symbols_and_impossible_sequences_raise_instead_of_silent_answers():
    li, lt, le = random_family(jax.random.key(12), sparse=True)
    trunk = CausalTransformer(4, 8, size=8, num_heads=2, num_blocks=1, key=jax.random.key(0))
    for bad in (4, -1):
        with pytest.raises(Exception, match="vocabulary"):
            trunk(jnp.array([0, 1, bad]))
        with pytest.raises(Exception, match="vocabulary"):
            bayes_oracle(li, lt, le, jnp.array([0, bad]))
    # A symbol no state of any environment emits: the oracle refuses rather than return nan.
    impossible = le.at[:, :, 3].set(-jnp.inf)
    impossible = impossible - logsumexp(impossible, axis=-1, keepdims=True)
    with pytest.raises(Exception, match="impossible under every environment"):
        bayes_oracle(li, lt, impossible, jnp.array([0, 3, 1]))
    # One HMM: evidence -inf, and no nan in the filtered rows.
    result = forward_filter(li, lt[0], categorical_log_likelihoods(impossible[0], jnp.array([0, 3])))
    assert float(result.log_evidence) == -np.inf
    assert not bool(jnp.any(jnp.isnan(result.log_filtered)))
    comps = jax.nn.log_softmax(jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="smoothing"):
        mixture_log_probs(comps, smoothing=1.0)
