"""A fixed simulation budget: simulate once, then train on mini-batches of that one set.

By default :func:`amortized_ppl.train.fit` simulates a fresh batch at every step, which is what
an amortized guide of a cheap NumPyro model should do. Simulation-based inference is compared at
a fixed number of simulations instead (sbibm's budgets of 10^3, 10^4, 10^5, as sbi's NPE and
BayesFlow's offline training take them): :func:`simulation_budget` spends the budget once and
splits off a validation share, :func:`from_budget` turns a stored set into the ``simulate``
function ``fit`` takes, and the held-out share goes to
:class:`~amortized_ppl.early_stopping.EarlyStopping` (``held_out=``), so that nothing outside
the budget is ever simulated.

Give ``fit`` the number of passes you want as ``num_steps`` (epochs times steps per epoch), so
that its cosine schedule decays the learning rate to zero over them, and let the held-out share
keep the best parameters: on sbibm's two_moons at 10^4 simulations this took the flow guide's
C2ST from 0.61 (a nearly constant rate with early stopping, sbi's recipe) to 0.54
(``benchmarks/results/sbibm_design_*.json``, ``benchmarks/README.md``).

Examples:
    >>> spent = simulation_budget(key, guide.problem.simulator(), 10_000)  # doctest: +SKIP
    >>> steps_per_epoch = spent.train.latents.shape[0] // 200  # doctest: +SKIP
    >>> fit(key, guide, num_steps=200 * steps_per_epoch, batch_size=200,  # doctest: +SKIP
    ...     simulate=from_budget(spent.train),
    ...     early_stopping=EarlyStopping(held_out=spent.held_out, patience=200))
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import numpy as np

from amortized_ppl._checks import check_int, check_key
from amortized_ppl.simulate import SimulatedBatch

__all__ = ["SimulationBudget", "from_budget", "simulation_budget"]


class SimulationBudget(NamedTuple):
    """A spent budget: ``train`` and ``held_out`` simulated data sets (disjoint)."""

    train: SimulatedBatch
    held_out: SimulatedBatch


def _num_datasets(batch: SimulatedBatch) -> int:
    return int(batch.latents.shape[0])


def _take(batch: SimulatedBatch, index) -> SimulatedBatch:
    size = _num_datasets(batch)

    def take(value):
        is_batched = isinstance(value, (jax.Array, np.ndarray)) and value.ndim and \
            value.shape[0] == size
        return value[index] if is_batched else value

    return jax.tree.map(take, batch)


def simulation_budget(key: jax.Array, simulate: Callable, num_simulations: int, *,
                      validation_fraction: float = 0.1) -> SimulationBudget:
    """Spend ``num_simulations`` simulations once: ``simulate(key, num_simulations)`` (e.g.
    ``problem.simulator()``), the last ``validation_fraction`` of them held out.

    Raises:
        ValueError: for a budget or a fraction that leaves no training or no held-out set.
    """
    key = check_key(key, "key")
    num_simulations = check_int(num_simulations, "num_simulations", 2)
    if not 0.0 < float(validation_fraction) < 1.0:
        raise ValueError(f"validation_fraction must lie in (0, 1); got {validation_fraction!r}.")
    num_held_out = max(1, int(round(num_simulations * float(validation_fraction))))
    if num_held_out >= num_simulations:
        raise ValueError(f"num_simulations: {num_simulations} leaves nothing to train on after "
                         f"holding out {num_held_out}.")
    batch = simulate(key, num_simulations)
    split = num_simulations - num_held_out
    return SimulationBudget(_take(batch, slice(0, split)),
                            _take(batch, slice(split, num_simulations)))


def from_budget(batch: SimulatedBatch) -> Callable:
    """``simulate(key, batch_size)`` drawing ``batch_size`` of the stored data sets uniformly
    (with replacement across steps, none repeated within a batch), for ``fit(simulate=...)``.

    The returned function raises ``ValueError`` when asked for more data sets than the set holds
    (a budget below the batch size)."""
    size = _num_datasets(batch)

    def simulate(key, batch_size: int) -> SimulatedBatch:
        if batch_size > size:
            raise ValueError(f"batch_size: {batch_size} data sets per step but the simulation "
                             f"budget holds {size} for training; lower the batch size or raise "
                             "the budget.")
        index = jax.random.choice(key, size, (batch_size,), replace=False)
        return _take(batch, index)

    return simulate
