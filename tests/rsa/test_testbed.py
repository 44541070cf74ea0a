"""The synthetic reasoning testbed (rsa/testbed.py): exact rules fast, the paper's curves slow."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.rsa import SyntheticReasoning


def test_aggregation_rules_are_exact(key):
    problem = jnp.array([0, 1, 2, 3], jnp.int32)
    exact = SyntheticReasoning(num_steps=4, p_verify=0.0, p_fix=0.0, p_err=0.0)
    wrong = (problem + 1) % 4

    @jax.jit
    def rules(key):
        keys = jax.random.split(key, 4)
        return (
            # K = 1 without fixes or slips is a copy: plain self-refinement.
            exact.aggregate(keys[0], wrong[None], problem),
            # A plurality of 2 against 1 wins; full verification finds a lone correct step.
            exact.aggregate(keys[1], jnp.stack([wrong, wrong, problem]), problem),
            dataclasses.replace(exact, p_verify=1.0).aggregate(
                keys[2], jnp.stack([wrong, wrong, problem]), problem
            ),
            # Certain fixes make any candidate correct; scores and step accuracy.
            dataclasses.replace(exact, p_fix=1.0).aggregate(keys[3], wrong[None], problem),
            exact.score(problem, problem),
            exact.score(wrong.at[0].set(0), problem),
            exact.step_accuracy(wrong.at[0].set(0), problem),
            jax.vmap(exact.generate, (0, None))(jax.random.split(key, 8), problem),
        )

    copy, plurality, verified, fixed, right, almost, accuracy, generated = rules(key)
    np.testing.assert_array_equal(copy, wrong)
    np.testing.assert_array_equal(plurality, wrong)
    np.testing.assert_array_equal(verified, problem)
    np.testing.assert_array_equal(fixed, problem)
    assert (float(right), float(almost), float(accuracy)) == (1.0, 0.0, 0.25)
    assert generated.shape == (8, 4) and generated.min() >= 0 and generated.max() < 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_steps=0), "num_steps: expected an int >= 1, got 0"),
        (dict(num_answers=1), "num_answers: expected an int >= 2, got 1"),
        (dict(num_hard_steps=7), "num_hard_steps: expected an int <= num_steps \\(6\\), got 7"),
        (dict(p_verify=1.5), "p_verify: expected a probability in \\[0, 1\\], got 1.5"),
    ],
)
def test_bad_parameters_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticReasoning(**kwargs)


def test_the_testbed_is_a_hashable_value():
    assert SyntheticReasoning() == SyntheticReasoning()
    assert hash(SyntheticReasoning(p_err=0.01)) == hash(SyntheticReasoning(p_err=0.01))


def _curves(population_size, subset_size, num_rounds, num_problems=128):
    testbed = SyntheticReasoning()
    keys = jax.random.split(jax.random.key(0), num_problems)
    run = jax.jit(
        jax.vmap(
            lambda k: (
                testbed.run(
                    k,
                    population_size=population_size,
                    subset_size=subset_size,
                    num_rounds=num_rounds,
                ).info
            )
        )
    )
    return jax.tree.map(np.asarray, run(keys))


# 128 problems per configuration, common keys; 4 small programs, about 3 s each test on 2 busy
# CPUs. The margins are many standard errors (benchmarks/results/rsa_testbed.json, 512 problems,
# N = 16: Pass@1 0.31 at T = 1, 0.32 at T = 5 for K = 1 and 0.86 for K = 4, s.e. 0.02 at most;
# diversity at T = 3 with K = 4: 0.027 for N = 4 and 0.074 for N = 64, s.e. 0.002).
@pytest.mark.slow
def test_pass_at_1_rises_with_rounds_and_with_subset_size():
    k1, k4 = _curves(16, 1, 5), _curves(16, 4, 5)
    pass1 = k4.mean_score.mean(0)
    se = k4.mean_score.std(0, ddof=1) / np.sqrt(128)
    assert pass1[-1] - pass1[0] > 5 * se[-1]
    assert np.all(np.diff(pass1) > 0)
    assert k4.mean_score[:, -1].mean() > k1.mean_score[:, -1].mean() + 0.3
    # RSA beats majority voting over the first generation (the trap is the plurality).
    assert pass1[-1] > k4.majority_score[:, 0].mean() + 0.3


@pytest.mark.slow
def test_small_populations_lose_diversity():
    small, large = _curves(4, 4, 3), _curves(64, 4, 3)
    assert small.diversity[:, 0].mean() == pytest.approx(large.diversity[:, 0].mean(), abs=0.03)
    assert small.diversity[:, -1].mean() < 0.6 * large.diversity[:, -1].mean()
