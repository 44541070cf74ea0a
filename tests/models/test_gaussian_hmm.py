"""The continuous Bayesian HMM (amortized_ppl/models/gaussian_hmm.py) and its amortized guide against NUTS."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from numpyro.infer import Predictive
from numpyro.infer.util import log_density

from amortized_ppl.models.gaussian_hmm import (
    FIRST_MEAN_LOC,
    FIRST_MEAN_SCALE,
    GAP_LOG_LOC,
    GAP_LOG_SCALE,
    GaussianHMM,
    OrderedMeans,
    design_fn,
    log_likelihood,
    model,
    simulate,
    transition_concentration,
)
from amortized_ppl.sequence.hmm import enumerate_log_evidence

BENCH_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gaussian_hmm.py"


def _brute_force(y, means, transition, noise):
    """log p(y_1:n) for every prefix n by enumerating all S**n hidden paths."""
    log_lik = dist.Normal(means, noise).log_prob(y[:, None])
    log_init = jnp.full(3, -math.log(3.0))
    return jnp.array([
        enumerate_log_evidence(log_init, jnp.log(transition), log_lik[:n])
        for n in range(1, len(y) + 1)
    ])


def test_observed_site_log_prob_equals_enumeration_and_prefixes_are_exact():
    draw = jax.jit(simulate, static_argnums=1)(jax.random.key(0), 6)
    params = {"means": draw.means, "transition": draw.transition, "noise": draw.noise}

    # One compile for the whole comparison: op by op, the enumeration of every prefix length
    # compiles its primitives again for each length.
    @jax.jit
    def compute(y, params):
        terms = GaussianHMM(params["means"], params["transition"], params["noise"], 6).log_prob(y)
        joint, _ = log_density(model, (), {"y": y}, params)
        prior = (
            OrderedMeans().log_prob(params["means"])
            + dist.Dirichlet(transition_concentration()).log_prob(params["transition"]).sum()
            + dist.LogNormal(math.log(0.4), 0.25).log_prob(params["noise"])
        )
        return terms, _brute_force(y, **params), joint, prior, log_likelihood(y, **params)

    terms, brute_force, joint, prior, total = compute(draw.y, params)
    assert terms.shape == (6,)
    # The cumulative sums of the per-step terms are the evidences of every prefix: this is what
    # makes masking the tail of a padded sequence exact.
    np.testing.assert_allclose(jnp.cumsum(terms), brute_force, atol=1e-5)
    np.testing.assert_allclose(total, jnp.sum(terms), rtol=1e-6)
    # The whole model: prior terms plus the marginal likelihood of y.
    np.testing.assert_allclose(joint, prior + jnp.sum(terms), rtol=1e-5)


def test_log_prob_broadcasts_over_sample_dims():
    draw = jax.jit(simulate, static_argnums=1)(jax.random.key(1), 5)

    @jax.jit
    def compute(key, draw):
        hmm = GaussianHMM(draw.means, draw.transition, draw.noise, 5)
        ys = hmm.sample(key, (2, 3))
        return ys, hmm.log_prob(ys), hmm.log_prob(ys[1, 2])

    ys, batched, single = compute(jax.random.key(2), draw)
    assert ys.shape == (2, 3, 5)
    assert batched.shape == (2, 3, 5)  # per-step terms (see the test above)
    np.testing.assert_allclose(batched[1, 2], single, rtol=1e-6)


def test_ordered_means_prior_is_normal_in_unconstrained_space():
    prior = OrderedMeans()
    transform = biject_to(constraints.ordered_vector)
    assert prior.support is constraints.ordered_vector

    @jax.jit
    def compute(key):
        x = prior.sample(key, (1000,))
        u = transform.inv(x)
        # Change of variables: log p_x(T(u)) + log|J_T(u)| must be the Normal density of u.
        normal = dist.Normal(
            jnp.array([FIRST_MEAN_LOC, GAP_LOG_LOC, GAP_LOG_LOC]),
            jnp.array([FIRST_MEAN_SCALE, GAP_LOG_SCALE, GAP_LOG_SCALE]),
        )
        return x, prior.log_prob(x) + transform.log_abs_det_jacobian(u, x), normal.log_prob(u).sum(-1)

    x, change_of_variables, normal_log_prob = compute(jax.random.key(3))
    assert x.shape == (1000, 3) and bool(jnp.all(jnp.diff(x, axis=-1) > 0))
    np.testing.assert_allclose(change_of_variables, normal_log_prob, rtol=1e-5, atol=1e-4)
    with pytest.warns(UserWarning, match="Out-of-support"):
        assert float(prior.log_prob(jnp.array([0.0, -1.0, 1.0]))) == -np.inf  # not ordered


_simulate_many = jax.jit(jax.vmap(simulate, in_axes=(0, None)), static_argnums=1)


def test_simulation_shapes_and_validity():
    draws = _simulate_many(jax.random.split(jax.random.key(4), 50), 120)
    assert draws.y.shape == (50, 120) and draws.states.shape == (50, 120)
    assert bool(jnp.all((draws.states >= 0) & (draws.states < 3)))
    assert bool(jnp.all(jnp.diff(draws.means, axis=-1) > 0)) and bool(jnp.all(draws.noise > 0))
    np.testing.assert_allclose(draws.transition.sum(-1), 1.0, rtol=1e-5)
    predictive = jax.jit(lambda key: Predictive(model, num_samples=3)(key, num_steps=40))(
        jax.random.key(5))
    assert predictive["y"].shape == (3, 40) and predictive["transition"].shape == (3, 3, 3)
    assert design_fn(jax.random.key(0), 40) == ((), {"num_steps": 40})


@pytest.mark.slow
def test_simulated_emissions_and_stays_have_the_prior_statistics():
    draws = _simulate_many(jax.random.split(jax.random.key(4), 50), 120)
    # Emissions sit around their state's mean: residuals have the noise SD.
    residual = (draws.y - jnp.take_along_axis(draws.means, draws.states, 1)) / draws.noise[:, None]
    assert abs(float(jnp.std(residual)) - 1.0) < 0.05
    # Sticky rows: about 2/3 of the steps stay in their state (6,000 steps; SE about 0.02).
    stays = jnp.mean(draws.states[:, 1:] == draws.states[:, :-1])
    assert 0.6 < float(stays) < 0.73


def test_bad_inputs_raise_naming_the_argument():
    means, transition = jnp.array([-1.0, 0.0, 1.0]), jnp.eye(3) * 0.7 + 0.1
    with pytest.raises(ValueError, match="y must be a 1-D"):
        model(y=jnp.zeros((3, 4)))
    with pytest.raises(ValueError, match="at least one time step"):
        model(y=jnp.zeros(0))
    with pytest.raises(ValueError, match="NaN or Inf"):
        model(y=jnp.array([0.0, jnp.nan, 1.0]))
    with pytest.raises(ValueError, match="disagrees"):
        model(y=jnp.zeros(5), num_steps=4)
    with pytest.raises(ValueError, match="num_steps"):
        model()
    with pytest.raises(ValueError, match="num_steps must be a positive int"):
        model(num_steps=0)
    with pytest.raises(ValueError, match="num_obs"):
        design_fn(jax.random.key(0), 0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        log_likelihood(jnp.array([jnp.inf]), means, transition, 0.5)
    with pytest.raises(ValueError, match="one HMM"):
        GaussianHMM(jnp.zeros((2, 3)), transition, 0.5, 4)
    with pytest.raises(ValueError, match="num_steps"):
        simulate(jax.random.key(0), 0)


@pytest.mark.slow
def test_amortized_posterior_matches_nuts_on_held_out_sequences(tmp_path):
    """The issue's targets on held-out sequences: median |mean error| <= 0.2 SD, SD ratio in
    [0.8, 1.25], against NUTS that converged (R-hat < 1.01, no divergences).

    The full benchmark measured 0.068 and 1.075 (20 sequences, benchmarks/results/
    gaussian_hmm.json); this shorter run (10 sequences, 1,200 training steps of 16 sequences)
    keeps the targets themselves as tolerances: the medians over 10 x 13 coordinates move little
    with one odd sequence (the full run's worst, a never-visited state, had SD ratio 4), and their
    Monte Carlo error (2,000 NUTS draws with ESS > 800, 2,000 guide draws) is about 0.03 SD. By
    hand, batches of 32 and of 16 gave 0.114 / 1.199 and 0.119 / 1.169 with this command; the
    smaller batch halves the training, the cost of this test. Training is budgeted in steps, not
    seconds: a time budget made the result depend on the machine's load.

    The benchmark runs as its own process with XLA's default optimization, as users run it: under
    the suite's fast-compile flags (tests/conftest.py) its Newton steps through the HMM's forward
    filter run so slowly that the training would take several times as long.
    """
    out = tmp_path / "hmm.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    run = subprocess.run(
        [sys.executable, str(BENCH_PATH), "--max-train-seconds", "3600", "--train-steps", "1200",
         "--batch-size", "16", "--num-datasets", "10", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    nuts, accuracy = results["nuts"], results["accuracy"]
    assert nuts["rhat_max"] < 1.01 and nuts["num_divergent"] == 0
    assert accuracy["median_mean_error_in_sd"] <= 0.2
    assert 0.8 <= accuracy["median_sd_ratio"] <= 1.25
    assert results["timing"]["nuts_over_amortized"] > 10
