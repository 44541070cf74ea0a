"""Early stopping on a held-out simulation set: stop when it stops improving, keep the best.

``fit(..., early_stopping=EarlyStopping(num_datasets=256, patience=10))`` simulates a fixed
held-out set once (from the fit's key), scores the loss on it after every ``every`` compiled
chunks, and stops when ``patience`` scores in a row have not improved on the best by more than
``min_delta``; the parameters of the best score are the ones ``fit`` returns (a run stopped by
the time budget or Ctrl-C returns them too). Training draws fresh simulations every step, so
this guards less against over-fitting than against a learning rate that stalls or a late
divergence, and it ends runs that have converged.

The record is a value (:class:`Validation`), updated by a pure function (:func:`update`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from amortized_ppl._checks import check_int

__all__ = ["EarlyStopping", "Validation", "update"]


class EarlyStopping(NamedTuple):
    """Settings of early stopping (see the module's docstring).

    Attributes:
        num_datasets: held-out simulated data sets, simulated once.
        patience: scores in a row without improvement before stopping.
        every: compiled chunks between scores.
        min_delta: the least decrease of the held-out loss that counts as an improvement.
        held_out: a held-out set already simulated (e.g. a
            :class:`~amortized_ppl.simulation_budget.SimulationBudget`'s), used instead of
            simulating ``num_datasets``.
    """

    num_datasets: int = 256
    patience: int = 10
    every: int = 1
    min_delta: float = 0.0
    held_out: Any = None

    def checked(self) -> "EarlyStopping":
        """These settings, or a ``ValueError`` naming the bad one."""
        check_int(self.num_datasets, "early_stopping.num_datasets")
        check_int(self.patience, "early_stopping.patience")
        check_int(self.every, "early_stopping.every")
        if self.held_out is not None and not hasattr(self.held_out, "latents"):
            raise TypeError("early_stopping.held_out: expected a SimulatedBatch (e.g. a "
                            f"SimulationBudget's held_out), got {type(self.held_out).__name__}.")
        if not (np.isfinite(self.min_delta) and self.min_delta >= 0):
            raise ValueError(f"early_stopping.min_delta: expected a finite number >= 0, got "
                             f"{self.min_delta!r}.")
        return self


class Validation(NamedTuple):
    """The held-out record of one fit.

    Attributes:
        steps: the step count at each score, ``(k,)``.
        losses: the held-out loss at each score, ``(k,)`` (NaN where it was not finite).
        best_step: the step count of the best score (-1 before any finite score).
        best_loss: the best score (inf before any finite one); a later score is better only
            when it is lower by more than ``min_delta``.
        best_params: the parameters at the best score (None before any finite score).
        since_best: scores since the best.
    """

    steps: np.ndarray = np.zeros((0,), np.int64)
    losses: np.ndarray = np.zeros((0,))
    best_step: int = -1
    best_loss: float = float("inf")
    best_params: Any = None
    since_best: int = 0


def update(record: Validation, step: int, loss: float, params, min_delta: float) -> Validation:
    """``record`` after a score of ``loss`` at ``step`` with ``params``; a non-finite loss
    never becomes the best."""
    loss = float(loss)
    steps = np.append(record.steps, step)
    losses = np.append(record.losses, loss if np.isfinite(loss) else np.nan)
    if np.isfinite(loss) and loss < record.best_loss - min_delta:
        return Validation(steps, losses, step, loss, params, 0)
    return record._replace(steps=steps, losses=losses, since_best=record.since_best + 1)
