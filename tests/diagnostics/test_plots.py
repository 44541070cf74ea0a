"""Fast API tests of the diagnostic plots: panel counts, drawn artists, errors, atomic saving."""

import threading

import matplotlib

matplotlib.use("Agg")  # headless; the module itself never touches pyplot

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from amortized_ppl.diagnostics import plots  # noqa: E402
from amortized_ppl.diagnostics.plots import (  # noqa: E402
    calibration,  # noqa: E402
    plot_coverage,
    plot_ecdf_difference,
    plot_khat,
    plot_marginals,
    plot_pairs,
    plot_rank_histograms,
    plot_recovery,
    save_figure,
)

NUM_DRAWS = 19  # 20 rank values
B, D = 100, 3


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def ranks(rng):
    return rng.integers(0, NUM_DRAWS + 1, size=(B, D))


def _has_artists(ax):
    return bool(ax.lines or ax.patches or ax.collections)


def _check_figure(fig, num_axes):
    assert isinstance(fig, Figure)
    assert len(fig.axes) == num_axes
    assert all(_has_artists(ax) for ax in fig.axes if ax.axison)
    fig.canvas.draw()  # the whole figure renders (constrained layout, legends)


def _given_axes(num):
    fig = Figure()
    return fig, fig.subplots(1, num, squeeze=False)[0]


# ---------------------------------------------------------------------------------------------
# One test of the happy path per function: a Figure, the right panels, something drawn
# ---------------------------------------------------------------------------------------------


def test_all_lists_the_public_functions():
    assert sorted(plots.__all__) == sorted(
        [
            "plot_coverage",
            "plot_ecdf_difference",
            "plot_khat",
            "plot_marginals",
            "plot_pairs",
            "plot_rank_histograms",
            "plot_recovery",
            "save_figure",
        ]
    )


def test_rank_histograms(ranks):
    fig = plot_rank_histograms(ranks, NUM_DRAWS, names=["a", "b", "c"])
    _check_figure(fig, D)
    assert [ax.get_title() for ax in fig.axes] == ["a", "b", "c"]
    # Default bins: B / 20 = 5, a divisor of the 20 rank values; counts add up to B.
    bars = [p for p in fig.axes[0].patches if type(p).__name__ == "Rectangle"]
    assert len(bars) == 5
    assert sum(bar.get_height() for bar in bars) == B


@pytest.mark.parametrize(
    ("num_datasets", "num_ranks", "expected"),
    [(1000, 100, 50), (100, 20, 5), (1000, 101, 50), (10, 20, 1), (5000, 64, 64), (600, 24, 24)],
)
def test_default_num_bins(num_datasets, num_ranks, expected):
    # A divisor of num_ranks near B / 20 when one exists (101 is prime: near-equal bins instead).
    assert calibration._default_num_bins(num_datasets, num_ranks) == expected


def test_rank_histograms_uneven_bins_count_every_rank(rng):
    ranks = rng.integers(0, 11, size=(60, 1))
    fig = plot_rank_histograms(ranks, 10, num_bins=4)  # 11 rank values in 4 bins
    bars = [p for p in fig.axes[0].patches if type(p).__name__ == "Rectangle"]
    assert len(bars) == 4
    assert sum(bar.get_height() for bar in bars) == 60


def test_many_dims_wrap_at_four_columns(rng):
    fig = plot_rank_histograms(rng.integers(0, 10, size=(40, 6)), 9)
    _check_figure(fig, 6)
    columns = {ax.get_subplotspec().colspan.start for ax in fig.axes}
    rows = {ax.get_subplotspec().rowspan.start for ax in fig.axes}
    assert columns == {0, 1, 2, 3} and rows == {0, 1}
    assert fig.axes[5].get_title() == "theta[5]"


def test_ecdf_difference_with_band_and_p_values(ranks):
    z = np.linspace(0.0, 1.0, 21)
    width = 0.2 * np.sqrt(z * (1 - z))
    fig = plot_ecdf_difference(
        jnp.asarray(ranks), NUM_DRAWS, band=(z, z - width, z + width), p_values=[0.5, 1e-4, 0.25]
    )
    _check_figure(fig, D)
    assert fig.axes[0].get_title() == "theta[0] (p = 0.500)"
    assert fig.axes[1].get_title() == "theta[1] (p < 0.001)"
    assert all(ax.collections for ax in fig.axes)  # the band is shaded


def test_ecdf_difference_values_are_ecdf_minus_z():
    ranks = np.array([[0], [0], [3], [3]])  # u = 1/4 (twice) and 1 (twice)
    z, difference = calibration._ecdf_difference(ranks[:, 0], 3)
    np.testing.assert_allclose(z, [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(difference, [0.0, 0.25, 0.0, -0.25, 0.0])
    fig = plot_ecdf_difference(ranks, 3)
    _check_figure(fig, 1)
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), difference)


