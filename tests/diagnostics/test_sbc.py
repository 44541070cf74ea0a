"""Simulation-based calibration: the band's coverage, the test's power, coverage curves."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

from amortized_ppl.diagnostics.sbc import (
    coverage_curves,
    ecdf_band,
    ecdf_uniformity_pvalue,
    perturb_posterior,
    sbc,
    sbc_ranks,
    sbc_summary,
)
from amortized_ppl.models.linear_regression import exact_posterior
from tests.helpers import exact_linear_guide, small_design

NUM_FEATURES = 3
NUM_OBS = 30


@pytest.fixture(scope="module")
def exact_guide():
    """The exact posterior as a guide (Laplace fit of a linear-Gaussian model, head zeroed)."""
    return exact_linear_guide(newton_steps=4)  # shared with the other modules; any size works


@pytest.fixture(scope="module")
def simulate(exact_guide):
    guide, _ = exact_guide
    return guide.problem.simulator(small_design, (NUM_OBS, NUM_OBS))


def exact_posterior_fn(key, arguments, mask):
    """One data set's exact posterior (the data sets have a fixed size: no padding to drop)."""
    del key, mask
    post = exact_posterior(arguments["x"], arguments["y"])
    return dist.MultivariateNormal(post.mean, covariance_matrix=post.cov)


def test_band_has_its_simultaneous_coverage():
    num_datasets, num_draws = 200, 50
    band = ecdf_band(jax.random.key(0), num_datasets, num_draws, level=0.95)
    assert band.z.shape == band.lower.shape == band.upper.shape
    assert np.all(band.lower <= band.z) and np.all(band.upper >= band.z)
    fresh = np.asarray(
        jax.random.randint(jax.random.key(1), (num_datasets, 1000), 0, num_draws + 1)
    )
    p = ecdf_uniformity_pvalue(fresh, band)
    # Under uniformity the p-values are uniform: ~5% below 0.05 (1000 samples: SE 0.7%).
    assert 0.025 <= np.mean(p < 0.05) <= 0.08
    assert 0.4 <= np.mean(p) <= 0.6
    u = (fresh + 1.0) / (num_draws + 1.0)
    ecdf = np.mean(u[:, None, :] <= band.z[None, :, None], axis=0)  # (K, 1000)
    inside = np.all((ecdf >= band.lower[:, None]) & (ecdf <= band.upper[:, None]), axis=0)
    assert 0.92 <= inside.mean() <= 0.98


@pytest.mark.slow
def test_exact_posterior_is_calibrated_and_broken_ones_are_rejected(simulate):
    """Statistical: 1,000 data sets, three times (opt in with --runslow)."""
    kwargs = dict(num_datasets=1000, num_draws=100, chunk_size=500)
    good = sbc_ranks(jax.random.key(2), simulate, exact_posterior_fn, **kwargs)
    assert good["ranks"].shape == (1000, NUM_FEATURES + 1)
    assert good["ranks"].min() >= 0 and good["ranks"].max() <= 100
    result = sbc_summary(jax.random.key(3), good["ranks"], good["hpd_ranks"], 100)
    assert not result.rejects(0.01), result.to_dict()
    # Coverage of a calibrated posterior: within 4 binomial SEs of the level at every level.
    se = np.sqrt(result.levels * (1 - result.levels) / 1000)[:, None]
    assert np.all(np.abs(result.coverage - result.levels[:, None]) <= 4 * se + 0.01)
    assert np.all(np.abs(result.joint_coverage - result.levels) <= 4 * se[:, 0] + 0.01)

    for broken in (dict(sd_factor=0.5), dict(shift_sd=0.5)):
        fn = lambda k, a, m, broken=broken: perturb_posterior(  # noqa: E731
            exact_posterior_fn(k, a, m), **broken)
        bad = sbc_ranks(jax.random.key(2), simulate, fn, **kwargs)
        verdict = sbc_summary(jax.random.key(3), bad["ranks"], bad["hpd_ranks"], 100)
        assert verdict.rejects(0.01), (broken, verdict.to_dict())
        # Beyond every one of the 2,000 simulated null statistics: the smallest p-value possible.
        assert verdict.p_values.min() == 1 / 2001


# The guide-level SBC settings: the problem's own design and sizes (20 to 60 observations, so
# padded data sets). The compile-count test reuses them, and with them the compiled program.
GUIDE_SBC = dict(num_datasets=300, num_draws=50)


