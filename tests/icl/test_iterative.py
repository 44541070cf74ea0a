"""The iterative explicit learner (amortized_ppl/icl/iterative.py): the state is a running mean
of the batches' updates, padding is ignored, the one driver streams the same state."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.icl import (
    build_iterative_learner,
    icl_loss,
    linear_regression,
    sample_tasks,
    stream_context,
)

LEARNER = build_iterative_learner(1, 2, z_dim=8, size=16, num_blocks=1, batch_size=4,
                                  key=jax.random.key(0))


def _context(n=10):
    x = jax.random.normal(jax.random.key(1), (n, 1))
    return x, 2.0 * x[:, 0] + 0.5, jnp.ones(n, bool)


@pytest.mark.slow  # compiles the learner's scan over batches three times
def test_padding_and_masked_rows_change_nothing():
    x, y, mask = _context(10)  # 10 points: batches of 4, 4 and 2 real rows
    read = eqx.filter_jit(LEARNER.read)
    state = read(x, y, mask)
    assert float(state.count) == 10.0
    padded = read(jnp.pad(x, ((0, 6), (0, 0)), constant_values=7.0),
                          jnp.pad(y, (0, 6), constant_values=7.0), jnp.pad(mask, (0, 6)))
    np.testing.assert_allclose(padded.z, state.z, rtol=1e-5, atol=1e-6)
    assert float(padded.count) == 10.0
    empty = read(x, y, jnp.zeros(10, bool))  # no points: the initial state
    np.testing.assert_allclose(empty.z, LEARNER.initial_z, rtol=1e-6)


@pytest.mark.slow  # compiles the update
def test_an_update_weighs_a_batch_by_its_share_of_the_points_seen():
    x, y, mask = _context(8)
    update = eqx.filter_jit(LEARNER.update)
    first = update(LEARNER.init(), x[:4], y[:4], mask[:4])
    np.testing.assert_allclose(first.count, 4.0)
    assert float(jnp.max(jnp.abs(first.z - LEARNER.initial_z))) > 1e-3  # the first batch moves z
    # After a million points, four more move z by at most 4e-6 of what one update can.
    late = update(first._replace(count=jnp.asarray(1e6)), x[4:], y[4:], mask[4:])
    assert float(jnp.max(jnp.abs(late.z - first.z))) < 1e-4 * float(
        jnp.max(jnp.abs(first.z - LEARNER.initial_z)))


@pytest.mark.slow  # compiles the driver's chunk and the scan
def test_the_one_driver_streams_the_state_read_gives():
    x, y, mask = _context(12)
    batches = [(x[i:i + 4], y[i:i + 4], mask[i:i + 4]) for i in range(0, 12, 4)]
    streamed = stream_context(LEARNER, batches, chunk_size=2)
    read = eqx.filter_jit(LEARNER.read)(x, y, mask)
    np.testing.assert_allclose(streamed.z, read.z, rtol=1e-5, atol=1e-6)
    assert float(streamed.count) == 12.0


@pytest.mark.slow  # compiles the loss and the learner over a batch
def test_it_is_a_learner_with_a_probe_and_refuses_unknown_predictors():
    batch = sample_tasks(jax.random.key(2), linear_regression(1), 2, max_context=8,
                         min_context=4)
    loss, (mse, nll, probe_mse) = eqx.filter_jit(icl_loss)(LEARNER, batch)
    assert np.isfinite(float(loss)) and np.isfinite(float(probe_mse))
    mean, log_scale = eqx.filter_jit(LEARNER)(batch.context_x[0], batch.context_y[0], batch.context_mask[0],
                              batch.query_x[0])
    assert mean.shape == log_scale.shape == (8,)
    with pytest.raises(ValueError, match="predictor"):
        build_iterative_learner(1, 2, predictor="rnn", key=jax.random.key(0))
