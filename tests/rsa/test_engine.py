"""The RSA engine (rsa/engine.py) and its metrics (rsa/metrics.py): exact, tiny shapes."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.rsa import (
    RSAInfo,
    RSAState,
    build_kernel,
    population_metrics,
    population_metrics_host,
    rsa,
    rsa_host,
    sample_subsets,
)
from amortized_ppl.rsa.metrics import MetricFns

N, K, T = 5, 3, 4


def generate(key):
    return jax.random.randint(key, (3,), 0, 3)


def aggregate(key, subset):  # the subset's element-wise maximum: deterministic, no key use
    return jnp.max(subset, axis=0)


def score(candidate):
    return jnp.mean(candidate == 2)


def test_subsets_have_distinct_indices_in_range(key):
    indices = np.asarray(sample_subsets(key, 7, 4))
    assert indices.shape == (7, 4) and indices.dtype == np.int32
    assert indices.min() >= 0 and indices.max() < 7
    assert all(len(set(row)) == 4 for row in indices)
    # K = N: every member reads the whole population, each in its own order.
    full = np.asarray(sample_subsets(key, 6, 6))
    assert all(sorted(row) == list(range(6)) for row in full)
    assert len({tuple(row) for row in full}) > 1


def test_a_step_aggregates_each_member_from_its_own_subset(key):
    # Candidate i is (i, i, i): aggregating returns the subset's first column, the parents.
    kernel = build_kernel(
        lambda k: jnp.zeros(K, jnp.int32), lambda k, s: s[:, 0], population_size=N, subset_size=K
    )
    state = RSAState(jnp.repeat(jnp.arange(N, dtype=jnp.int32)[:, None], K, 1), jnp.int32(0))
    new, _ = jax.jit(kernel.step)(key, state)
    parents = np.asarray(new.population)
    assert int(new.round) == 1
    assert parents.min() >= 0 and parents.max() < N
    assert all(len(set(row)) == K for row in parents)
    assert len({tuple(row) for row in parents}) > 1  # members draw independently


def test_rsa_counts_the_first_generation_and_is_deterministic(key):
    kernel = build_kernel(generate, aggregate, population_size=N, subset_size=K, score_fn=score)

    @jax.jit
    def runs(key):
        sizes = dict(population_size=N, subset_size=K)
        single = rsa(key, generate, aggregate, num_rounds=1, **sizes)
        start = kernel.metrics(kernel.init(jax.random.split(key)[0]).population)
        return rsa(key, generate, aggregate, num_rounds=T, score_fn=score, **sizes), single, start

    (first, single, start), (again, _, _) = runs(key), runs(key)
    other, _, _ = runs(jax.random.key(1))
    assert first.population.shape == (N, 3)
    for name in RSAInfo._fields[:-1]:
        assert getattr(first.info, name).shape == (T,), name
    assert first.info.diagnostic is None
    chex.assert_trees_all_equal(first, again)
    assert not all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(other))
    )
    # Round 0 holds the first generation's metrics; a max-aggregator never lowers the best.
    chex.assert_trees_all_equal(jax.tree.map(lambda v: v[0], first.info), start)
    assert np.all(np.diff(first.info.best_score) >= 0)
    assert single.info.diversity.shape == (1,) and np.isnan(single.info.mean_score[0])


def test_the_jitted_step_and_the_scan_trace_once(key):
    kernel = build_kernel(generate, aggregate, population_size=N, subset_size=K, score_fn=score)
    step = jax.jit(chex.assert_max_traces(kernel.step, n=1))
    state = jax.jit(kernel.init)(key)
    for i in range(3):
        state, info = step(jax.random.key(i), state)
    assert int(state.round) == 3
    calls = []

    def counted(k, subset):
        calls.append(1)
        return aggregate(k, subset)

    # T - 1 = 5 aggregation rounds, one trace of the scanned step.
    jax.make_jaxpr(
        lambda k: rsa(k, generate, counted, population_size=N, subset_size=K, num_rounds=6)
    )(key)
    assert len(calls) == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(population_size=0), "population_size: expected an int >= 1, got 0"),
        (dict(subset_size=0), "subset_size: expected an int >= 1, got 0"),
        (dict(subset_size=N + 1), f"subset_size: expected an int <= population_size \\({N}\\)"),
        (dict(num_rounds=0), "num_rounds: expected an int >= 1, got 0"),
        (dict(num_rounds=True), "num_rounds: expected an int >= 1, got True"),
    ],
)
def test_bad_sizes_are_named(key, kwargs, match):
    sizes = dict(population_size=N, subset_size=K, num_rounds=T) | kwargs
    for run in (rsa, rsa_host):
        with pytest.raises(ValueError, match=match):
            run(key, generate, aggregate, **sizes)


def test_bad_functions_and_keys_are_named(key):
    sizes = dict(population_size=N, subset_size=K, num_rounds=2)
    with pytest.raises(TypeError, match="generate_fn: expected a callable, got int"):
        rsa(key, 3, aggregate, **sizes)
    with pytest.raises(TypeError, match="score_fn: expected a callable, got str"):
        rsa(key, generate, aggregate, score_fn="accuracy", **sizes)
    with pytest.raises(TypeError, match="key: expected a JAX PRNG key"):
        rsa(0, generate, aggregate, **sizes)
    with pytest.raises(TypeError, match="aggregate_fn: expected a candidate of the generator"):
        jax.eval_shape(lambda k: rsa(k, generate, lambda _, s: s, **sizes), key)  # (K, 3)


def test_metrics_are_exact_and_the_host_variant_agrees():
    population = np.array([[0, 1], [0, 1], [2, 2], [2, 2], [1, 0]], np.int32)
    fns = MetricFns(
        score_fn=lambda c: (c[0] + c[1]) / 4,
        correct_threshold=1.0,
        diagnostic_fn=lambda c: c[0] == 2,
    )
    array = jax.jit(population_metrics, static_argnums=1)(jnp.asarray(population), fns)
    host = population_metrics_host(list(population), fns)
    # Two groups of two tie: the vote goes to the group met first, (0, 1), scoring 0.25.
    hamming = np.mean(population[:, None, :] != population[None, :, :], axis=-1)
    expected = RSAInfo(
        mean_score=0.55,
        best_score=1.0,
        pass_at_n=1.0,
        majority_score=0.25,
        diversity=hamming.sum() / 20,
        distinct_fraction=0.6,
        diagnostic=0.4,
    )
    for info in (array, host):
        for name, value in expected._asdict().items():
            assert float(getattr(info, name)) == pytest.approx(value, abs=1e-6), name
    # A higher threshold; no score_fn (NaN scores; a correct_fn alone still gives Pass@N);
    # votes on an answer_fn's sums (1, 1, 4, 4, 1): two groups, the first of 3 members.
    variants = (
        fns._replace(correct_threshold=2.0),
        MetricFns(correct_fn=lambda c: c[0] == 1),
        fns._replace(answer_fn=lambda c: c[0] + c[1]),
    )
    arrays = jax.jit(lambda p: [population_metrics(p, f) for f in variants])(population)
    for array, variant in zip(arrays, variants):
        host = population_metrics_host(list(population), variant)
        chex.assert_trees_all_close(tuple(array), tuple(host), atol=1e-6)
    strict, bare, answers = arrays
    assert float(strict.pass_at_n) == 0.0
    assert np.isnan(bare.mean_score) and float(bare.pass_at_n) == 1.0
    assert float(answers.distinct_fraction) == pytest.approx(0.4)
    assert float(answers.majority_score) == pytest.approx(0.25)


def test_host_variant_matches_the_array_structure_and_its_sampling_rule(key):
    ids = itertools.count()
    result = rsa_host(
        key,
        lambda rng: next(ids),
        lambda rng, subset: tuple(subset),
        population_size=N,
        subset_size=K,
        num_rounds=2,
    )
    # Round 1 aggregates the ids 0..N-1 of round 0: each member's parents, distinct.
    assert len(result.population) == N
    assert all(len(set(row)) == K and set(row) <= set(range(N)) for row in result.population)
    assert len(set(result.population)) > 1

    def host_generate(rng):
        return rng.integers(0, 3, size=3)

    def host_aggregate(rng, subset):
        return np.max(np.stack(subset), axis=0)

    host = [
        rsa_host(
            key,
            host_generate,
            host_aggregate,
            population_size=N,
            subset_size=K,
            num_rounds=T,
            score_fn=lambda c: np.mean(c == 2),
        )
        for _ in range(2)
    ]
    array = jax.eval_shape(
        lambda k: rsa(
            k, generate, aggregate, population_size=N, subset_size=K, num_rounds=T, score_fn=score
        ),
        key,
    )
    assert type(host[0].info) is type(array.info)
    assert all(getattr(array.info, name).shape == (T,) for name in RSAInfo._fields[:-1])
    for name in RSAInfo._fields[:-1]:
        values = getattr(host[0].info, name)
        assert isinstance(values, np.ndarray) and values.shape == (T,), name
        np.testing.assert_array_equal(values, getattr(host[1].info, name))  # deterministic
    assert np.all(np.diff(host[0].info.best_score) >= 0)
