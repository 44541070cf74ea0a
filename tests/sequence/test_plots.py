"""Plots of the ambiguity study (amortized_ppl/sequence/plots.py) on a synthetic result."""

import matplotlib
import numpy as np

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from amortized_ppl.sequence.plots import plot_kl_by_ambiguity, plot_kl_by_position  # noqa: E402


def _results():
    rng = np.random.default_rng(0)
    amb = rng.uniform(0.0, 2.0, size=(6, 10))
    return {"ambiguity": amb, "kl": {"a": 0.1 * amb + 0.01, "b": 0.2 * amb + 0.01}}


def test_kl_by_position_draws_one_line_per_predictor_and_the_ambiguity():
    results = _results()
    ax = plot_kl_by_position(results, ["a"])
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["a"]
    np.testing.assert_allclose(lines[0].get_ydata(), results["kl"]["a"].mean(0))
    assert ax.get_yscale() == "log"
    assert len(ax.figure.axes) == 2  # the twin axis holds the ambiguity
    plt.close(ax.figure)


def test_kl_by_ambiguity_draws_every_predictor_by_default():
    results = _results()
    ax = plot_kl_by_ambiguity(results, num_bins=4)
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["a", "b"]
    # Each curve has one point per bin.
    assert all(len(line.get_xdata()) == 4 for line in ax.get_lines() if line.get_label() in labels)
    plt.close(ax.figure)
