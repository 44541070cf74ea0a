"""Plots of the ambiguity study: KL to the oracle against position and against ambiguity."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

from amortized_ppl.sequence.evaluate import by_ambiguity

__all__ = ["plot_kl_by_ambiguity", "plot_kl_by_position"]


def _axes(ax):
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.5))
    return ax


def plot_kl_by_position(results: dict, names: Sequence[str] | None = None, ax=None):
    """Mean forward ``KL(oracle || predictor)`` per position, with the oracle's mean ambiguity.

    ``results`` is the output of :func:`~amortized_ppl.sequence.study.evaluate_predictors`.
    Returns the axes.
    """
    ax = _axes(ax)
    names = list(results["kl"]) if names is None else list(names)
    for name in names:
        ax.plot(np.mean(results["kl"][name], axis=0), label=name)
    ax.set_xlabel("position t (context x_<t)")
    ax.set_ylabel("KL(oracle || predictor) [nats]")
    ax.set_yscale("log")
    twin = ax.twinx()
    twin.plot(np.mean(results["ambiguity"], axis=0), color="0.6", ls="--", label="ambiguity")
    twin.set_ylabel("oracle ambiguity [nats]", color="0.4")
    ax.legend(fontsize=7)
    return ax


def plot_kl_by_ambiguity(
    results: dict, names: Sequence[str] | None = None, num_bins: int = 6, ax=None
):
    """Mean KL in equal-count ambiguity bins, against each bin's mean ambiguity (error bars: SEM)."""
    ax = _axes(ax)
    names = list(results["kl"]) if names is None else list(names)
    amb = results["ambiguity"]
    for name in names:
        stats = by_ambiguity(results["kl"][name], amb, num_bins=num_bins)
        centres = [np.mean(r) for r in stats["ambiguity_range"]]
        ax.errorbar(centres, stats["mean"], yerr=stats["sem"], marker="o", ms=3, capsize=2,
                    label=name)
    ax.set_xlabel("oracle ambiguity (entropy of p(env | x_<t)) [nats]")
    ax.set_ylabel("KL(oracle || predictor) [nats]")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    return ax
