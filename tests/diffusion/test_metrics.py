"""Tests of the diffusion-posterior metrics and plots: exact values, statistics, errors, panels."""

import json
import math

import matplotlib

matplotlib.use("Agg")  # headless; the plots module itself never touches pyplot

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.stats  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from amortized_ppl.diffusion import metrics  # noqa: E402
from amortized_ppl.diffusion.metrics import (  # noqa: E402
    LogEvidenceEstimate,
    energy_distance,
    log_evidence_estimate,
    mode_weights,
    modes_found,
    posterior_report,
    total_variation,
)
from amortized_ppl.diffusion.plots import plot_mode_weights, plot_samples_2d  # noqa: E402
from amortized_ppl.models.inverse_problems import toy_2d_problem  # noqa: E402

CENTRE = 12  # component index of the toy's (0, 0) mode: 5 a + b with a = b = 2


@pytest.fixture(scope="module")
def problem():
    return toy_2d_problem()


@pytest.fixture(scope="module")
def exact_draws(problem):
    """20000 exact posterior draws of the 2-D toy (the first 500 serve the smaller tests)."""
    return problem.exact_posterior.sample(jax.random.key(0), 20000)


def _brute_force_energy(x, y, *, unbiased=False):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

    def mean_distance(a, b, same):
        d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
        num = a.shape[0]
        return d.sum() / (num * (num - 1) if same and unbiased else d.size)

    return 2 * mean_distance(x, y, False) - mean_distance(x, x, True) - mean_distance(y, y, True)


def _expected_abs_normal(mu, sd):
    """``E|Z|`` for ``Z ~ Normal(mu, sd^2)`` (folded normal mean)."""
    return sd * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * sd**2)) + mu * (
        1 - 2 * scipy.stats.norm.cdf(-mu / sd)
    )


# ---------------------------------------------------------------------------------------------
# Mode weights, total variation, modes found
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_mode_weights_of_exact_draws_within_three_multinomial_sds(problem, exact_draws):
    posterior = problem.exact_posterior
    exact = np.asarray(posterior.weights, np.float64)
    n = exact_draws.shape[0]
    hard = np.asarray(mode_weights(exact_draws, posterior))
    soft = np.asarray(mode_weights(exact_draws, posterior, soft=True))
    assert hard.shape == soft.shape == (25,)
    np.testing.assert_allclose([hard.sum(), soft.sum()], 1.0, atol=1e-5)
    # Per component the count is Binomial(n, w_k): SD sqrt(w (1 - w) / n). One stray draw
    # (1 / n) is allowed where that SD is below it (the outer modes, w < 1e-4).
    sd = np.sqrt(exact * (1 - exact) / n)
    assert np.all(np.abs(hard - exact) <= np.maximum(3 * sd, 1.0 / n))
    # The modes are ~9 SDs apart: soft and hard assignments agree to rounding.
    np.testing.assert_allclose(soft, hard, atol=1e-4)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_mode_weights_counts_draws_at_the_means_exactly(problem):
    posterior = problem.exact_posterior
    # 20000 rows, as the exact draws: the assignment is compiled for that shape already.
    draws = posterior.means[jnp.array([CENTRE] * 14000 + [7] * 6000)]
    expected = np.zeros(25)
    expected[CENTRE], expected[7] = 0.7, 0.3
    np.testing.assert_allclose(mode_weights(draws, posterior), expected, atol=1e-7)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_mode_weights_rejects_bad_inputs(problem):
    posterior = problem.exact_posterior
    with pytest.raises(ValueError, match=r"samples: expected shape \(n, 2\)"):
        mode_weights(jnp.zeros((5, 3)), posterior)
    with pytest.raises(ValueError, match="samples: contains 1 NaN"):
        mode_weights(jnp.zeros((5, 2)).at[0, 1].set(jnp.nan), posterior)
    with pytest.raises(ValueError, match="mixture: expected a GaussianMixture"):
        mode_weights(jnp.zeros((5, 2)), object())


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_total_variation_exact_values():
    p = np.array([0.2, 0.3, 0.5])
    assert total_variation(p, p) == 0.0
    assert total_variation([0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.25, 0.75]) == 1.0
    assert total_variation([0.5, 0.5, 0.0], [0.0, 0.5, 0.5]) == pytest.approx(0.5)
    assert total_variation(p, [0.3, 0.3, 0.4]) == pytest.approx(0.1)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
