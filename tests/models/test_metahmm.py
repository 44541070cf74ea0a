"""MetaHMM generator: valid matrices, factor indexing, the held-out split, sampling, bad inputs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp

from amortized_ppl.models.metahmm import (
    SMALL,
    TINY,
    MetaHMMConfig,
    build_metahmm,
    check_row_stochastic,
    check_symbols,
    env_index,
    family_counts,
    get_config,
    sample_batch,
    sample_sequences,
)


@pytest.fixture(scope="module")
def tiny():
    return build_metahmm(TINY)


@pytest.fixture(scope="module")
def small():
    return build_metahmm(SMALL)


def test_every_tiny_matrix_is_row_stochastic(tiny):
    for name, log_probs in [("trans", tiny.log_trans), ("emit", tiny.log_emit)]:
        probs = np.exp(np.asarray(log_probs, np.float64))
        assert np.all(probs >= 0), name
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(np.exp(tiny.log_init), np.full(8, 1 / 8), rtol=1e-6)
    # Emissions carry noise everywhere; transitions are sparse (exact zeros off the cycles).
    assert np.all(np.isfinite(tiny.log_emit))
    assert np.any(np.isneginf(tiny.log_trans))


@pytest.mark.parametrize(
    "name, shape", [("tiny", (512, 8, 16, 64, 64)), ("small", (12288, 20, 50, 200, 1000))]
)
def test_shapes_and_sizes(name, shape, request):
    hmm = request.getfixturevalue(name)
    num_envs, num_states, num_symbols, seq_len, num_ood = shape
    assert hmm.config == get_config(name)
    assert (hmm.num_envs, hmm.num_states, hmm.num_symbols) == (num_envs, num_states, num_symbols)
    assert hmm.config.seq_len == seq_len
    assert hmm.log_init.shape == (num_states,)
    assert hmm.log_trans.shape == (num_envs, num_states, num_states)
    assert hmm.log_emit.shape == (num_envs, num_states, num_symbols)
    assert hmm.log_trans.dtype == jnp.float32 and hmm.log_emit.dtype == jnp.float32
    assert hmm.factors.shape == (num_envs, len(hmm.factor_names)) and hmm.factors.dtype == jnp.int32
    assert int(np.prod(hmm.factor_sizes)) == num_envs
    assert hmm.ood_envs.shape == (num_ood,) and hmm.train_envs.shape == (num_envs - num_ood,)


def test_small_matches_the_paper_factors(small):
    assert small.factor_sizes == (4, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3)
    assert small.factor_names[:4] == (
        "base_cycle",
        "base_direction",
        "base_speed",
        "family_0_group",
    )
    assert small.factor_names[-1] == "emission_shift"


def test_env_index_inverts_the_factor_table(tiny):
    ids = env_index(tiny, tiny.factors)
    np.testing.assert_array_equal(ids, np.arange(tiny.num_envs))
    batched = env_index(tiny, tiny.factors.reshape(2, -1, len(tiny.factor_sizes)))
    np.testing.assert_array_equal(batched, np.arange(tiny.num_envs).reshape(2, -1))
    with pytest.raises(ValueError, match="base_cycle must be in"):
        env_index(tiny, tiny.factors[0].at[0].set(2))
    with pytest.raises(ValueError, match="shape"):
        env_index(tiny, tiny.factors[:, :-1])


def test_split_is_disjoint_and_covering(tiny, small):
    for hmm in (tiny, small):
        train, ood = np.asarray(hmm.train_envs), np.asarray(hmm.ood_envs)
        assert np.intersect1d(train, ood).size == 0
        np.testing.assert_array_equal(
            np.sort(np.concatenate([train, ood])), np.arange(hmm.num_envs)
        )


def test_ood_environments_are_unseen_combinations_of_seen_values(tiny, small):
    for hmm in (tiny, small):
        factors = np.asarray(hmm.factors)
        train, ood = factors[hmm.train_envs], factors[hmm.ood_envs]
        train_tuples = set(map(tuple, train))
        assert not any(tuple(row) in train_tuples for row in ood)
        for f in range(factors.shape[1]):
            assert set(ood[:, f]) <= set(train[:, f])


def test_environments_are_distinct(tiny):
    flat = np.concatenate(
        [
            np.exp(tiny.log_trans).reshape(tiny.num_envs, -1),
            np.exp(tiny.log_emit).reshape(tiny.num_envs, -1),
        ],
        axis=1,
    )
    assert len(np.unique(flat.round(5), axis=0)) == tiny.num_envs


def test_construction_is_deterministic_given_the_seed(tiny):
    again = build_metahmm(TINY)
    for a, b in zip(jax.tree.leaves(tiny[1:]), jax.tree.leaves(again[1:])):
        np.testing.assert_array_equal(a, b)
    other = build_metahmm(dataclasses.replace(TINY, seed=1))
    assert not np.array_equal(other.log_trans, tiny.log_trans)
    assert not np.array_equal(other.ood_envs, tiny.ood_envs)


def test_cycles_of_a_family_group_are_summed():
    # Three cycles of length >= 3 give >= 9 edges; the reference's overwrite kept only the last
    # cycle (<= 8 edges).
    config = dataclasses.replace(
        SMALL, cycles_per_group=3, family_speeds=1, cycle_length_range=(3, 8)
    )
    counts = family_counts(config, np.random.default_rng(0))
    edges = counts.sum(axis=(-2, -1))
    assert np.all(edges >= 9) and np.all(edges <= 24)


def test_sampling_is_deterministic_and_in_range(tiny):
    env_ids = jnp.array([0, 5, 511, 5])
    symbols, states = sample_sequences(jax.random.key(0), tiny, env_ids)
    again, _ = sample_sequences(jax.random.key(0), tiny, env_ids)
    other, _ = sample_sequences(jax.random.key(1), tiny, env_ids)
    assert symbols.shape == states.shape == (4, 64)
    assert symbols.dtype == states.dtype == jnp.int32
    np.testing.assert_array_equal(symbols, again)
    assert not np.array_equal(symbols, other)
    assert 0 <= int(symbols.min()) and int(symbols.max()) < 16
    assert 0 <= int(states.min()) and int(states.max()) < 8
    # Every sampled transition has positive probability under its environment.
    step_log_probs = tiny.log_trans[env_ids[:, None], states[:, :-1], states[:, 1:]]
    assert np.all(np.isfinite(step_log_probs))
    short, _ = sample_sequences(jax.random.key(0), tiny, env_ids, seq_len=7)
    assert short.shape == (4, 7)


def test_sample_batch_draws_from_the_requested_split(tiny):
    env_ids, symbols = sample_batch(jax.random.key(2), tiny, 16, split="ood")
    assert symbols.shape == (16, 64) and env_ids.shape == (16,)
    assert set(np.asarray(env_ids)) <= set(np.asarray(tiny.ood_envs))
    env_ids, _ = sample_batch(jax.random.key(2), tiny, 16)
    assert set(np.asarray(env_ids)) <= set(np.asarray(tiny.train_envs))
    with pytest.raises(ValueError, match="split"):
        sample_batch(jax.random.key(2), tiny, 16, split="test")
    with pytest.raises(ValueError, match="batch_size"):
        sample_batch(jax.random.key(2), tiny, 0)


def test_sampled_frequencies_match_the_matrices(tiny):
    env = 123
    symbols, states = sample_sequences(jax.random.key(3), tiny, jnp.array([env]), seq_len=20_000)
    symbols, states = np.asarray(symbols[0]), np.asarray(states[0])
    trans = np.zeros((8, 8))
    np.add.at(trans, (states[:-1], states[1:]), 1)
    emit = np.zeros((8, 16))
    np.add.at(emit, (states, symbols), 1)
    # ~2,500 visits per state: frequency SDs <= 0.01, so 0.05 is a loose five-SD bound.
    np.testing.assert_allclose(
        trans / trans.sum(1, keepdims=True), np.exp(tiny.log_trans[env]), atol=0.05
    )
    np.testing.assert_allclose(
        emit / emit.sum(1, keepdims=True), np.exp(tiny.log_emit[env]), atol=0.05
    )


@pytest.mark.slow
def test_tiny_is_ambiguous_early_and_resolved_late(tiny):
    env_ids, symbols = sample_batch(jax.random.key(4), tiny, 32)

    def log_evidence(log_trans, log_emit, xs):
        def step(log_pred, x):
            joint = log_pred + log_emit[:, x]
            norm = logsumexp(joint)
            return logsumexp((joint - norm)[:, None] + log_trans, axis=0), norm

        _, norms = jax.lax.scan(step, tiny.log_init, xs)
        return jnp.cumsum(norms)

    @jax.jit
    def posterior_and_entropy(log_trans, log_emit, symbols):
        per_env = jax.vmap(jax.vmap(log_evidence, (0, 0, None)), (None, None, 0))
        log_post = jax.nn.log_softmax(per_env(log_trans, log_emit, symbols), axis=1)
        finite = jnp.where(jnp.isfinite(log_post), log_post, 0.0)
        return log_post, -jnp.sum(jnp.exp(log_post) * finite, axis=1)

    log_post, entropy = posterior_and_entropy(tiny.log_trans, tiny.log_emit, symbols)
    mean_entropy = np.asarray(entropy.mean(0))
    assert mean_entropy[0] > 0.8 * np.log(tiny.num_envs)  # one symbol leaves most envs possible
    assert 1.0 < mean_entropy[7] < mean_entropy[0]  # still ambiguous after 8 symbols
    assert mean_entropy[-1] < 0.2  # resolved by the end
    true_post = jnp.exp(log_post[jnp.arange(32), env_ids, -1])
    assert float(true_post.mean()) > 0.9


def test_check_symbols_accepts_valid_and_names_bad_inputs():
    out = check_symbols(np.array([[0, 15, 3]], np.int64), 16)
    assert out.dtype == jnp.int32 and out.shape == (1, 3)
    with pytest.raises(ValueError, match=r"vocabulary \[0, 16\); got 16"):
        check_symbols(jnp.array([1, 16, 2]), 16)
    with pytest.raises(ValueError, match="got -1"):
        check_symbols(jnp.array([1, -1]), 16)
    with pytest.raises(ValueError, match="empty"):
        check_symbols(jnp.zeros((3, 0), jnp.int32), 16)
    with pytest.raises(ValueError, match="integer dtype"):
        check_symbols(jnp.array([1.0, 2.0]), 16)
    with pytest.raises(ValueError, match="scalar"):
        check_symbols(jnp.int32(3), 16)
    # Under jit only shape and dtype can be checked.
    traced = jax.jit(lambda x: check_symbols(x, 16))(jnp.array([1, 2]))
    np.testing.assert_array_equal(traced, [1, 2])


def test_sample_sequences_rejects_bad_env_ids_and_lengths(tiny):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="env_ids must be in"):
        sample_sequences(key, tiny, jnp.array([0, 512]))
    with pytest.raises(ValueError, match="integers"):
        sample_sequences(key, tiny, jnp.array([0.0]))
    with pytest.raises(ValueError, match="seq_len"):
        sample_sequences(key, tiny, jnp.array([0]), seq_len=0)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_states": 0}, "num_states must be >= 1"),
        ({"num_symbols": 3}, "num_symbols .* largest emission group"),
        ({"emission_groups": 9}, "emission_groups must be in"),
        ({"base_cycles": 0}, "base_cycles must be >= 1"),
        ({"base_directions": 3}, "base_directions must be 1"),
        ({"cycle_length_range": (3, 9)}, "cycle_length_range"),
        ({"family_speeds": 3}, "family_speeds must be <"),
        ({"num_ood": 512}, "num_ood must be in"),
        ({"emission_noise": -1.0}, "emission_noise"),
        ({"seq_len": 2.5}, "seq_len must be an int"),
    ],
)
def test_invalid_configurations_raise(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **change)


def test_get_config_and_row_check_errors():
    assert get_config("small") is SMALL
    with pytest.raises(ValueError, match=r"\['small', 'tiny'\]"):
        get_config("large")
    with pytest.raises(ValueError, match="row-stochastic: row \\(1, 0\\)"):
        check_row_stochastic("transition matrices", np.array([[[1.0, 0.0]], [[0.5, 0.4]]]))
    with pytest.raises(ValueError, match="negative"):
        check_row_stochastic("emission matrices", np.array([[1.5, -0.5]]))
    with pytest.raises(ValueError, match="MetaHMMConfig"):
        build_metahmm({"num_states": 8})
    assert isinstance(TINY, MetaHMMConfig)