@pytest.mark.slow  # the default tier's budget (3 minutes on 2 cores)
def test_guide_level_sbc(exact_guide):
    guide, params = exact_guide
    assert guide.problem.design_fn is small_design and guide.problem.num_obs == (20, 60)
    result = sbc(jax.random.key(4), guide, params, **GUIDE_SBC)
    assert result.names == ("w[0]", "w[1]", "w[2]", "b")
    assert result.truth.shape == result.posterior_mean.shape == (300, 4)
    assert not result.rejects(0.01), result.to_dict()
    assert set(result.to_dict()) >= {"p_value", "p_values", "joint_coverage", "seconds"}


@pytest.mark.slow
def test_guide_level_sbc_rejects_halved_sds(exact_guide):
    """Statistical, and a second program (the transform is static): opt in with --runslow."""
    guide, params = exact_guide
    halved = sbc(
        jax.random.key(4),
        guide,
        params,
        posterior_transform=lambda q: perturb_posterior(q, sd_factor=0.5),
        **GUIDE_SBC,
    )
    assert halved.rejects(0.01)
    assert np.all(halved.coverage[-1] < 0.8)  # 95% intervals cover far less when SDs halve


@pytest.mark.slow  # compiles for 3-5 s: the default tier stays under 3 minutes
def test_repeated_sbc_compiles_nothing(exact_guide):
    """Compile-count regression for the hot path: one program per guide and settings.

    ``sbc`` runs a module-level compiled chunk keyed by the problem, the engine's structure and
    the settings, so calling it again (other keys, other parameter values of the same shapes, as
    after more training) must neither trace nor compile anything: not the chunk, nor any eager
    step around it. JAX reports every trace to a jaxpr and every backend compile through
    ``jax.monitoring``; a fresh ``jit`` at the end proves the listener hears both.
    """
    trace_event = "/jax/core/compile/jaxpr_trace_duration"
    compile_event = "/jax/core/compile/backend_compile_duration"
    guide, params = exact_guide
    sbc(jax.random.key(0), guide, params, **GUIDE_SBC)  # compiles, or reuses test_guide_level_sbc's
    retrained = jax.tree.map(lambda v: v * 1.0, params)  # new arrays, same shapes
    events = collections.Counter()

    def listener(event, duration, **kwargs):
        events[event] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        again = sbc(jax.random.key(1), guide, params, **GUIDE_SBC)
        retrained_result = sbc(jax.random.key(1), guide, retrained, **GUIDE_SBC)
        during = {event: events[event] for event in (trace_event, compile_event)}
        jax.jit(lambda x: x + 1.0)(1.0)  # a new program: one trace and one compile
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert during == {trace_event: 0, compile_event: 0}, during
    assert events[trace_event] >= 1 and events[compile_event] >= 1, dict(events)
    # Deterministic given the key: equal parameter values in new arrays give the same ranks.
    np.testing.assert_array_equal(retrained_result.ranks, again.ranks)
    assert again.ranks.shape == (300, 4)


def test_deterministic(simulate):
    a = sbc_ranks(jax.random.key(5), simulate, exact_posterior_fn, num_datasets=60, num_draws=20)
    b = sbc_ranks(jax.random.key(5), simulate, exact_posterior_fn, num_datasets=60, num_draws=20)
    np.testing.assert_array_equal(a["ranks"], b["ranks"])


@pytest.mark.slow  # four more compiled chunk programs
def test_ranks_do_not_depend_on_chunk_size(simulate, exact_guide):
    # Issue 15: chunk_size, a memory setting, changed SBC's ranks.
    a = sbc_ranks(jax.random.key(5), simulate, exact_posterior_fn, num_datasets=50,
                  num_draws=20, chunk_size=7)
    b = sbc_ranks(jax.random.key(5), simulate, exact_posterior_fn, num_datasets=50,
                  num_draws=20, chunk_size=50)
    for name in ("ranks", "hpd_ranks", "truth"):
        np.testing.assert_array_equal(a[name], b[name])
    guide, params = exact_guide
    c = sbc(jax.random.key(2), guide, params, design_fn=small_design, num_datasets=50,
            num_draws=20, chunk_size=20)
    d = sbc(jax.random.key(2), guide, params, design_fn=small_design, num_datasets=50,
            num_draws=20, chunk_size=50)
    np.testing.assert_array_equal(c.ranks, d.ranks)


