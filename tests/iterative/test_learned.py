"""The learned update beats its own base at equal passes (issue 17), on a fixed model.

Logistic regression with two covariates, ``N = 1000`` in mini-batches of 100 (10 per pass). The
readout network is trained briefly by ``fit_iterative`` (the readout's ELBO, no forward KL) and
scored after one pass, beside the base (the same engine untrained: the network off), from the
same Laplace start with the same key, against the base's converged state (16 passes). Slow
tier: about a minute of training and compiling, a third of the default tier's budget.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.guides import AutoIterativeAmortizedMultivariateNormal
from amortized_ppl.iterative import TrainingSize, fit_iterative
from amortized_ppl.iterative.passes import run_passes
from amortized_ppl.models import logistic_regression as lg

N, M = 1000, 100
NUM_TEST = 16
TRAIN_STEPS = 120
RATIO_BOUND = 0.85
"""Median error of the learned pass over the base's. Measured with this test's settings over
training keys 0, 1, 2: with the unbounded readout 0.589, 0.558, 0.355 (mean 0.50, SD 0.13; after 40
steps 0.84, 0.74, 0.90); with the tanh-bounded readout of the kernel today 0.538, 0.469, 0.551
(mean 0.52, SD 0.04; key 0 after 40 steps 0.80). The bound is 2.7 SDs of the wider spread above
the mean, and still a clear win over the base (ratio 1)."""


@eqx.filter_jit
def _start(engine, problem, arguments, mask):
    rows = jnp.arange(M)

    def one(arguments, mask):
        return engine.start(problem, engine.init_state(problem), problem.take(arguments, rows),
                            mask[rows], N // M)

    return jax.vmap(one)(arguments, mask)


@eqx.filter_jit
def _one_pass(engine, problem, keys, state, arguments, mask):
    def one(key, state, arguments, mask):
        return run_passes(key, engine.kernel(problem)[1], engine.network, state, arguments,
                          mask, problem.take, batch_size=M, num_passes=1)[0]

    return jax.vmap(one)(keys, state, arguments, mask)


def _refine(engine, problem, keys, arguments, mask, num_passes):
    """Every data set at once, passes one at a time (one compiled pass for every count)."""
    state = _start(engine, problem, arguments, mask)
    for p in range(num_passes):
        state = _one_pass(engine, problem, jax.vmap(jax.random.fold_in, (0, None))(keys, p),
                          state, arguments, mask)
    return np.asarray(state.loc), np.sqrt(np.sum(np.asarray(state.scale_tril) ** 2, axis=-1))


@pytest.mark.slow
def test_a_briefly_trained_update_beats_the_base_after_one_pass():
    design = functools.partial(lg.design_fn, num_features=2)
    guide = AutoIterativeAmortizedMultivariateNormal(
        lg.model, batch_size=M, summary_size=4, hidden_size=8, memory_size=8, head_width=32)
    result = fit_iterative(jax.random.key(0), guide, design_fn=design,
                           sizes=[TrainingSize((N, N), M, 1)], num_iterations=TRAIN_STEPS,
                           datasets_per_step=16, elbo_weight=1.0, kl_weight=0.0,
                           learning_rate=3e-2, progress=False)
    problem = guide.problem
    base, learned = guide.engine(guide.init_params()), guide.engine(result.params)
    sims = problem.simulator(design, (N, N))(jax.random.key(99), NUM_TEST)
    keys = jax.random.split(jax.random.key(1000), NUM_TEST)
    ref_loc, ref_sd = _refine(base, problem, keys, sims.arguments, sims.mask, 16)
    base_errors, learned_errors = (
        np.abs(_refine(engine, problem, keys, sims.arguments, sims.mask, 1)[0] - ref_loc) / ref_sd
        for engine in (base, learned))
    ratio = np.median(learned_errors) / np.median(base_errors)
    assert ratio < RATIO_BOUND, (np.median(learned_errors), np.median(base_errors))
