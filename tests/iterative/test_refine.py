"""Refinement on the one driver (iterative/refine.py): arrays in memory, streamed batches,
tolerances, interruption, non-finite states, warm starts from a one-shot guide."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl import sample_state
from amortized_ppl.guides import AutoIterativeAmortizedMultivariateNormal
from amortized_ppl.iterative.refine import (
    RefineError,
    refine,
    refine_stream,
    state_change,
    warm_start_state,
)
from amortized_ppl.models.linear_regression import exact_posterior
from tests.helpers import exact_linear_guide
from tests.iterative.linear import data, errors, linear_guide


def test_refine_arrays_is_exact_and_stops_on_tolerance(key):
    guide, params = linear_guide()
    x, y = data(500)
    result = refine(key, guide, params, x, y, batch_size=50, num_passes=5, tol=1e-3, progress=False)
    assert result.converged and result.num_passes == 2 and result.num_steps == 20
    assert result.elbo.shape == (20,)
    mean_error, ratio = errors(result.state.loc, result.state.scale_tril, x, y)
    assert mean_error < 1e-3
    np.testing.assert_allclose(ratio, 1.0, atol=1e-3)
    assert state_change(result.state, result.state) == 0.0


def test_refine_rejects_bad_plans(key):
    guide, params = linear_guide()
    x, y = data(30)
    with pytest.raises(ValueError, match="larger than the data set"):
        refine(key, guide, params, x, y, batch_size=31, progress=False)
    with pytest.raises(ValueError, match="at least one pass"):
        refine(key, guide, params, x, y, num_passes=0, progress=False)
    with pytest.raises(ValueError, match="tol"):
        refine(key, guide, params, x, y, tol=-1.0, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        refine(key, guide, params, x, y.at[3].set(jnp.nan), progress=False)


def _batches(x, y, size):
    return [{"x": x[i : i + size], "y": y[i : i + size]} for i in range(0, x.shape[0], size)]


def test_refine_stream_matches_the_closed_form(key):
    guide, params = linear_guide()
    x, y = data(230)
    batches = _batches(np.asarray(x), np.asarray(y), 50)  # the last batch has 30 rows
    result = refine_stream(
        key, guide, params, batches, num_obs=230, batch_size=50, num_passes=2, progress=False
    )
    assert result.num_steps == 10 and result.num_passes == 2
    mean_error, ratio = errors(result.state.loc, result.state.scale_tril, x, y)
    assert mean_error < 1e-3
    np.testing.assert_allclose(ratio, 1.0, atol=1e-3)


def test_refine_stream_keeps_what_it_read_when_a_batch_fails(key):
    # Issue 15: a NaN chunk or a one-shot iterator asked for a second pass lost the state of the
    # batches already read.
    guide, params = linear_guide()
    x, y = map(np.asarray, data(150))
    good = _batches(x, y, 50)
    bad = {"x": x[100:], "y": np.where(np.arange(50) == 7, np.nan, y[100:])}
    with pytest.raises(RefineError, match="pass 1: batch 2.*NaN.*error.result") as failed:
        refine_stream(key, guide, params, good[:2] + [bad], num_obs=150, batch_size=50,
                      progress=False)
    partial = failed.value.result
    assert partial.num_steps == 2 and partial.interrupted and partial.num_passes == 0
    two = refine_stream(key, guide, params, good[:2], num_obs=150, batch_size=50, progress=False)
    np.testing.assert_allclose(partial.state.loc, two.state.loc, rtol=1e-6)
    with pytest.raises(RefineError, match="one-shot iterator cannot be read again for pass 2"
                       ) as failed:
        refine_stream(key, guide, params, iter(good), num_obs=150, batch_size=50, num_passes=2,
                      progress=False)
    once = failed.value.result
    assert once.num_passes == 1 and once.num_steps == 3
    assert np.all(np.isfinite(np.asarray(once.state.loc)))


def test_refine_stream_names_bad_batches(key):
    guide, params = linear_guide()
    x, y = map(np.asarray, data(100))
    good = _batches(x, y, 50)
    cases = [
        ([good[0], {"x": x[:50, :2], "y": y[:50]}], "batch 1.*'x'"),
        ([{"x": x[:50], "y": np.where(np.arange(50) == 7, np.nan, y[:50])}], "batch 0.*NaN"),
        ([{"x": x, "y": y}], "more than batch_size"),
        ([{"x": x[:50]}], "missing \\['y'\\]"),
        ([(x[:50], y[:50])], "mapping"),
    ]
    for batches, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            refine_stream(key, guide, params, batches, num_obs=100, batch_size=50, progress=False)
    with pytest.raises(ValueError, match="one-shot iterator"):
        refine_stream(
            key, guide, params, iter(good), num_obs=100, batch_size=50, num_passes=2, progress=False
        )
    with pytest.warns(RuntimeWarning, match="held 50 rows"):
        refine_stream(key, guide, params, good[:1], num_obs=100, batch_size=50, progress=False)
    with pytest.raises(ValueError, match="not arguments"):
        refine_stream(
            key,
            guide,
            params,
            good,
            num_obs=100,
            batch_size=50,
            shared={"noise": 1.0},
            progress=False,
        )


def test_interrupted_refinement_keeps_a_usable_state(key):
    guide, params = linear_guide()
    x, y = map(np.asarray, data(200))

    def batches():
        for i, batch in enumerate(_batches(x, y, 50)):
            if i == 2:
                raise KeyboardInterrupt
            yield batch

    with pytest.warns(RuntimeWarning, match="Interrupted after 2 batchs"):
        result = refine_stream(
            key, guide, params, batches, num_obs=200, batch_size=50, progress=False
        )
    assert result.interrupted and result.num_steps == 2
    assert np.all(np.isfinite(result.state.loc)) and np.all(np.isfinite(result.state.scale_tril))
    draws = sample_state(key, guide, result.state, (10,))
    assert draws["w"].shape == (10, 3)


@pytest.mark.slow  # two guides and a one-shot posterior on a subsample
def test_warm_start_from_a_one_shot_guide(key):
    guide, _ = linear_guide()
    one_shot, one_shot_params = exact_linear_guide()
    x, y = data(400)
    state = warm_start_state(key, guide, one_shot, one_shot_params, x, y)
    # The one-shot guide read a subsample of its max_obs rows: centred near the full posterior,
    # wider than it.
    exact = exact_posterior(x, y)
    sd = jnp.sqrt(jnp.diag(exact.cov))
    state_sd = jnp.sqrt(jnp.sum(state.scale_tril**2, -1))
    assert float(jnp.max(jnp.abs(state.loc - exact.mean) / state_sd)) < 4.0
    assert np.all(np.asarray(state_sd / sd) > 1.5)


@pytest.mark.slow  # compiles for 3-5 s: the default tier stays under 3 minutes
def test_a_diverging_refinement_returns_its_last_finite_state(key, monkeypatch):
    """A pass whose state is not finite is dropped with a warning (the driver's policy)."""
    import importlib

    module = importlib.import_module("amortized_ppl.iterative.refine")  # the package's `refine`

    guide, params = linear_guide()
    x, y = data(200)
    real = module._pass_step

    def diverging(problem, engine, arguments, mask, batch_size, k, state):
        new, info = real(problem, engine, arguments, mask, batch_size, k, state)
        return new._replace(loc=jnp.where(state.step >= 4, jnp.nan, new.loc)), info

    monkeypatch.setattr(module, "_pass_step", diverging)
    with pytest.warns(RuntimeWarning, match="last finite one"):
        result = refine(key, guide, params, x, y, batch_size=50, num_passes=3, progress=False)
    assert result.reason == "nonfinite" and result.interrupted and result.num_passes == 1
    assert bool(jnp.all(jnp.isfinite(result.state.loc)))


def test_refine_is_fixed_by_its_key_and_reuses_its_compiled_pass(key):
    import importlib

    import chex

    guide, params = linear_guide()
    module = importlib.import_module("amortized_ppl.iterative.refine")
    counted = chex.assert_max_traces(module._pass_step, n=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "_pass_step", counted)
        x, y = data(150)
        first = refine(key, guide, params, x, y, batch_size=50, num_passes=2, progress=False)
        again = refine(key, guide, params, x, y, batch_size=50, num_passes=2, progress=False)
        np.testing.assert_array_equal(first.state.loc, again.state.loc)
        for seed in range(1, 3):  # new data sets and keys, the same shapes: no new trace
            x2, y2 = data(150, seed=seed)
            other = refine(jax.random.key(seed), guide, params, x2, y2, batch_size=50,
                           num_passes=2, progress=False)
            assert not np.array_equal(other.state.loc, first.state.loc)


@pytest.mark.slow
def test_logistic_regression_matches_nuts(key):
    # No closed form: the Gaussian variational optimum the update converges to is within 0.1
    # posterior SDs of NUTS's means at this size (Bernstein-von Mises), SDs within 15%.
    from amortized_ppl import reference_posterior
    from amortized_ppl.models import logistic_regression as lg

    guide = AutoIterativeAmortizedMultivariateNormal(lg.model, batch_size=500)
    guide.setup(key, lg.design_fn, (20, 200))
    params = guide.init_params()
    (x,), _ = lg.design_fn(jax.random.key(3), 5000)
    theta = jax.random.normal(jax.random.key(4), (6,))
    y = jax.random.bernoulli(jax.random.key(5), jax.nn.sigmoid(x @ theta[:5] + theta[5]))
    y = y.astype(jnp.float32)
    result = refine(key, guide, params, x, y, num_passes=6, progress=False)
    ref = reference_posterior(key, lg.model, x, y=y)
    draws = np.concatenate(
        [np.asarray(ref.samples["w"]).reshape(-1, 5), np.asarray(ref.samples["b"]).reshape(-1, 1)],
        axis=1,
    )
    error = np.abs(np.asarray(result.state.loc) - draws.mean(0)) / draws.std(0)
    ratio = np.asarray(jnp.sqrt(jnp.sum(result.state.scale_tril**2, -1))) / draws.std(0)
    assert np.median(error) <= 0.1
    assert np.all((ratio > 0.85) & (ratio < 1.15))


