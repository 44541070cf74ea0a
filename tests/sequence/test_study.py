"""The ambiguity study (amortized_ppl/sequence/study.py): every predictor scored against the oracle."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.models.metahmm import TINY, build_metahmm, env_index, sample_sequences
from amortized_ppl.sequence.monte_carlo import MonteCarloPredictor
from amortized_ppl.sequence.oracle import oracle_batch
from amortized_ppl.sequence.study import (
    env_of_factors,
    evaluate_predictors,
    inverse_cdf_draws,
    make_sample_fn,
    plain_log_probs,
    summarize,
)
from amortized_ppl.sequence.transformer import NextTokenTransformer
from tests.sequence.helpers import TOY_STEPS, toy_problem


def _toy_family():
    (li, lt, le), table, sample_fn = toy_problem()
    family = types.SimpleNamespace(
        log_init=li, log_trans=lt, log_emit=le, factors=table, factor_sizes=(2, 2),
        train_envs=jnp.array([0, 1, 2]), ood_envs=jnp.array([3]),
    )
    return family, sample_fn


def test_env_of_factors_is_the_mixed_radix_index_of_the_factor_table():
    family, _ = _toy_family()
    np.testing.assert_array_equal(env_of_factors((2, 2), family.factors), jnp.arange(4))
    # On the MetaHMM family it agrees with the family's own index (the known decoders rely on it).
    hmm = build_metahmm(TINY)
    np.testing.assert_array_equal(env_of_factors(hmm.factor_sizes, hmm.factors),
                                  env_index(hmm, hmm.factors))


def test_summarize_keeps_the_forward_bins_for_the_backward_kl_with_infinite_positions():
    rng = np.random.default_rng(0)
    amb = rng.uniform(size=(4, 15))
    backward = rng.uniform(size=(4, 15))
    backward[0, :3] = np.inf  # mass on symbols the oracle rules out
    results = {"ambiguity": amb, "oracle_nll": np.zeros_like(amb), "kl": {"p": 2.0 * amb},
               "nll": {"p": amb}, "backward_kl": {"p": backward}, "posterior_kl": None}
    row = summarize(results)["predictors"]["p"]
    assert row["backward_kl_infinite_share"] == pytest.approx(3 / 60)
    assert row["mean_backward_kl"] == pytest.approx(backward[np.isfinite(backward)].mean())
    by_bin = row["backward_kl_by_ambiguity"]
    assert by_bin["count"] == row["kl_by_ambiguity"]["count"] == [20, 20, 20]
    assert sum(by_bin["count_finite"]) == 57


def test_inverse_cdf_draws_follow_the_probabilities_and_never_draw_a_zero():
    log_p = jnp.log(jnp.array([[0.0, 0.2, 0.0, 0.8, 0.0], [0.5, 0.0, 0.0, 0.0, 0.5]]))
    draws = np.asarray(inverse_cdf_draws(jax.random.key(0), log_p, 4000))  # (4000, 2)
    assert draws.shape == (4000, 2)
    assert set(draws[:, 0]) == {1, 3} and set(draws[:, 1]) == {0, 4}
    # 4,000 draws: a frequency's SD is at most 0.008, so 0.03 is a four-SD bound.
    np.testing.assert_allclose(np.mean(draws[:, 0] == 3), 0.8, atol=0.03)
    np.testing.assert_allclose(np.mean(draws[:, 1] == 4), 0.5, atol=0.03)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_make_sample_fn_draws_training_environments_and_exact_soft_targets():
    hmm = build_metahmm(TINY)
    factors, symbols, marginals = make_sample_fn(hmm, sample_sequences, exact_targets="marginals")(
        jax.random.key(0), 3)
    assert factors.shape == (3, len(hmm.factor_sizes)) and symbols.shape == (3, hmm.config.seq_len)
    assert set(np.asarray(env_index(hmm, factors))) <= set(np.asarray(hmm.train_envs))
    assert marginals.shape == (3, hmm.config.seq_len, sum(hmm.factor_sizes))
    # Every factor's block is a distribution, and before any symbol it is the prior's marginal.
    blocks = np.split(np.asarray(marginals), np.cumsum(hmm.factor_sizes)[:-1], axis=-1)
    for f, block in enumerate(blocks):
        np.testing.assert_allclose(block.sum(-1), 1.0, atol=1e-5)
        prior = np.bincount(np.asarray(hmm.factors[hmm.train_envs, f]),
                            minlength=hmm.factor_sizes[f]) / hmm.train_envs.shape[0]
        np.testing.assert_allclose(block[:, 0], np.broadcast_to(prior, block[:, 0].shape),
                                   atol=1e-5)
    # The joint targets on the same draws: a distribution over the pool whose marginals those are.
    _, _, joint = make_sample_fn(hmm, sample_sequences, exact_targets="joint")(
        jax.random.key(0), 3)
    assert joint.log_posterior.shape == (3, hmm.config.seq_len, hmm.train_envs.shape[0])
    np.testing.assert_array_equal(joint.table, hmm.factors[hmm.train_envs])
    posterior = np.exp(np.asarray(joint.log_posterior))
    np.testing.assert_allclose(posterior.sum(-1), 1.0, atol=1e-5)
    one_hots = np.concatenate([np.eye(k)[np.asarray(joint.table[:, f])]
                               for f, k in enumerate(hmm.factor_sizes)], axis=-1)
    np.testing.assert_allclose(posterior @ one_hots, marginals, atol=1e-5)
    # Labels drawn from that posterior: pool environments whose frequencies follow the marginals
    # (400 draws: a frequency's SD is at most 0.025, so 0.1 is a four-SD bound).
    _, _, draws = make_sample_fn(hmm, sample_sequences, exact_targets="draws",
                                 num_target_draws=400)(jax.random.key(0), 3)
    assert draws.factors.shape == (3, 400, hmm.config.seq_len, len(hmm.factor_sizes))
    frequencies = np.concatenate([np.mean(np.eye(k)[np.asarray(draws.factors[..., f])], axis=1)
                                  for f, k in enumerate(hmm.factor_sizes)], axis=-1)
    np.testing.assert_allclose(frequencies, marginals, atol=0.1)
    # Deterministic given the key, sequences and labels alike.
    _, again, redrawn = make_sample_fn(hmm, sample_sequences, exact_targets="draws",
                                       num_target_draws=400)(jax.random.key(0), 3)
    np.testing.assert_array_equal(again, symbols)
    np.testing.assert_array_equal(redrawn.factors, draws.factors)
    with pytest.raises(ValueError, match="exact_targets"):
        make_sample_fn(hmm, sample_sequences, exact_targets=True)
    with pytest.raises(ValueError, match="num_target_draws"):
        make_sample_fn(hmm, sample_sequences, exact_targets="draws", num_target_draws=0)
    ood_factors, _ = make_sample_fn(hmm, sample_sequences, split="ood")(jax.random.key(1), 4)
    assert set(np.asarray(env_index(hmm, ood_factors))) <= set(np.asarray(hmm.ood_envs))


@pytest.mark.slow  # trains and evaluates two predictors
def test_evaluate_predictors_and_summarize():
    family, sample_fn = _toy_family()
    plain = NextTokenTransformer(4, TOY_STEPS, size=16, num_heads=2, num_blocks=1,
                                 key=jax.random.key(0))
    # The assertions below hold for any predictor: an untrained one saves the training.
    mc = MonteCarloPredictor(4, TOY_STEPS, (2, 2), size=16, num_heads=2, num_blocks=1,
                             key=jax.random.key(1))
    _, xs = sample_fn(jax.random.key(2), 6)
    # (The importance-weighted decoder has its own test; leaving it out saves two compilations.
    # Convergence in M is the slow test below.)
    out = evaluate_predictors(jax.random.key(3), family, xs, "train", plain=plain, monte_carlo=mc,
                              num_samples=(2,), decoders=("hmm", "learned"),
                              exact_posterior=True)
    expected = {"transformer", "mc_hmm_M2", "mc_learned_M2", "mc_exact_M2"}
    assert set(out["kl"]) == expected and set(out["nll"]) == expected
    assert out["ambiguity"].shape == (6, TOY_STEPS) and out["posterior_kl"].shape == (6, TOY_STEPS)
    assert all(np.all(v >= -1e-5) for v in out["kl"].values())
    assert bool(np.all(out["posterior_kl"] >= -1e-5))
    # NLLs are of the observed symbols: the plain model's own and the oracle's (training prior).
    plain_lp = plain_log_probs(plain, xs)
    np.testing.assert_allclose(out["nll"]["transformer"],
                               -jnp.take_along_axis(plain_lp, xs[..., None], -1)[..., 0], atol=1e-5)
    oracle = oracle_batch(family.log_init, family.log_trans[family.train_envs],
                          family.log_emit[family.train_envs], xs)
    np.testing.assert_allclose(out["oracle_nll"], -oracle.token_log_probs, atol=1e-5)
    summary = summarize(out)
    assert summary["predictors"]["transformer"]["kl_by_ambiguity"]["count"] == [20, 20, 20]
    np.testing.assert_allclose(summary["predictors"]["transformer"]["mean_kl"],
                               out["kl"]["transformer"].mean(), rtol=1e-6)
    assert len(summary["posterior_kl_by_position"]) == TOY_STEPS
    assert len(summary["mean_ambiguity_by_position"]) == TOY_STEPS
    # Backward KL: the plain model has full support, so it is finite everywhere and >= 0.
    assert set(out["backward_kl"]) == expected
    transformer = summary["predictors"]["transformer"]
    assert transformer["backward_kl_infinite_share"] == 0.0
    np.testing.assert_allclose(transformer["mean_backward_kl"],
                               out["backward_kl"]["transformer"].mean(), rtol=1e-6)
    assert transformer["backward_kl_by_ambiguity"]["count"] == [20, 20, 20]


@pytest.mark.slow
def test_the_ceiling_converges_to_the_oracle_as_m_grows():
    family, sample_fn = _toy_family()
    _, xs = sample_fn(jax.random.key(2), 6)
    out = evaluate_predictors(jax.random.key(3), family, xs, "train", num_samples=(2, 64),
                              exact_posterior=True)
    assert set(out["kl"]) == {"mc_exact_M2", "mc_exact_M64"}
    # Environments drawn from the exact posterior: the gap to the oracle is Monte Carlo error only.
    # Over 6 seeds of the sequences and the draws: M = 2 gave 0.056-0.146, M = 64 0.001-0.003.
    assert out["kl"]["mc_exact_M64"].mean() < out["kl"]["mc_exact_M2"].mean()
    assert out["kl"]["mc_exact_M64"].mean() < 0.01


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_exact_ceiling_alone_and_the_ood_oracle_over_every_environment():
    family, sample_fn = _toy_family()
    _, xs = sample_fn(jax.random.key(4), 2)
    # The ceiling needs the oracle's posterior even without a Monte Carlo predictor.
    out = evaluate_predictors(jax.random.key(5), family, xs, "ood", num_samples=(4,),
                              exact_posterior=True)
    assert set(out["kl"]) == {"mc_exact_M4"} and out["posterior_kl"] is None
    # Held-out sequences: the oracle's prior is all 4 environments, not the 3 training ones.
    np.testing.assert_allclose(out["ambiguity"][:, 0], np.log(4.0), atol=1e-5)
    with pytest.raises(KeyError):
        summarize(out)["posterior_kl_by_position"]