@pytest.mark.parametrize(
    ("p", "q", "match"),
    [
        ([0.5, 0.5], [0.2, 0.3, 0.5], r"q: expected shape \(2,\)"),
        ([[0.5, 0.5]], [0.5, 0.5], r"p: expected shape \(K,\)"),
        ([1.2, -0.2], [0.5, 0.5], "p: expected non-negative"),
        ([0.5, 0.5], [0.5, 0.6], "q: expected weights summing to 1"),
        ([0.5, np.nan], [0.5, 0.5], "p: contains NaN"),
    ],
)
def test_total_variation_rejects_bad_weights(p, q, match):
    with pytest.raises(ValueError, match=match):
        total_variation(p, q)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_modes_found_counts_the_significant_modes(problem, exact_draws):
    posterior = problem.exact_posterior
    found = modes_found(exact_draws, posterior)  # all 20000: the shape compiled above
    assert (found.num_found, found.num_significant, found.all_found, found.missing) == (
        9,
        9,
        True,
        (),
    )
    assert int(found.counts.sum()) == 20000
    # 20000 draws at 8 of the 9 centre means, all but 7 and 12 only once.
    centre_block = [6, 7, 8, 11, 12, 13, 16, 17, 18]
    draws = posterior.means[jnp.array(centre_block[:-1] + [7] * 2000 + [12] * 17992)]
    found = modes_found(draws, posterior)
    assert (found.num_found, found.num_significant, found.missing) == (8, 9, (18,))
    assert not found.all_found
    np.testing.assert_array_equal(np.flatnonzero(found.is_significant), centre_block)
    strict = modes_found(draws, posterior, min_count=2)
    assert strict.missing == (6, 8, 11, 13, 16, 17, 18)
    # min_weight 0.05 keeps the centre and the 4 edge modes only.
    assert modes_found(draws, posterior, min_weight=0.05).num_significant == 5


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_modes_found_rejects_bad_thresholds(problem):
    draws = jnp.zeros((3, 2))
    with pytest.raises(ValueError, match="min_weight"):
        modes_found(draws, problem.exact_posterior, min_weight=1.0)
    with pytest.raises(ValueError, match="min_count"):
        modes_found(draws, problem.exact_posterior, min_count=0)


