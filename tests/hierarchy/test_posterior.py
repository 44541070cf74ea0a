"""Draws from the hierarchical engine: Newton conditionals and importance resampling, checked
against eight schools' quadrature posterior; the data checks."""

import equinox as eqx
import jax
import numpy as np
import pytest

from amortized_ppl.hierarchy import (
    sample_hierarchical,
)
from amortized_ppl.models import hierarchical as h


def test_network_off_gives_the_priors_robust_gaussians(schools):
    problem, network = schools
    @eqx.filter_jit  # one compiled program instead of hundreds of eager operations
    def read(network, data):
        h_, s, group_mask = network.encode(problem, data)
        posterior = network.global_posterior(problem, s)
        return h_, group_mask, posterior.loc, posterior.scale_tril

    h_, group_mask, loc, tril = read(network, h.eight_schools_data())
    np.testing.assert_allclose(loc, problem.global_loc, rtol=1e-6)
    np.testing.assert_allclose(np.diag(tril), problem.global_scale, rtol=1e-5)
    assert h_.shape[0] == 8 and bool(group_mask.all())


@pytest.mark.slow  # the default tier's budget (3 minutes on 2 cores)
def test_corrected_draws_match_the_quadrature_posterior(schools):
    problem, network = schools
    data = h.eight_schools_data()
    exact = h.eight_schools_exact(data["sigma"], data["y"])
    draws = sample_hierarchical(jax.random.key(2), problem, network, data, num_draws=8000,
                                newton_steps=1)
    g, u = np.asarray(draws.g), np.asarray(draws.u)[..., 0]
    # Six seeds here gave mean errors up to 0.04 SD (mu) and SD errors up to 1.5%; the
    # tolerances are about three times that.
    for values, (mean, sd) in ((g[:, 0], exact["mu"]), (g[:, 1], exact["log_tau"])):
        assert abs(values.mean() - mean) < 0.1 * sd
        assert abs(values.std() / sd - 1.0) < 0.05
    means, sds = exact["theta_decentered"]
    np.testing.assert_allclose(u.mean(0), means, atol=0.1)
    np.testing.assert_allclose(u.std(0) / sds, 1.0, atol=0.06)
    assert draws.resampled and np.isfinite(draws.khat) and draws.ess > 500


@pytest.mark.slow  # statistical, and a second compilation of the draws (5 s)
def test_local_candidates_keep_the_posterior_and_raise_the_ess(schools):
    """IS^2: with the locals proposed from the network's conditional alone (no Newton step, so
    not the exact conditional), eight candidates per school, one kept by its weight, still give
    the quadrature posterior, with a larger ESS than one candidate (joint weights). Keys 4-7:
    ESS 1476-1550 against 906-969 (ratios 1.57-1.70); mean errors within 0.013 SD, SD ratios
    0.944-1.013."""
    problem, network = schools
    data = h.eight_schools_data()
    exact = h.eight_schools_exact(data["sigma"], data["y"])
    one, eight = (sample_hierarchical(jax.random.key(4), problem, network, data,
                                      num_draws=8000, local_candidates=m) for m in (1, 8))
    assert float(eight.ess) > 1.3 * float(one.ess)
    g, u = np.asarray(eight.g), np.asarray(eight.u)[..., 0]
    for values, (mean, sd) in ((g[:, 0], exact["mu"]), (g[:, 1], exact["log_tau"])):
        assert abs(values.mean() - mean) < 0.1 * sd
        assert abs(values.std() / sd - 1.0) < 0.08
    means, sds = exact["theta_decentered"]
    np.testing.assert_allclose(u.mean(0), means, atol=0.1)
    with pytest.raises(ValueError, match="local_candidates"):
        sample_hierarchical(jax.random.key(0), problem, network, data, local_candidates=0)


@pytest.mark.slow  # the default tier's budget (3 minutes on 2 cores)
def test_draws_are_deterministic_given_the_key(schools):
    problem, network = schools
    data = h.eight_schools_data()
    # The sizes of the quadrature test: its compiled program is reused.
    first = sample_hierarchical(jax.random.key(3), problem, network, data, num_draws=8000,
                                newton_steps=1)
    again = sample_hierarchical(jax.random.key(3), problem, network, data, num_draws=8000,
                                newton_steps=1)
    np.testing.assert_array_equal(first.g, again.g)
    np.testing.assert_array_equal(first.u, again.u)


def test_bad_data_is_refused_by_name(schools):
    problem, network = schools
    data = h.eight_schools_data()
    with pytest.raises(ValueError, match=r"missing \['y'\]"):
        sample_hierarchical(jax.random.key(0), problem, network,
                            {k: v for k, v in data.items() if k != "y"})
    with pytest.raises(ValueError, match=r"Groups \[3\] have no observation"):
        sample_hierarchical(jax.random.key(0), problem, network,
                            dict(data, mask=data["mask"].at[3].set(False)))
    with pytest.raises(ValueError, match=r"data\['y'\] contains NaN"):
        sample_hierarchical(jax.random.key(0), problem, network,
                            dict(data, y=data["y"].at[0, 0].set(np.nan)))
    with pytest.raises(ValueError, match=r"data\['sigma'\] must have leading shape \(8, 1\)"):
        sample_hierarchical(jax.random.key(0), problem, network,
                            dict(data, sigma=data["sigma"][:7]))
    with pytest.raises(ValueError, match="num_draws"):
        sample_hierarchical(jax.random.key(0), problem, network, data, num_draws=1)
