"""Sampling alone: a scan of NUTS transitions of every chain on a standard normal, each chain
with its own step size; the trace's layout and the per-step hook."""

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.reference.sampling import ChainTrace, sample_chains

NUM_CHAINS, NUM_SAMPLES, DIM = 4, 200, 2
# Chain 0 takes small steps: it needs more leapfrog steps per transition than the others.
STEP_SIZE = jnp.array([0.2, 0.9, 0.9, 0.9])


def logdensity_fn(position):
    return -0.5 * jnp.sum(position["x"] ** 2)


@pytest.fixture(scope="module")
def run():
    seen = []

    def on_step(num_done):
        jax.debug.callback(lambda n: seen.append(int(n)), num_done)

    @eqx.filter_jit
    def sample(key):
        positions = {"x": jnp.linspace(-1.0, 1.0, NUM_CHAINS * DIM).reshape(NUM_CHAINS, DIM)}
        states = jax.vmap(lambda p: blackjax.nuts.init(p, logdensity_fn))(positions)
        return sample_chains(
            key,
            states,
            logdensity_fn,
            STEP_SIZE,
            jnp.ones((NUM_CHAINS, DIM)),
            num_samples=NUM_SAMPLES,
            max_num_doublings=6,
            on_step=on_step,
        )

    last, trace = sample(jax.random.key(0))
    jax.effects_barrier()
    return last, trace, seen, sample


def test_trace_layout_is_chains_first(run):
    last, trace, _, _ = run
    assert isinstance(trace, ChainTrace)
    assert trace.position["x"].shape == (NUM_CHAINS, NUM_SAMPLES, DIM)
    for field in ("logdensity", "is_divergent", "acceptance_rate", "num_integration_steps",
                  "tree_depth"):
        assert getattr(trace, field).shape == (NUM_CHAINS, NUM_SAMPLES), field
    np.testing.assert_array_equal(last.position["x"], trace.position["x"][:, -1])
    np.testing.assert_allclose(
        trace.logdensity, -0.5 * jnp.sum(trace.position["x"] ** 2, axis=-1), rtol=1e-5
    )
    assert np.all(trace.tree_depth >= 1)


def test_draws_follow_the_standard_normal(run):
    _, trace, _, _ = run
    draws = np.asarray(trace.position["x"]).reshape(-1, DIM)
    # 800 nearly independent draws: the mean's standard error is ~0.035, the SD's ~2.5%.
    assert np.all(np.abs(draws.mean(axis=0)) < 0.2), draws.mean(axis=0)
    assert np.all(np.abs(draws.std(axis=0) - 1.0) < 0.15), draws.std(axis=0)
    assert not np.any(trace.is_divergent)


def test_each_chain_uses_its_own_step_size_and_key(run):
    _, trace, _, _ = run
    steps = np.asarray(trace.num_integration_steps).mean(axis=1)
    assert steps[0] > 2 * steps[1:].max(), steps
    assert not np.allclose(trace.position["x"][1], trace.position["x"][2])


def test_on_step_sees_every_transition_and_keys_fix_the_draws(run):
    _, trace, seen, sample = run
    assert sorted(seen) == list(range(1, NUM_SAMPLES + 1))
    _, again = sample(jax.random.key(0))
    np.testing.assert_array_equal(again.position["x"], trace.position["x"])