# ---------------------------------------------------------------------------------------------
# Energy distance
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
@pytest.mark.parametrize("unbiased", [False, True])
def test_energy_distance_matches_brute_force_with_blocks(monkeypatch, unbiased):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.normal(1.0, 2.0, size=(5, 3))
    expected = _brute_force_energy(x, y, unbiased=unbiased)
    got = energy_distance(x, y, unbiased=unbiased)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Tiny blocks: 2 rows of x per block against y (the last block padded), 1 row for x-x.
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 40)
    np.testing.assert_allclose(energy_distance(x, y, unbiased=unbiased), expected, rtol=1e-5)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_energy_distance_closed_forms():
    # Point masses a and b: 2 |a - b|; in 1-D the V-statistic is scipy's distance squared.
    a, b = jnp.zeros((3, 2)), jnp.full((4, 2), 3.0) * jnp.array([1.0, 4.0 / 3.0])  # |a - b| = 5
    assert float(energy_distance(a, b)) == pytest.approx(10.0)
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=40), rng.exponential(size=30)
    expected = scipy.stats.energy_distance(u, v) ** 2
    np.testing.assert_allclose(energy_distance(u[:, None], v[:, None]), expected, rtol=1e-5)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_energy_distance_near_zero_for_one_distribution_positive_for_shifted_ones():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(2000, 1)), rng.normal(size=(2000, 1))
    assert 0 <= float(energy_distance(x, y)) < 0.01  # V-statistic: non-negative, O(1 / n)
    assert abs(float(energy_distance(x, y, unbiased=True))) < 0.01
    # Normal(0, 1) vs Normal(1, 1): 2 E|N(1, 2)| - 2 E|N(0, 2)| = 0.5418; sampling SD ~0.035.
    exact = 2 * _expected_abs_normal(1.0, math.sqrt(2)) - 2 * _expected_abs_normal(
        0.0, math.sqrt(2)
    )
    shifted = float(energy_distance(x, y + 1.0))
    assert shifted > 0.3
    assert shifted == pytest.approx(exact, abs=0.1)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_energy_distance_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"y: expected shape \(n, 2\)"):
        energy_distance(jnp.zeros((4, 2)), jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"x: expected shape \(n, d\)"):
        energy_distance(jnp.zeros(4), jnp.zeros((4, 1)))
    with pytest.raises(ValueError, match="x: expected at least 2 draws"):
        energy_distance(jnp.zeros((1, 2)), jnp.zeros((4, 2)), unbiased=True)
    with pytest.raises(ValueError, match="y: contains 1 NaN"):
        energy_distance(jnp.zeros((4, 2)), jnp.zeros((4, 2)).at[2, 0].set(jnp.inf))


