"""The sbibm tasks: shapes, refusals, and exact identities of their models and closed forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer.util import log_density

from amortized_ppl.models.sbibm import (
    TASKS,
    ReferenceCheckError,
    gaussian_linear,
    get_task,
    observation,
    reference_draws,
    simulate,
    slcp,
    slcp_distractors,
)
from amortized_ppl.models.sbibm import bernoulli_glm as glm
from amortized_ppl.models.sbibm.task import check_nuts


def _log_joint(task_model, theta, x):
    return log_density(task_model, (), {"x": x}, {"theta": theta})[0]


def test_unknown_task_is_refused_with_the_known_names():
    with pytest.raises(ValueError, match="Unknown sbibm task 'two_moon'.*two_moons"):
        get_task("two_moon")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TASKS))
def test_simulations_and_observations_have_the_task_shapes(name):
    task = get_task(name)
    theta, x = simulate(jax.random.key(0), task, 3)
    assert theta.shape == (3, task.theta_dim) and x.shape == (3, task.num_obs, task.x_dim)
    theta0, x0 = observation(task, 0)
    again = observation(task, 0)
    assert np.array_equal(x0, again[1]) and not np.array_equal(x0, observation(task, 1)[1])
    assert np.isfinite(float(_log_joint(task.model, theta0, x0)))


def test_bad_observations_are_refused_by_name():
    task = get_task("two_moons")
    with pytest.raises(ValueError, match=r"two_moons: an observation has shape \(1, 2\)"):
        reference_draws(jax.random.key(0), task, jnp.zeros((2, 2)), 10)
    with pytest.raises(ValueError, match="NaN or Inf"):
        reference_draws(jax.random.key(0), task, jnp.array([[jnp.nan, 0.0]]), 10)
    with pytest.raises(ValueError, match="10 observations"):
        observation(task, 10)
    # An observation the prior cannot produce: no preimage inside the box.
    with pytest.raises(ReferenceCheckError, match="rejection kept 0"):
        reference_draws(jax.random.key(0), task, jnp.array([[5.0, 5.0]]), 10)


@pytest.mark.parametrize("variant", ["gaussian", "uniform"])
def test_gaussian_linear_closed_forms_are_the_normalized_joint(variant):
    """log q(theta | x) - log p(theta, x) is the same at every theta in the support: the closed
    form is the joint density normalized, exactly."""
    task = get_task("gaussian_linear" if variant == "gaussian" else "gaussian_linear_uniform")
    posterior = (gaussian_linear.posterior if variant == "gaussian"
                 else gaussian_linear.posterior_uniform)
    _, x = observation(task, 3)
    x = jnp.concatenate([x, x + 0.1])  # two rows: the n-dependence too
    theta = jax.random.uniform(jax.random.key(1), (20, 10), minval=-0.9, maxval=0.9)
    gap = jax.vmap(lambda t: posterior(x).log_prob(t) - _log_joint(task.model, t, x))(theta)
    assert float(jnp.max(gap) - jnp.min(gap)) < 1e-3


@pytest.mark.slow  # the default tier's budget (3 minutes on 2 cores)
def test_slcp_density_is_invariant_under_the_four_sign_flips():
    _, x = observation(get_task("slcp"), 0)
    theta = jnp.array([0.3, -1.0, 1.2, -0.7, 0.4])
    values = [float(_log_joint(slcp.model, theta.at[2].multiply(a).at[3].multiply(b), x))
              for a in (1, -1) for b in (1, -1)]
    assert np.ptp(values) < 1e-4


@pytest.mark.slow  # the 92-d Student-t mixture compiles for 4 s
def test_slcp_distractors_hide_slcp_where_the_recipe_says():
    """sbibm's recipe (seed 42) puts the eight informative numbers at these positions; the
    density is slcp's on them plus the distractors' (constant in theta)."""
    positions = [int(np.flatnonzero(slcp_distractors.permutation() == i)[0]) for i in range(8)]
    assert positions == [22, 33, 23, 67, 42, 21, 16, 90]
    _, x = observation(get_task("slcp_distractors"), 0)
    a, b = jnp.array([0.3, -1.0, 1.2, -0.7, 0.4]), jnp.array([0.0, 0.5, -2.0, 1.0, -1.0])
    rows = slcp_distractors.signal(x)
    difference = _log_joint(slcp_distractors.model, a, x) - _log_joint(slcp_distractors.model, b,
                                                                        x)
    expected = _log_joint(slcp.model, a, rows) - _log_joint(slcp.model, b, rows)
    assert abs(float(difference - expected)) < 1e-2 * (1 + abs(float(expected)))


def test_bernoulli_glm_summary_density_is_the_spike_train_likelihood():
    """Differences in theta of the summary's log density equal those of the Bernoulli
    likelihood of the raw spikes."""
    design = glm.design_matrix()
    assert design.shape == (100, 10) and np.allclose(design[:, 0], 1.0)
    assert np.allclose(design[1:, 2], design[:-1, 1]) and float(design[0, 2]) == 0.0
    spikes = jax.random.bernoulli(jax.random.key(0), 0.3, (100,)).astype(float)
    x = spikes @ design

    def raw(theta):
        logits = design @ theta
        return jnp.sum(spikes * logits - jax.nn.softplus(logits))

    a, b = jnp.linspace(-1, 1, 10), jnp.linspace(0.5, -0.5, 10)
    summary = glm.SpikeSummary(a).log_prob(x) - glm.SpikeSummary(b).log_prob(x)
    assert abs(float(summary - (raw(a) - raw(b)))) < 1e-3
    precision = glm.prior_precision()
    assert float(precision[0, 0]) == 0.5 and np.all(np.linalg.eigvalsh(precision) > 0)


class _FakeResult:
    def __init__(self, rhat, divergent):
        self.rhat = {"theta": np.array([1.0, rhat])}
        self.num_divergent = divergent
        self.samples = {"theta": np.zeros((4, 2500, 2))}


def test_a_reference_failing_its_checks_is_refused():
    with pytest.raises(ReferenceCheckError, match="R-hat 1.050"):
        check_nuts("slcp", _FakeResult(1.05, 0))
    with pytest.raises(ReferenceCheckError, match="11 divergent transitions of 10000"):
        check_nuts("slcp", _FakeResult(1.0, 11))
    check_nuts("slcp", _FakeResult(1.0, 10))
