"""Tests of diffusion posterior sampling (amortized_ppl.diffusion.dps).

Tiers: exact-value tests (zero guidance is the prior sampler, key for key; the Tweedie inversion
of the exact drift is the mixture's posterior mean; the first guided step equals an independent
``jax.grad`` through the denoiser, in both modes); a statistical test against closed forms (on a
Gaussian prior with a linear-Gaussian likelihood the DPS chain is linear-Gaussian: its law is
propagated exactly and compared with the samples and with the true posterior); a smoke test on
the 2-D toy; input checks.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.diffusion import (
    brownian_bridge_schedule,
    gmm_exact_drift,
    sample_trajectories,
    vp_schedule,
)
from amortized_ppl.diffusion.dps import denoised_estimate, dps_sample, dps_scale_sweep
from amortized_ppl.diffusion.prior import gmm_posterior_mean
from amortized_ppl.diffusion.sampler import trajectory_log_prob
from amortized_ppl.models.inverse_problems import (
    gaussian_mixture,
    grid_prior_2d,
    linear_gaussian_posterior,
    toy_2d_problem,
)


def _drift(x, t):
    return -x + t * jnp.sin(x)


def _log_r(x):
    return -0.5 * jnp.sum((x - jnp.array([1.0, -2.0])) ** 2) / 0.5**2


def _residual(x):
    return jnp.array([1.0, -2.0]) - 2.0 * x


# One chain length and batch for the cheap tests: each (drift, guidance, mode) compiles once.
NUM_STEPS, NUM = 20, 16


# ---------------------------------------------------------------------------------------------
# Exact values
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_zero_guidance_is_the_prior_sampler(key):
    schedule = brownian_bridge_schedule(NUM_STEPS, 2)
    prior = sample_trajectories(key, _drift, schedule, NUM)
    for log_r, scale in ((lambda x: 0.0, 1.0), (_log_r, 0.0)):
        traj = dps_sample(key, _drift, schedule, log_r, NUM, scale=scale)
        assert traj.states.shape == (NUM, NUM_STEPS + 1, 2)
        assert traj.log_pf.shape == (NUM, NUM_STEPS)
        np.testing.assert_allclose(traj.states, prior.states, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(traj.log_pf, prior.log_pf, rtol=1e-5, atol=1e-5)
    # Normalized mode with scale 0, and a given start.
    x_init = jax.random.normal(jax.random.key(3), (NUM, 2))
    prior = sample_trajectories(key, _drift, schedule, NUM, x_init=x_init)
    traj = dps_sample(key, _drift, schedule, None, NUM, scale=0.0, mode="normalized",
                      residual_fn=_residual, x_init=x_init)
    np.testing.assert_allclose(traj.states, prior.states, rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_deterministic_given_key(key):
    schedule = brownian_bridge_schedule(NUM_STEPS, 2)
    first = dps_sample(key, _drift, schedule, _log_r, NUM).states
    again = dps_sample(key, _drift, schedule, _log_r, NUM).states
    other = dps_sample(jax.random.key(1), _drift, schedule, _log_r, NUM).states
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_denoised_estimate_inverts_the_exact_drift():
    # For the exact drift, a x + h f = A x + B E[x_N | x_n]: the inversion is Tweedie's mean.
    prior = grid_prior_2d()
    steps = jnp.array([0, 1, 10, 25, 49])

    @eqx.filter_jit  # the schedule is an argument: one compilation for both schedules
    def both(schedule, n):
        drift_fn = gmm_exact_drift(prior, schedule)
        m, std = schedule.marginal_scale[n], schedule.marginal_std[n]
        x = (7.0 * m + std) * jax.random.normal(jax.random.fold_in(jax.random.key(0), n), (8, 2))
        want = jax.vmap(lambda xi: gmm_posterior_mean(prior, m, std, xi))(x)
        return denoised_estimate(drift_fn, schedule, x, n), want

    for schedule in (brownian_bridge_schedule(50, 2), vp_schedule(50, 2)):
        got, want = eqx.filter_vmap(both, in_axes=(None, 0))(schedule, steps)
        assert got.shape == (5, 8, 2)
        np.testing.assert_allclose(got, want, atol=1e-3)  # float32, divided by B_n >= 2.6e-3
    assert denoised_estimate(_drift, schedule, jnp.ones(2), 3).shape == (2,)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
@pytest.mark.parametrize("mode", ["variance", "normalized"])
def test_first_step_is_the_gradient_through_the_denoiser(key, mode):
    # Same key and start: the first transition differs from the prior's by the guidance only.
    schedule = brownian_bridge_schedule(NUM_STEPS, 2)
    x_init = jax.random.normal(jax.random.key(5), (NUM, 2))
    scale = 0.7
    if mode == "variance":
        traj = dps_sample(key, _drift, schedule, _log_r, NUM, scale=scale, x_init=x_init)
        potential = _log_r
        step = scale * schedule.noise_std[0] ** 2
    else:
        traj = dps_sample(key, _drift, schedule, None, NUM, scale=scale, mode=mode,
                          residual_fn=_residual, x_init=x_init)
        potential = lambda x0: -jnp.linalg.norm(_residual(x0))
        step = scale
    prior = sample_trajectories(key, _drift, schedule, NUM, x_init=x_init)
    guided = lambda x: potential(denoised_estimate(_drift, schedule, x, 0))
    grad = jax.jit(jax.vmap(jax.grad(guided)))
    np.testing.assert_allclose(traj.states[:, 1] - prior.states[:, 1], step * grad(x_init),
                               rtol=1e-4, atol=1e-4)
    # log_pf is the guided kernel's: at the first step the noise is the prior's, so equal.
    np.testing.assert_allclose(traj.log_pf[:, 0], prior.log_pf[:, 0], atol=1e-3)
    assert not np.allclose(traj.log_pf, trajectory_log_prob(_drift, schedule, traj.states))


# ---------------------------------------------------------------------------------------------
# Statistics: Gaussian prior, linear-Gaussian likelihood
# ---------------------------------------------------------------------------------------------


def _gaussian_dps_chain(schedule, mu, cov, A, y, noise, scale):
    """The DPS chain of a Gaussian prior ``N(mu, cov)`` and ``y = A x + N(0, noise^2 I)``.

    Everything is affine in closed form (float64 numpy, independent of the module):
    ``x0_hat(x) = E[x_N | x_n = x] = J_n x + (mu - m_n J_n mu)`` with
    ``J_n = m_n cov (m_n^2 cov + v_n I)^{-1}``; the exact drift makes the prior mean
    ``A_n x + B_n x0_hat(x)``, and the guidance adds
    ``scale sigma_n^2 J_n^T A^T (y - A x0_hat(x)) / noise^2``.

    Returns:
        ``(drift_fn, mean, cov)``: the exact prior drift (jnp, affine) and the exact law of the
        guided chain's ``x_N``.
    """
    sched = {k: np.asarray(v, np.float64) for k, v in schedule._asdict().items() if k != "dim"}
    num_steps, dim = schedule.num_steps, schedule.dim
    eye = np.eye(dim)
    law_mean, law_cov = np.zeros(dim), np.zeros((dim, dim))
    drift_gain, drift_shift = np.zeros((num_steps, dim, dim)), np.zeros((num_steps, dim))
    for n in range(num_steps):
        m, v = sched["marginal_scale"][n], max(sched["marginal_std"][n] ** 2, 1e-12)
        jac = m * cov @ np.linalg.inv(m**2 * cov + v * eye)
        offset = mu - m * jac @ mu
        a, h, sigma = sched["mean_scale"][n], sched["drift_step"][n], sched["noise_std"][n]
        prior_gain = sched["bridge_x_coef"][n] * eye + sched["bridge_data_coef"][n] * jac
        prior_shift = sched["bridge_data_coef"][n] * offset
        drift_gain[n], drift_shift[n] = (prior_gain - a * eye) / h, prior_shift / h
        c = scale * sigma**2 / noise**2
        gain = prior_gain - c * jac.T @ A.T @ A @ jac
        shift = prior_shift + c * jac.T @ A.T @ (y - A @ offset)
        law_mean = gain @ law_mean + shift
        law_cov = gain @ law_cov @ gain.T + sigma**2 * eye
    drift_gain, drift_shift = jnp.asarray(drift_gain), jnp.asarray(drift_shift)

    def drift_fn(x, t):
        n = jnp.round(t * num_steps).astype(jnp.int32)
        return drift_gain[n] @ x + drift_shift[n]

    return drift_fn, law_mean, law_cov


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_gaussian_linear_law_and_bias():
    # Prior N(mu, S), y = x_1 + x_2 + N(0, 1) observed at 3: posterior mean (1.9, 0.5).
    mu, cov = np.array([1.0, -1.0]), np.array([[1.0, 0.5], [0.5, 2.0]])
    A, y, noise = np.array([[1.0, 1.0]]), np.array([3.0]), 1.0
    posterior, _ = linear_gaussian_posterior(
        gaussian_mixture(jnp.ones(1), mu[None], cov[None]), A, y, noise)
    post_mean = np.asarray(posterior.means[0], np.float64)
    schedule = brownian_bridge_schedule(50, 2)
    drift_fn, law_mean, law_cov = _gaussian_dps_chain(schedule, mu, cov, A, y, noise, 1.0)
    A32, y32 = jnp.asarray(A, jnp.float32), jnp.asarray(y, jnp.float32)
    log_r = lambda x: -0.5 * jnp.sum((y32 - A32 @ x) ** 2) / noise**2
    num = 400
    samples = np.asarray(dps_sample(jax.random.key(0), drift_fn, schedule, log_r, num)
                         .states[:, -1], np.float64)
    # 1. The sampler follows the chain's exact law: the mean within 4.5 SE, the covariance
    # within 0.25 (its entries' sampling SDs are below 0.06 for 400 samples).
    se = np.sqrt(np.diag(law_cov) / num)
    assert np.all(np.abs(samples.mean(0) - law_mean) < 4.5 * se)
    np.testing.assert_allclose(np.cov(samples.T), law_cov, atol=0.25)
    # 2. DPS is biased but pulls the right way by about the right amount. r at the denoised point
    # overstates the precision of p(y | x_n) (it drops Cov[x_N | x_n]), so DPS overshoots towards
    # y: A mean = 2.95 (2.94 with 1000 steps: not a discretization error) against 2.4 exactly,
    # from 0 under the prior. Allow the DPS mean within 35% of the prior-to-posterior shift.
    shift = np.linalg.norm(post_mean - mu)
    assert np.linalg.norm(law_mean - post_mean) < 0.35 * shift
    assert 1.0 < (A @ (law_mean - mu))[0] / (A @ (post_mean - mu))[0] < 1.35
    assert np.linalg.norm(samples.mean(0) - post_mean) < 0.35 * shift


# ---------------------------------------------------------------------------------------------
# The 2-D toy, the sweep
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_toy_2d_runs(key):
    problem = toy_2d_problem()
    schedule = brownian_bridge_schedule(50, 2)
    drift_fn = gmm_exact_drift(problem.prior, schedule)
    traj = dps_sample(key, drift_fn, schedule, problem.log_likelihood, 256)
    assert traj.states.shape == (256, 51, 2) and traj.log_pf.shape == (256, 50)
    assert bool(jnp.all(jnp.isfinite(traj.states))) and bool(jnp.all(jnp.isfinite(traj.log_pf)))
    # The guidance keeps the posterior's 3 x 3 centre block (0.9992 of the exact mass, 0.36 of
    # the prior's); how it shares it between modes is DPS's bias, not asserted here.
    samples = traj.states[:, -1]
    assert float(jnp.mean(jnp.all(jnp.abs(samples) < 7.5, axis=-1))) > 0.9


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_scale_sweep(key):
    schedule = brownian_bridge_schedule(NUM_STEPS, 2)
    scales = [0.0, 1.0, 1e6]
    out = dps_scale_sweep(key, _drift, schedule, _log_r, NUM, scales,
                          lambda s: jnp.mean(s[:, 0]))
    assert out.samples.shape == (3, NUM, 2) and out.scores.shape == (3,)
    np.testing.assert_array_equal(out.is_finite, [True, True, False])
    assert math.isnan(out.scores[2])
    prior = sample_trajectories(key, _drift, schedule, NUM).states[:, -1]
    np.testing.assert_allclose(out.samples[0], prior, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.samples[1], dps_sample(key, _drift, schedule, _log_r, NUM)
                               .states[:, -1], rtol=1e-6, atol=1e-6)
    assert out.scores[1] > out.scores[0]  # pulled towards x_1 = 1 from the prior's 0


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num": 0}, "num"),
        ({"num": 2.5}, "num"),
        ({"scale": math.nan}, "scale"),
        ({"scale": math.inf}, "scale"),
        ({"scale": -1.0}, "scale"),
        ({"scale": "big"}, "scale"),
        ({"mode": "chung"}, "mode"),
        ({"log_likelihood": lambda x: x}, "log_likelihood"),
        ({"log_likelihood": lambda x: jnp.sum(x)[None]}, "log_likelihood"),
        ({"log_likelihood": lambda x: jnp.sum(x * jnp.ones(3))}, "log_likelihood"),
        ({"log_likelihood": None}, "log_likelihood"),
        ({"log_likelihood": "not callable"}, "log_likelihood"),
        ({"log_likelihood": lambda x: jnp.sum(x).astype(jnp.int32)}, "log_likelihood"),
        ({"residual_fn": _residual}, "residual_fn"),
        ({"mode": "normalized", "residual_fn": lambda x: jnp.sum(x * jnp.ones(3))}, "residual_fn"),
        ({"mode": "normalized"}, "residual_fn"),
        ({"x_init": jnp.zeros((3, 2))}, "x_init"),
        ({"x_init": jnp.full((4, 2), jnp.nan)}, "x_init"),
    ],
)
def test_bad_inputs(key, kwargs, match):
    args = {"log_likelihood": _log_r, "num": 4}
    args.update(kwargs)
    log_likelihood, num = args.pop("log_likelihood"), args.pop("num")
    schedule = brownian_bridge_schedule(10, 2)
    with pytest.raises(ValueError, match=match):
        dps_sample(key, _drift, schedule, log_likelihood, num, **args)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_bad_inputs_elsewhere(key):
    schedule = brownian_bridge_schedule(10, 2)
    with pytest.raises(TypeError, match="key"):
        dps_sample(0, _drift, schedule, _log_r, 4)
    for n in (-1, 10, 1.5):
        with pytest.raises(ValueError, match="n: "):
            denoised_estimate(_drift, schedule, jnp.zeros(2), n)
    with pytest.raises(ValueError, match="x: "):
        denoised_estimate(_drift, schedule, jnp.zeros(3), 0)
    bad = schedule._replace(bridge_data_coef=schedule.bridge_data_coef.at[2].set(0.0))
    with pytest.raises(ValueError, match="schedule"):
        dps_sample(key, _drift, bad, _log_r, 4)
    with pytest.raises(ValueError, match="scales"):
        dps_scale_sweep(key, _drift, schedule, _log_r, 4, [], jnp.mean)
    with pytest.raises(ValueError, match="scale"):
        dps_scale_sweep(key, _drift, schedule, _log_r, 4, [1.0, -1.0], jnp.mean)
    with pytest.raises(ValueError, match="score_fn"):
        dps_scale_sweep(key, _drift, schedule, _log_r, 4, [1.0], None)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_non_finite_samples_raise(key):
    schedule = brownian_bridge_schedule(NUM_STEPS, 2)
    with pytest.raises(FloatingPointError, match="non-finite states from step"):
        dps_sample(key, _drift, schedule, _log_r, NUM, scale=1e6)
