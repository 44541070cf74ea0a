"""Matplotlib plots for deciding whether to trust an amortized posterior.

Every function takes plain arrays (NumPy or JAX) and nothing else from the library:

* calibration over many simulated data sets: :func:`plot_rank_histograms` and
  :func:`plot_ecdf_difference` (simulation-based calibration ranks), :func:`plot_coverage`
  (credible-interval coverage) and :func:`plot_recovery` (truth against posterior mean);
* one data set against a reference posterior: :func:`plot_marginals` and :func:`plot_pairs`;
* importance-sampling reliability: :func:`plot_khat` (Pareto k-hat per data set).

The functions build :class:`matplotlib.figure.Figure` objects directly, never through
:mod:`matplotlib.pyplot`, so they hold no global state, open no window, and work headless and in
threads. Each takes an optional ``axes`` (or ``ax``) to draw into, and otherwise creates a figure
with a grid of at most four panels per row. Either way the figure is returned; write it with
:func:`save_figure`. Non-finite values (NaN, inf) in any input raise a :class:`ValueError`
rather than being dropped silently.

References:
    Talts, S., Betancourt, M., Simpson, D., Vehtari, A. and Gelman, A. (2018). Validating Bayesian
    inference algorithms with simulation-based calibration. arXiv:1804.06788.
    Säilynoja, T., Bürkner, P.-C. and Vehtari, A. (2022). Graphical test for discrete uniformity
    and its applications in goodness-of-fit evaluation and multiple sample comparison.
    *Statistics and Computing* 32, 32.
    Vehtari, A., Simpson, D., Gelman, A., Yao, Y. and Gabry, J. (2024). Pareto smoothed
    importance sampling. *JMLR* 25(72).
"""

from amortized_ppl.diagnostics.plots.calibration import (
    plot_coverage,
    plot_ecdf_difference,
    plot_rank_histograms,
    plot_recovery,
)
from amortized_ppl.diagnostics.plots.common import save_figure
from amortized_ppl.diagnostics.plots.posterior import plot_khat, plot_marginals, plot_pairs

__all__ = [
    "plot_coverage",
    "plot_ecdf_difference",
    "plot_khat",
    "plot_marginals",
    "plot_pairs",
    "plot_rank_histograms",
    "plot_recovery",
    "save_figure",
]