def test_coverage_single_and_per_dimension():
    levels = np.array([0.5, 0.8, 0.9, 0.95])
    fig = plot_coverage(levels, levels - 0.05, num_datasets=200)
    _check_figure(fig, 1)
    assert fig.axes[0].collections  # the binomial band
    fig = plot_coverage(levels, np.stack([levels, levels**2], axis=1), names=["mu", "tau"])
    _check_figure(fig, 1)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "mu" in labels and "tau" in labels


def test_recovery(rng):
    truth = rng.normal(size=(30, D))
    mean = 0.9 * truth
    fig = plot_recovery(truth, mean, mean - 0.2, mean + 0.2)
    _check_figure(fig, D)
    assert "r = 1.00" in fig.axes[0].get_title()
    _check_figure(plot_recovery(truth, mean), D)  # no intervals


def test_recovery_constant_dimension_has_no_warning():
    truth = np.ones((5, 1))
    fig = plot_recovery(truth, truth)  # zero variance: r is NaN, no RuntimeWarning
    assert "r = nan" in fig.axes[0].get_title()


def test_marginals(rng):
    fig = plot_marginals(rng.normal(size=(200, D)), rng.normal(size=(400, D)), labels=("a", "b"))
    _check_figure(fig, D)
    _check_figure(plot_marginals(rng.normal(size=(200, 2))), 2)


def test_pairs_thins_and_drops_upper_triangle(rng):
    draws, reference = rng.normal(size=(3000, 5)), rng.normal(size=(500, 5))
    fig = plot_pairs(draws, reference, max_dims=3)
    _check_figure(fig, 6)  # 3 x 3 corner: 3 diagonal + 3 lower panels
    scatters = [c for ax in fig.axes for c in ax.collections]
    assert scatters and max(len(c.get_offsets()) for c in scatters) == 1000
    _check_figure(plot_pairs(draws[:, :1]), 1)


def test_khat_colored_by_path():
    khat = np.array([0.1, 0.6, 0.9, 0.2])
    fig = plot_khat(khat, paths=["amortized", "corrected", "nuts", "amortized"])
    _check_figure(fig, 1)
    ax = fig.axes[0]
    assert len(ax.collections) == 3  # one scatter per path
    labels = ax.get_legend_handles_labels()[1]
    assert labels[:3] == ["amortized (2)", "corrected (1)", "nuts (1)"]
    assert len(ax.lines) == 2  # the two threshold lines
    _check_figure(plot_khat(khat, thresholds=()), 1)


# ---------------------------------------------------------------------------------------------
# Drawing into given axes
# ---------------------------------------------------------------------------------------------


def test_drawing_into_given_axes(rng, ranks):
    fig, axes = _given_axes(D)
    assert plot_rank_histograms(ranks, NUM_DRAWS, axes=axes) is fig
    fig, axes = _given_axes(D + 1)  # extra axes are left alone
    assert plot_ecdf_difference(ranks, NUM_DRAWS, axes=axes) is fig
    assert not _has_artists(axes[-1])
    fig, axes = _given_axes(D)
    truth = rng.normal(size=(20, D))
    assert plot_recovery(truth, truth, axes=list(axes)) is fig
    fig, axes = _given_axes(D)
    assert plot_marginals(rng.normal(size=(50, D)), axes=axes) is fig
    fig, axes = _given_axes(2)
    assert plot_coverage([0.5, 0.9], [0.4, 0.85], ax=axes[0]) is fig
    assert plot_khat([0.3, 0.8], ax=axes[1]) is fig
    assert all(_has_artists(ax) for ax in fig.axes)
    fig = Figure()
    grid = fig.subplots(2, 2)
    assert plot_pairs(rng.normal(size=(50, 4)), max_dims=2, axes=grid) is fig
    assert not grid[0, 1].axison
    fig.canvas.draw()


def test_axes_in_a_subfigure_return_the_root_figure(rng):
    fig = Figure()
    sub = fig.subfigures(1, 2)[1]
    ax = sub.subplots()
    assert plot_khat([0.2, 0.4], ax=ax) is fig


def test_too_few_axes_raise(ranks, rng):
    _, axes = _given_axes(2)
    with pytest.raises(ValueError, match=r"axes: expected at least 3"):
        plot_rank_histograms(ranks, NUM_DRAWS, axes=axes)
    with pytest.raises(ValueError, match=r"axes: expected a \(2, 2\) grid"):
        plot_pairs(rng.normal(size=(10, 2)), axes=axes[:1])
    with pytest.raises(ValueError, match="ax: expected a matplotlib Axes"):
        plot_khat([0.1], ax="not axes")