# ---------------------------------------------------------------------------------------------
# Log evidence
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_log_evidence_estimate_exact_values():
    est = log_evidence_estimate(jnp.log(jnp.array([1.0, 1.0, 4.0, 2.0])))
    assert isinstance(est, LogEvidenceEstimate)
    assert float(est.log_z) == pytest.approx(math.log(2.0), abs=1e-6)
    assert float(est.ess) == pytest.approx(64 / 22, rel=1e-5)
    # Equal weights: ESS n. Zero weights (-inf) count as draws with no weight.
    equal = log_evidence_estimate(jnp.full((3, 10), -2.5))
    np.testing.assert_allclose(equal.log_z, -2.5, atol=1e-6)
    np.testing.assert_allclose(equal.ess, 10.0, rtol=1e-5)
    one = log_evidence_estimate(jnp.array([-jnp.inf, 3.0, -jnp.inf, -jnp.inf]))
    assert float(one.log_z) == pytest.approx(3.0 - math.log(4.0), abs=1e-6)
    assert float(one.ess) == pytest.approx(1.0)
    none = log_evidence_estimate(jnp.full(5, -jnp.inf))
    assert float(none.log_z) == -math.inf and float(none.ess) == 0.0


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_log_evidence_estimate_recovers_a_known_normalizer():
    # Target Z * Normal(x; 1, 0.5^2) with log Z = 2.3, proposal Normal(0, 1) (heavier tails).
    x = np.random.default_rng(5).normal(size=20000)
    log_target = 2.3 + scipy.stats.norm.logpdf(x, 1.0, 0.5)
    est = log_evidence_estimate(log_target - scipy.stats.norm.logpdf(x))
    # E_q[(w / Z)^2] = int p^2 / q = 2.677, so one weight has relative SD 1.295 and the estimate
    # has SD 0.009 in log space; Kish's ESS is about n / 2.677 = 0.374 n.
    assert float(est.log_z) == pytest.approx(2.3, abs=0.03)
    assert 0.34 * 20000 < float(est.ess) < 0.41 * 20000


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_log_evidence_estimate_rejects_nan_and_plus_inf():
    with pytest.raises(ValueError, match="log_weights: contains 1 NaN"):
        log_evidence_estimate(jnp.array([0.0, jnp.nan, 1.0]))
    with pytest.raises(ValueError, match=r"log_weights: contains 2 \+inf"):
        log_evidence_estimate(jnp.array([jnp.inf, jnp.inf, 1.0]))
    with pytest.raises(ValueError, match=r"log_weights: expected shape \(\.\.\., n\)"):
        log_evidence_estimate(jnp.asarray(1.0))


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_posterior_report_of_exact_draws(problem, exact_draws):
    # All 20000 draws (shapes compiled by the tests above); the distances thin both to 500.
    draws = exact_draws
    posterior = problem.exact_posterior
    # Draws from the exact posterior, weighted against the joint: every weight is Z exactly.
    log_weights = problem.log_joint(draws) - posterior.log_prob(draws)
    report = posterior_report(
        draws,
        exact=posterior,
        log_likelihood=problem.log_likelihood,
        log_z_estimate=log_evidence_estimate(log_weights),
        true_log_z=problem.log_evidence,
        key=jax.random.key(1),
        max_distance_samples=500,
    )
    assert report.num_samples == 20000 and report.num_reference == 500
    assert report.mode_weights.shape == report.exact_weights.shape == (25,)
    assert report.mode_weight_tv == pytest.approx(
        total_variation(report.mode_weights, posterior.weights)
    )
    assert report.mode_weight_tv < 0.02  # E[TV] ~ 0.006 for n = 20000
    assert report.modes.all_found and report.modes.num_significant == 9
    assert 0 <= report.energy_distance < 0.1 and abs(report.mmd2) < 0.01
    expected_ll = float(jnp.mean(problem.log_likelihood(draws)))
    assert report.mean_log_likelihood == pytest.approx(expected_ll)
    assert report.mean_exact_log_prob == pytest.approx(float(jnp.mean(posterior.log_prob(draws))))
    assert report.log_z_ess == pytest.approx(20000, rel=1e-3)
    assert abs(report.log_z_error) < 1e-4
    assert report.true_log_z == pytest.approx(-6.40331, abs=1e-4)
    summary = json.loads(json.dumps(report.to_dict()))
    assert summary["num_modes_found"] == 9 and len(summary["mode_counts"]) == 25
    assert summary["log_z_error"] == report.log_z_error


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_posterior_report_with_reference_samples_only(exact_draws):
    draws, reference = exact_draws[:500], exact_draws[1000:2000]
    # The reference is thinned to 500 draws: the shapes of the test above, compiled already.
    report = posterior_report(draws, reference_samples=reference + 3.0, max_distance_samples=500)
    assert report.num_reference == 500
    assert report.energy_distance > 1.0 and report.mmd2 > 0.1
    for field in ("mode_weights", "modes", "mean_log_likelihood", "log_z_error", "log_z_ess"):
        assert getattr(report, field) is None
    bare = posterior_report(draws, log_z_estimate=-1.5)
    assert bare.log_z_estimate == -1.5 and bare.energy_distance is None
    assert bare.to_dict()["num_modes_found"] is None


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_posterior_report_rejects_bad_inputs(problem):
    draws = jnp.zeros((10, 2))
    with pytest.raises(ValueError, match="true_log_z: given without log_z_estimate"):
        posterior_report(draws, true_log_z=-6.4)
    with pytest.raises(ValueError, match=r"reference_samples: expected shape \(n, 2\)"):
        posterior_report(draws, reference_samples=jnp.zeros((10, 3)))
    with pytest.raises(ValueError, match="exact: expected a mixture in d = 3"):
        posterior_report(jnp.zeros((10, 3)), exact=problem.exact_posterior)
    with pytest.raises(ValueError, match=r"log_likelihood\(samples\): expected shape \(10,\)"):
        posterior_report(draws, log_likelihood=lambda x: x)
    with pytest.raises(ValueError, match="max_distance_samples"):
        posterior_report(draws, reference_samples=draws, max_distance_samples=1)


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def _log_density(points):  # any (P, 2) -> (P,) function; numpy keeps the test free of compiles
    return -0.5 * np.sum(np.asarray(points) ** 2, axis=-1)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_plot_samples_2d_draws_one_panel_per_method(exact_draws):
    methods = {"exact": exact_draws[:300], "shifted": exact_draws[300:600] + 1.0}
    fig = plot_samples_2d(methods, _log_density, extent=(-12, 12, -12, 12), grid_size=40)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    for ax in fig.axes:
        assert len(ax.collections) >= 2  # contour set and scatter
        assert ax.get_xlim() == (-12.0, 12.0)
    fig.canvas.draw()
    five = plot_samples_2d({str(i): exact_draws[:50] for i in range(5)}, max_points=20)
    assert len(five.axes) == 5  # a 2 x 4 grid with its 3 spare panels removed
    assert all(len(ax.collections) == 1 for ax in five.axes)  # no contours
    given = Figure()
    axes = given.subplots(1, 3)
    assert plot_samples_2d(methods, axes=axes) is given
    assert len(axes[2].collections) == 0


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_plot_samples_2d_rejects_bad_inputs(exact_draws):
    with pytest.raises(ValueError, match="samples_by_method: expected a non-empty dict"):
        plot_samples_2d({})
    with pytest.raises(ValueError, match=r"samples_by_method\['a'\]: expected shape \(n, 2\)"):
        plot_samples_2d({"a": np.zeros((5, 3))})
    with pytest.raises(ValueError, match="extent"):
        plot_samples_2d({"a": exact_draws[:5]}, extent=(1, 0, 0, 1))
    with pytest.raises(ValueError, match=r"log_density_fn\(points\): expected shape"):
        plot_samples_2d({"a": exact_draws[:5]}, lambda p: p, grid_size=4)
    with pytest.raises(ValueError, match="log_density_fn: returned NaN"):
        plot_samples_2d({"a": exact_draws[:5]}, lambda p: np.full(len(p), np.nan), grid_size=4)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_plot_mode_weights_groups_the_top_components(problem, exact_draws):
    posterior = problem.exact_posterior
    weights = {
        "exact draws": mode_weights(exact_draws, posterior),
        "one mode": jnp.zeros(25).at[CENTRE].set(1.0),
    }
    fig = plot_mode_weights(weights, posterior.weights, top_k=9)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    (ax,) = fig.axes
    assert len(ax.patches) == 10 * 3  # 9 modes + "rest", for exact and two methods
    names = [tick.get_text() for tick in ax.get_xticklabels()]
    assert names[0] == str(CENTRE) and names[-1] == "rest" and len(names) == 10
    fig.canvas.draw()
    labels = [f"({a}, {b})" for a in range(-2, 3) for b in range(-2, 3)]
    small = plot_mode_weights(weights, posterior.weights, labels=labels, top_k=3, show_rest=False)
    assert len(small.axes[0].patches) == 3 * 3
    assert small.axes[0].get_xticklabels()[0].get_text() == "(0, 0)"
    given = Figure()
    ax = given.subplots()
    assert plot_mode_weights(weights, posterior.weights, ax=ax) is given
    assert len(ax.patches) == 30 and ax.get_legend() is not None


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_plot_mode_weights_rejects_bad_inputs():
    exact = np.array([0.5, 0.3, 0.2])
    with pytest.raises(ValueError, match=r"weights_by_method\['a'\]: expected shape \(3,\)"):
        plot_mode_weights({"a": np.ones(4) / 4}, exact)
    with pytest.raises(ValueError, match="labels: expected 3 component names"):
        plot_mode_weights({"a": exact}, exact, labels=["x", "y"])
    with pytest.raises(ValueError, match="exact_weights: expected non-negative"):
        plot_mode_weights({"a": exact}, -exact)
    with pytest.raises(ValueError, match="top_k"):
        plot_mode_weights({"a": exact}, exact, top_k=0)
    with pytest.raises(ValueError, match="ax: expected a matplotlib Axes"):
        plot_mode_weights({"a": exact}, exact, ax="not axes")