def test_coverage_curves_from_ranks():
    # Mid-rank positions (r + 0.5) / 101: rank 1 sits inside the central 98% interval, rank 0
    # (the truth below all 100 draws) does not.
    ranks = np.array([[1], [50], [99]])
    cov = coverage_curves(ranks, 100, [0.1, 0.98])
    np.testing.assert_allclose(cov[:, 0], [1 / 3, 1.0])
    np.testing.assert_allclose(coverage_curves(np.array([[0]]), 100, [0.98]), [[0.0]])
    with pytest.raises(ValueError, match="levels"):
        coverage_curves(ranks, 100, [0.0, 0.5])


def test_bad_input(exact_guide, simulate):
    guide, params = exact_guide
    with pytest.raises(ValueError, match="at least 50 data sets"):
        sbc_summary(jax.random.key(0), np.zeros((10, 2), int), np.zeros(10, int), 20)
    band = ecdf_band(jax.random.key(0), 60, 20, num_simulations=200)
    with pytest.raises(ValueError, match="0..20"):
        ecdf_uniformity_pvalue(np.full((60, 1), 21), band)
    with pytest.raises(ValueError, match="60 data sets"):
        ecdf_uniformity_pvalue(np.zeros((61, 1), int), band)
    with pytest.raises(ValueError, match="num_draws"):
        sbc_ranks(jax.random.key(0), simulate, exact_posterior_fn, num_draws=5)
    with pytest.raises(ValueError, match="at most"):
        sbc(jax.random.key(0), guide, params, design_fn=small_design, num_obs=(10, 500))


@pytest.mark.slow
def test_trained_guide_passes_and_its_broken_copies_fail():
    """The issue's target on a trained guide (opt in with --runslow; about two minutes)."""
    from amortized_ppl import AutoAmortizedMultivariateNormal, fit
    from amortized_ppl.models.linear_regression import model_known_noise

    guide = AutoAmortizedMultivariateNormal(model_known_noise, newton_steps=4)
    result = fit(
        jax.random.key(0),
        guide,
        design_fn=small_design,
        num_obs=(10, 100),
        num_steps=300,
        progress=False,
    )
    kwargs = dict(design_fn=small_design, num_obs=(10, 100), num_datasets=1000)
    assert not sbc(jax.random.key(1), guide, result.params, **kwargs).rejects(0.01)
    for broken in (dict(sd_factor=0.5), dict(shift_sd=0.5)):
        verdict = sbc(
            jax.random.key(1),
            guide,
            result.params,
            **kwargs,
            posterior_transform=lambda q, b=broken: perturb_posterior(q, **b),
        )
        assert verdict.rejects(0.01), broken


def test_randomized_coverage_is_exact_under_uniform_ranks():
    ranks = np.asarray(jax.random.randint(jax.random.key(0), (20000, 1), 0, 101))
    mid = coverage_curves(ranks, 100, [0.95])[0, 0]
    randomized = coverage_curves(ranks, 100, [0.95], key=jax.random.key(1))[0, 0]
    assert abs(randomized - 0.95) < 0.005  # 3 SE at 20,000 data sets
    assert abs(mid - 95 / 101) < 0.005  # mid-ranks: ranks 3..97 of 0..100


def test_perturb_posterior_without_closed_form_moments():
    """A mixture has no ``.mean``: its moments come from draws, and the copy is deterministic."""
    from amortized_ppl.families.mixture_posterior import MixturePosterior

    components = dist.MultivariateNormal(jnp.array([[-2.0], [2.0]]), jnp.eye(1))
    mixture = MixturePosterior(jnp.zeros(2), components)
    with pytest.raises(NotImplementedError):
        _ = mixture.mean
    narrow = perturb_posterior(mixture, sd_factor=0.5)
    draws = narrow.sample(jax.random.key(1), (20_000,))
    # mixture SD sqrt(1 + 4); the moments behind the copy come from 1,024 draws (about 2% error)
    assert abs(float(draws.std()) - 0.5 * np.sqrt(5.0)) < 0.08
    assert abs(float(draws.mean())) < 0.15
    again = perturb_posterior(mixture, sd_factor=0.5).sample(jax.random.key(1), (20_000,))
    np.testing.assert_array_equal(np.asarray(again), np.asarray(draws))
