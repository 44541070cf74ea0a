"""The one driver: chunks, the non-finite policy, budgets, stopping rules, inputs, resuming."""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.loop import run_chunked_loop


class Info(NamedTuple):
    loss: jnp.ndarray
    extra: jnp.ndarray


def _counter(key, state):
    return state + 1, state * 1.0


def test_runs_all_steps_in_chunks():
    out = run_chunked_loop(jax.random.key(0), jnp.int32(0), _counter, num_steps=10, chunk_size=4,
                           progress=False)
    assert int(out.state) == 10 and not out.interrupted and out.reason == "done"
    np.testing.assert_array_equal(out.history, np.arange(10.0))


def test_a_chunk_of_mostly_nonfinite_losses_is_dropped():
    def step(key, state):  # NaN from step 5 on
        return state + 1, jnp.where(state >= 5, jnp.nan, state * 1.0)

    with pytest.warns(RuntimeWarning, match="Non-finite values within steps 4-7"):
        out = run_chunked_loop(jax.random.key(0), jnp.int32(0), step, num_steps=12,
                               chunk_size=4, progress=False)
    # Steps 4-7 hold 3 NaN of 4: fewer than half finite, so the chunk is dropped.
    assert out.interrupted and out.reason == "nonfinite" and int(out.state) == 4
    assert out.history.shape == (4,)


def test_a_few_skipped_steps_are_counted_and_kept():
    def step(key, state):  # one NaN loss in the second chunk; the state stays finite
        return state + 1, jnp.where(state == 5, jnp.nan, state * 1.0)

    with pytest.warns(RuntimeWarning, match="1 of 8 steps had a non-finite loss"):
        out = run_chunked_loop(jax.random.key(0), jnp.int32(0), step, num_steps=8, chunk_size=4,
                               progress=False)
    assert out.reason == "done" and out.num_skipped == 1 and int(out.state) == 8


def test_a_nonfinite_state_is_never_returned():
    def step(key, state):
        return jnp.where(state[0] >= 3.0, jnp.nan, state + 1.0), jnp.float32(0.0)

    with pytest.warns(RuntimeWarning, match="reward was NaN"):
        out = run_chunked_loop(jax.random.key(0), jnp.zeros(2), step, num_steps=10, chunk_size=2,
                               progress=False, explain_nonfinite=lambda infos: "reward was NaN")
    assert out.reason == "nonfinite" and bool(jnp.all(jnp.isfinite(out.state)))
    np.testing.assert_array_equal(out.state, [2.0, 2.0])


def test_time_budget_stops_after_a_chunk():
    out = run_chunked_loop(jax.random.key(0), jnp.int32(0), _counter, num_steps=10, chunk_size=3,
                           max_seconds=0.0, progress=False)
    assert out.interrupted and out.reason == "time" and int(out.state) == 3


def test_infos_are_stacked_and_the_stop_rule_is_read_after_each_chunk():
    def step(key, s):
        return s + 1, Info(s * 1.0, s * 2.0)

    out = run_chunked_loop(jax.random.key(0), jnp.int32(0), step, num_steps=10, chunk_size=2,
                           stop_fn=lambda state, infos: int(state) >= 4, progress=False)
    assert out.reason == "converged" and int(out.state) == 4 and not out.interrupted
    assert out.infos.extra.tolist() == [0.0, 2.0, 4.0, 6.0]


def test_a_resumed_run_continues_the_keys():
    def step(key, state):
        value = jax.random.uniform(key)
        return state + value, value

    whole = run_chunked_loop(jax.random.key(3), jnp.float32(0), step, num_steps=6, chunk_size=2,
                             progress=False)
    first = run_chunked_loop(jax.random.key(3), jnp.float32(0), step, num_steps=4, chunk_size=2,
                             progress=False)
    rest = run_chunked_loop(jax.random.key(3), first.state, step, num_steps=2, chunk_size=1,
                            start_step=4, progress=False)  # any chunking: the same keys
    np.testing.assert_allclose(np.concatenate([first.history, rest.history]), whole.history)
    np.testing.assert_allclose(rest.state, whole.state, rtol=1e-6)


def test_inputs_are_read_one_per_step_until_they_run_out():
    def step(key, state, x):
        return state + x["value"], x["value"]

    items = ({"value": jnp.float32(v)} for v in (1, 2, 3, 4, 5))
    out = run_chunked_loop(jax.random.key(0), jnp.float32(0), step, num_steps=None, chunk_size=2,
                           inputs=items, progress=False)
    assert float(out.state) == 15.0 and out.reason == "exhausted"
    np.testing.assert_array_equal(out.history, [1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="needs inputs"):
        run_chunked_loop(jax.random.key(0), jnp.float32(0), _counter, num_steps=None,
                         progress=False)


def test_a_chunk_compiles_once_per_step_function():
    """The hot path: a second chunk of the same size reuses the compiled program."""
    traced = chex.assert_max_traces(_counter, n=1)
    out = run_chunked_loop(jax.random.key(0), jnp.int32(0), traced, num_steps=12, chunk_size=4,
                           progress=False)
    assert int(out.state) == 12


def test_ctrl_c_returns_the_last_complete_chunk(monkeypatch):
    import amortized_ppl.loop as loop

    calls = {"n": 0}
    real = loop._run_chunk

    def interrupting(step, keys, state):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(step, keys, state)

    monkeypatch.setattr(loop, "_run_chunk", interrupting)
    with pytest.warns(RuntimeWarning, match="Interrupted after 4 steps"):
        out = run_chunked_loop(jax.random.key(0), jnp.int32(0), _counter, num_steps=10,
                               chunk_size=2, progress=False)
    assert out.reason == "interrupt" and out.interrupted and int(out.state) == 4
