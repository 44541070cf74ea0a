"""A fixed simulation budget (simulation_budget.py, fit's simulate=)."""

import jax
import numpy as np
import pytest

from amortized_ppl import AutoAmortizedNormal, fit
from amortized_ppl.early_stopping import EarlyStopping
from amortized_ppl.simulation_budget import from_budget, simulation_budget
from tests.registry import CASES

POISSON = next(case for case in CASES if case.name == "poisson")


def _setup():
    guide = AutoAmortizedNormal(POISSON.model)
    guide.setup(jax.random.key(0), POISSON.design_fn, POISSON.num_obs)
    return guide


@pytest.mark.slow  # a guide's set-up (5 s); the default tier is at its budget
def test_the_budget_is_split_and_batches_come_only_from_it():
    guide = _setup()
    budget = simulation_budget(jax.random.key(1), guide.problem.simulator(), 50)
    assert budget.train.latents.shape[0] == 45 and budget.held_out.latents.shape[0] == 5
    batch = from_budget(budget.train)(jax.random.key(2), 20)
    stored = {tuple(row) for row in np.asarray(budget.train.latents).round(6)}
    rows = [tuple(row) for row in np.asarray(batch.latents).round(6)]
    assert len(set(rows)) == 20 and set(rows) <= stored  # none repeated, none new
    assert batch.tokens.shape[0] == 20 and batch.mask.shape[0] == 20
    with pytest.raises(ValueError, match="batch_size: 64 data sets per step but the simulation "
                                         "budget holds 45"):
        from_budget(budget.train)(jax.random.key(2), 64)
    with pytest.raises(ValueError, match="validation_fraction"):
        simulation_budget(jax.random.key(1), guide.problem.simulator(), 50,
                          validation_fraction=1.0)


@pytest.mark.slow  # a compilation of the training step
def test_fit_trains_on_the_budget_and_validates_on_its_held_out_share():
    guide = _setup()
    budget = simulation_budget(jax.random.key(1), guide.problem.simulator(), 200)
    calls = []

    def counted(key, batch_size):
        calls.append(batch_size)
        return from_budget(budget.train)(key, batch_size)

    result = fit(jax.random.key(3), guide, num_steps=40, batch_size=16, chunk_size=20,
                 progress=False, simulate=counted,
                 early_stopping=EarlyStopping(held_out=budget.held_out, patience=100))
    assert set(calls) == {16}  # traced with the training batch only: nothing else simulated
    assert result.validation.steps.tolist() == [20, 40]
    with pytest.raises(TypeError, match="simulate"):
        fit(jax.random.key(3), guide, num_steps=1, progress=False, simulate=budget.train)
