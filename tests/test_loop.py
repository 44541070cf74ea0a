"""The chunked training-loop driver."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.loop import run_chunked_loop


def _step(key, state):
    # A counter whose "loss" is the step index; NaN from step 7 on.
    loss = jnp.where(state >= 7, jnp.nan, state.astype(jnp.float32))
    return state + 1, loss


def test_runs_all_steps_in_chunks():
    out = run_chunked_loop(jax.random.key(0), jnp.int32(0), lambda k, s: (s + 1, s * 1.0),
                           num_steps=10, chunk_size=4, progress=False)
    assert int(out.state) == 10 and not out.interrupted
    np.testing.assert_array_equal(out.history, np.arange(10.0))


def test_non_finite_loss_keeps_the_state_before_the_chunk():
    with pytest.warns(RuntimeWarning, match="Non-finite loss within steps 4-7"):
        out = run_chunked_loop(jax.random.key(0), jnp.int32(0), _step, num_steps=12,
                               chunk_size=4, progress=False)
    assert out.interrupted and int(out.state) == 4 and out.history.shape == (4,)


def test_time_budget_stops_after_a_chunk():
    out = run_chunked_loop(jax.random.key(0), jnp.int32(0), lambda k, s: (s + 1, s * 1.0),
                           num_steps=10, chunk_size=3, max_seconds=0.0, progress=False)
    assert out.interrupted and int(out.state) == 3


def test_info_tuples_are_stacked_and_nonfinite_is_explained():
    from typing import NamedTuple

    class Info(NamedTuple):
        loss: jnp.ndarray
        extra: jnp.ndarray

    def step(key, s):
        return s + 1, Info(jnp.where(s >= 6, jnp.nan, s * 1.0), s * 2.0)

    out = run_chunked_loop(jax.random.key(0), jnp.int32(0), step, num_steps=4, chunk_size=2,
                           progress=False)
    assert out.reason == "done" and out.infos.extra.tolist() == [0.0, 2.0, 4.0, 6.0]
    with pytest.warns(RuntimeWarning, match="reward was NaN"):
        out = run_chunked_loop(jax.random.key(0), jnp.int32(0), step, num_steps=10, chunk_size=3,
                               progress=False, explain_nonfinite=lambda info: "reward was NaN")
    assert out.reason == "nonfinite" and out.history.shape == (6,)