# ---------------------------------------------------------------------------------------------
# Validation: shapes, values, NaN
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: plot_rank_histograms(np.zeros(5, int), 9), r"ranks: expected shape \(B, D\)"),
        (lambda: plot_rank_histograms(np.full((5, 1), 10), 9), r"ranks: .*\[0, num_draws=9\]"),
        (lambda: plot_rank_histograms(np.full((5, 1), 1.5), 9), "ranks: expected integer"),
        (lambda: plot_rank_histograms(np.zeros((5, 1), int), 0), "num_draws"),
        (lambda: plot_rank_histograms(np.zeros((5, 1), int), 9, num_bins=11), "num_bins"),
        (lambda: plot_rank_histograms(np.zeros((5, 2), int), 9, names=["a"]), "names: expected 2"),
        (
            lambda: plot_ecdf_difference(np.zeros((5, 2), int), 9, p_values=[0.1]),
            r"p_values: expected shape \(2,\)",
        ),
        (
            lambda: plot_ecdf_difference(np.zeros((5, 1), int), 9, band=([0, 1], [0], [1, 1])),
            r"band\[1\] \(lower\): expected shape",
        ),
        (
            lambda: plot_ecdf_difference(np.zeros((5, 1), int), 9, band=([0, 2], [0, 1], [1, 1])),
            r"band\[0\] \(z\): expected values in \[0, 1\]",
        ),
        (lambda: plot_coverage([0.5, 1.0], [0.5, 0.9]), r"levels: expected credible levels"),
        (lambda: plot_coverage([0.5, 0.9], [0.5]), r"coverage: expected shape \(2,\)"),
        (lambda: plot_coverage([0.5, 0.9], np.zeros((2, 2, 1))), "coverage: expected shape"),
        (lambda: plot_coverage([0.5], [0.5], num_datasets=0), "num_datasets"),
        (lambda: plot_recovery(np.zeros((4, 2)), np.zeros((4, 3))), r"mean: expected shape"),
        (lambda: plot_recovery(np.zeros(4), np.zeros(4)), r"truth: expected shape \(B, D\)"),
        (
            lambda: plot_recovery(np.zeros((4, 2)), np.zeros((4, 2)), lower=np.zeros((4, 2))),
            "lower, upper: give both",
        ),
        (
            lambda: plot_recovery(
                np.zeros((4, 1)), np.zeros((4, 1)), np.ones((4, 1)), np.zeros((4, 1))
            ),
            "lower <= upper",
        ),
        (
            lambda: plot_marginals(np.zeros((10, 2)), np.zeros((10, 3))),
            r"reference: expected shape",
        ),
        (lambda: plot_marginals(np.zeros(10)), r"draws: expected shape \(S, D\)"),
        (lambda: plot_marginals(np.zeros((10, 1)), labels=("a",)), "labels"),
        (lambda: plot_pairs(np.zeros((10, 2)), max_dims=0), "max_dims"),
        (lambda: plot_khat(np.zeros((3, 2))), r"khat: expected shape \(B,\)"),
        (lambda: plot_khat([0.1, 0.2], paths=["nuts"]), r"paths: expected shape \(2,\)"),
        (lambda: plot_khat([0.1], thresholds=[np.inf]), "thresholds"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda x: plot_rank_histograms(np.where(np.isnan(x), np.nan, 1.0), 9),
        lambda x: plot_ecdf_difference(np.where(np.isnan(x), np.nan, 1.0), 9),
        lambda x: plot_coverage([0.5, 0.9], x[:2, 0]),
        lambda x: plot_recovery(x, np.zeros_like(x)),
        lambda x: plot_marginals(x),
        lambda x: plot_pairs(x),
        lambda x: plot_khat(x[:, 0]),
    ],
)
def test_nan_raises(call):
    x = np.full((4, 2), 0.5)
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        call(x)


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def test_save_figure_writes_png_atomically(tmp_path, ranks):
    fig = plot_rank_histograms(ranks, NUM_DRAWS)
    target = tmp_path / "new" / "dir" / "sbc.png"
    assert save_figure(fig, target) == target
    data = target.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 1000
    save_figure(fig, str(target))  # overwrites in place
    assert sorted(p.name for p in target.parent.iterdir()) == ["sbc.png"]  # no temporary left


def test_save_figure_bad_suffix_leaves_nothing(tmp_path):
    fig = plot_khat([0.1, 0.9])
    with pytest.raises(ValueError, match="path: cannot infer a supported format"):
        save_figure(fig, tmp_path / "plot.nope")
    with pytest.raises(ValueError, match="path: cannot infer"):
        save_figure(fig, tmp_path / "plot")
    assert list(tmp_path.iterdir()) == []


def test_save_figure_failure_removes_temporary(tmp_path, monkeypatch):
    fig = plot_khat([0.1, 0.9])

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(fig, tmp_path / "khat.pdf")
    assert list(tmp_path.iterdir()) == []


def test_plots_work_in_threads(tmp_path, rng):
    draws = rng.normal(size=(100, 2))
    errors = []

    def work(index):
        try:
            save_figure(plot_marginals(draws), tmp_path / f"m{index}.png")
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m0.png", "m1.png", "m2.png"]
