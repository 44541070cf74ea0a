"""SBC on the joint of a hierarchical posterior, and its ArviZ object with a group dimension."""

import equinox as eqx
import jax
import numpy as np
import pytest

from amortized_ppl.hierarchy import (
    fit_marginal,
    hierarchical_inference_data,
    hierarchical_sbc,
    hierarchical_trust_ladder,
    sample_hierarchical,
    shrink_draws,
)
from amortized_ppl.models import hierarchical as h


@pytest.mark.slow  # the default tier's budget (3 minutes on 2 cores)
def test_inference_data_names_the_group_dimension(schools):
    problem, network = schools
    data = h.eight_schools_data()
    draws = sample_hierarchical(jax.random.key(0), problem, network, data, num_draws=200)
    idata = hierarchical_inference_data(problem, draws, data,
                                        group_names=list("ABCDEFGH"))
    theta = idata.posterior["theta_decentered"]
    assert theta.dims == ("chain", "draw", "group") and theta.shape == (1, 200, 8)
    assert list(idata.posterior["group"].values) == list("ABCDEFGH")
    assert idata.observed_data["y"].dims == ("group", "obs")
    assert float(idata.posterior["tau"].min()) > 0.0  # constrained values
    with pytest.raises(ValueError, match="3 names for 8 groups"):
        hierarchical_inference_data(problem, draws, group_names=["a", "b", "c"])


@pytest.mark.slow
def test_sbc_passes_the_corrected_posterior_and_rejects_a_shrunk_copy(schools):
    """The corrected draws (a proposal covering the posterior, exact conditionals, PSIS) are
    calibrated up to importance-sampling error; halving every spread must be rejected. 100 data
    sets x 99 draws. Keys 5, 6, 7 gave combined p-values 0.022, 0.87, 0.39 for the corrected
    draws, and the test's floor (0.0025: 2,000 null simulations, 5 tests) for the shrunk copy
    every time; a calibrated posterior's p-value is uniform, so it fails 1% of keys by design."""
    problem, network = schools

    def posterior(key, data):
        fit = fit_marginal(problem, network, data)
        return sample_hierarchical(key, problem, network, data, num_draws=1000,
                                   newton_steps=1, marginal=fit)

    good = hierarchical_sbc(jax.random.key(6), problem, posterior, num_datasets=100)
    bad = hierarchical_sbc(jax.random.key(6), problem,
                           lambda k, d: shrink_draws(posterior(k, d), 0.5), num_datasets=100)
    assert not good.rejects(0.01), good.to_dict()
    assert bad.rejects(0.01), bad.to_dict()
    assert good.ranks.shape == (100, 4) and np.all(good.ranks <= 99)


@pytest.mark.slow
def test_the_ladder_climbs_to_the_rung_that_passes(schools):
    """Network off. With the prior's robust scale three times widened (the fixture) its
    resampled draws pass the first rung (k-hat 0.49 here); with it at 0.3 times they fail it
    (0.94), the corrected rung gives 0.77: corrected under a threshold of 0.8, NUTS under 0.7."""
    problem, network = schools
    data = h.eight_schools_data()
    ladder = hierarchical_trust_ladder(jax.random.key(0), problem, network, data,
                                       num_draws=1000, newton_steps=1)
    assert ladder.path == "amortized" and ladder.khat["amortized"] <= 0.5
    assert ladder.draws.resampled and ladder.draws.u.shape == (1000, 8, 1)
    narrow = eqx.tree_at(lambda p: p.global_scale, problem, problem.global_scale * 0.1)
    corrected = hierarchical_trust_ladder(jax.random.key(0), narrow, network, data,
                                          num_draws=1000, newton_steps=1, corrected_khat=0.8)
    assert corrected.path == "corrected" and corrected.khat["amortized"] > 0.5
    forced = hierarchical_trust_ladder(jax.random.key(0), narrow, network, data,
                                       num_draws=1000, newton_steps=1,
                                       nuts_kwargs={"num_warmup": 200, "num_samples": 200})
    assert forced.path == "nuts" and forced.khat["corrected"] > 0.7
    assert forced.nuts_rhat_max < 1.05
    assert forced.draws.g.shape == (800, 2) and forced.draws.u.shape == (800, 8, 1)


def test_sbc_refuses_fewer_data_sets_than_its_test_needs(schools):
    """Refused before any simulation, not after (the uniformity test needs 50)."""
    problem, _ = schools
    with pytest.raises(ValueError, match="num_datasets"):
        hierarchical_sbc(jax.random.key(0), problem, lambda k, d: None, num_datasets=20)
