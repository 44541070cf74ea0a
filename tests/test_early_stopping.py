"""Early stopping on held-out simulations (early_stopping.py, fit's early_stopping=)."""

import jax
import numpy as np
import optax
import pytest

from amortized_ppl import AutoAmortizedNormal, fit
from amortized_ppl.early_stopping import EarlyStopping, Validation, update
from tests.registry import CASES, TINY

POISSON = CASES[2]


def test_the_record_keeps_the_best_and_counts_scores_since():
    record = Validation()
    assert record.best_loss == np.inf and record.best_step == -1
    record = update(record, 10, 5.0, "a", 0.0)
    record = update(record, 20, float("nan"), "b", 0.0)  # never the best
    record = update(record, 30, 4.0, "c", 0.0)
    record = update(record, 40, 3.95, "d", 0.1)  # improves by less than min_delta
    assert (record.best_step, record.best_params, record.since_best) == (30, "c", 1)
    assert record.best_loss == 4.0
    np.testing.assert_array_equal(record.steps, [10, 20, 30, 40])
    assert np.isnan(record.losses[1])


def _guide():
    return AutoAmortizedNormal(POISSON.model, **TINY)


@pytest.mark.slow  # a compilation of the training step (7 s); the default tier keeps the rest
def test_fit_stops_when_the_held_out_loss_stalls_and_returns_the_best():
    # a learning rate of zero: the held-out loss never improves after its first score
    guide = _guide()
    result = fit(jax.random.key(0), guide, design_fn=POISSON.design_fn, num_obs=POISSON.num_obs,
                 num_steps=1000, optimizer=optax.sgd(0.0), chunk_size=10, progress=False,
                 early_stopping=EarlyStopping(num_datasets=16, patience=3))
    assert result.reason == "converged" and result.losses.shape == (40,)
    assert result.validation.best_step == 10
    np.testing.assert_array_equal(result.validation.steps, [10, 20, 30, 40])


@pytest.mark.slow  # another compilation of the training step
def test_fit_returns_the_parameters_of_the_best_held_out_score():
    guide = _guide()
    result = fit(jax.random.key(1), guide, design_fn=POISSON.design_fn, num_obs=POISSON.num_obs,
                 num_steps=60, optimizer=optax.adam(3e-3), chunk_size=20, progress=False,
                 early_stopping=EarlyStopping(num_datasets=32, patience=100))
    record = result.validation
    assert result.reason == "done" and record.steps.tolist() == [20, 40, 60]
    assert record.best_loss == np.nanmin(record.losses)
    best = jax.tree.leaves(result.params)
    assert all(np.array_equal(a, b) for a, b in zip(best, jax.tree.leaves(record.best_params)))
    if record.best_step != 60:  # then the last state differs from what fit returned
        last = jax.tree.leaves(result.state.params)
        assert not all(np.array_equal(a, b) for a, b in zip(best, last))


@pytest.mark.parametrize("settings, match", [
    (EarlyStopping(patience=0), "early_stopping.patience"),
    (EarlyStopping(min_delta=-1.0), "early_stopping.min_delta"),
])
def test_bad_early_stopping_settings_are_named(settings, match):
    with pytest.raises(ValueError, match=match):
        fit(jax.random.key(0), _guide(), design_fn=POISSON.design_fn, num_obs=POISSON.num_obs,
            num_steps=1, progress=False, early_stopping=settings)
    with pytest.raises(TypeError, match="early_stopping: expected an EarlyStopping"):
        fit(jax.random.key(0), _guide(), design_fn=POISSON.design_fn, num_obs=POISSON.num_obs,
            num_steps=1, progress=False, early_stopping={"patience": 3})
