"""Tests of the pieces added to fix RTB's training: the tempering schedule, the learned
posterior noise, and the KL-regularized RL baseline (its surrogate and its kernel).

The fast tier checks exact values (the schedule, the surrogate's gradient, the learned noise's
densities); the slow tier trains both kernels on the 1-D bimodal problem of ``test_rtb.py``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.diffusion import (
    DriftNetwork,
    NetworkConfig,
    RTBConfig,
    RTBPosterior,
    brownian_bridge_schedule,
    build_rtb,
    fit_rtb,
    gmm_exact_drift,
    importance_log_z,
    prioritized_replay,
    sample_trajectories,
)
from amortized_ppl.diffusion.kl_rl import build_kl_rl_kernel, kl_rl_surrogate
from amortized_ppl.diffusion.rtb import (
    beta_at,
    check_config,
    log_ratio,
    sample_posterior,
    tempering,
    trainable_filter,
)
from amortized_ppl.diffusion.sampler import normal_log_prob
from amortized_ppl.models.inverse_problems import gaussian_mixture

NUM_STEPS = 10


def test_tempering_is_geometric_then_constant():
    schedule = tempering(100, start=1e-3, end=1.0)
    np.testing.assert_allclose(float(schedule(0)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(50)), math.sqrt(1e-3), rtol=1e-5)
    np.testing.assert_allclose(float(schedule(100)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(10_000)), 1.0, rtol=1e-6)
    assert beta_at(0.5, 7) == 0.5 and beta_at(schedule, 1 << 30) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="start"):
        tempering(100, start=0.0)
    grid = brownian_bridge_schedule(30, 1)
    check_config(RTBConfig(beta=schedule), grid)  # a schedule is a valid beta
    with pytest.raises(ValueError, match="config.beta"):
        check_config(RTBConfig(beta=lambda step: 0.0 * step), grid)
    with pytest.raises(ValueError, match="config.beta"):
        check_config(RTBConfig(beta=-1.0), grid)


def test_kl_rl_surrogate_gradient_is_the_score_function_estimator():
    ratio_params = jnp.array([0.3, -0.2, 0.5, 0.1])
    log_r = jnp.array([-1.0, 0.5, -2.0, 0.0])
    beta = 0.7

    def surrogate(params):
        return kl_rl_surrogate(params, log_r, beta=beta)[0]

    grad = jax.grad(surrogate)(ratio_params)
    ell = ratio_params - beta * log_r
    baseline = (jnp.sum(ell) - ell) / 3.0  # leave-one-out
    np.testing.assert_allclose(grad, (ell - baseline) / 4.0, rtol=1e-6)
    _, out = kl_rl_surrogate(ratio_params, log_r, beta=beta)
    np.testing.assert_allclose(out, ell, rtol=1e-6)
    # With a learned log Z per trajectory: the advantage l + log Z, and log Z's least squares.
    log_z = jnp.array([1.0, 1.0, 2.0, 2.0])
    g_ratio, g_z = jax.grad(lambda r, z: kl_rl_surrogate(r, log_r, beta=beta, log_z=z)[0],
                            argnums=(0, 1))(ratio_params, log_z)
    np.testing.assert_allclose(g_ratio, (ell + log_z) / 4.0, rtol=1e-6)
    np.testing.assert_allclose(g_z, (ell + log_z) / 4.0, rtol=1e-6)


def test_learned_noise_samples_and_scores_its_own_kernel():
    schedule = brownian_bridge_schedule(NUM_STEPS, 2, sigma=1.0)
    net = DriftNetwork(2, width=8, final_init_scale=1.0, key=jax.random.key(0))
    log_noise = jnp.log(jnp.linspace(0.5, 1.5, NUM_STEPS * 2)).reshape(NUM_STEPS, 2)
    posterior = RTBPosterior(lambda x, t: -x, net, jnp.asarray(0.0), log_noise=log_noise)
    traj = sample_posterior(jax.random.key(1), posterior, schedule, 4000)
    # Step 0 starts at the point mass 0, where the drifts vanish: x_1 has SD sigma_0 * factor.
    sd = jnp.std(traj.states[:, 1], axis=0)
    np.testing.assert_allclose(sd, schedule.noise_std[0] * jnp.exp(log_noise[0]), rtol=0.05)
    # log_ratio scores the learned kernel against the prior's.
    states = traj.states[:8]
    got = log_ratio(posterior, schedule, states)
    x, x_next = states[:, :-1], states[:, 1:]
    times = schedule.times[:-1]
    drift = jax.vmap(jax.vmap(posterior))(x, jnp.broadcast_to(times, x.shape[:2]))
    prior = -x
    base = schedule.mean_scale[:, None] * x
    std = schedule.noise_std[:, None]
    want = (normal_log_prob(x_next, base + schedule.drift_step[:, None] * drift,
                            std * jnp.exp(log_noise))
            - normal_log_prob(x_next, base + schedule.drift_step[:, None] * prior, std)).sum(-1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(traj.log_pf[:8].sum(-1),
                               normal_log_prob(x_next, base + schedule.drift_step[:, None] * drift,
                                               std * jnp.exp(log_noise)).sum(-1), rtol=1e-5)
    # Trained, and a posterior without it samples exactly as sample_trajectories does.
    assert trainable_filter(posterior).log_noise is True
    plain = RTBPosterior(lambda x, t: -x, net, jnp.asarray(0.0))
    a = sample_posterior(jax.random.key(2), plain, schedule, 3).states
    b = sample_trajectories(jax.random.key(2), plain, schedule, 3).states
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="log_noise"):
        sample_posterior(jax.random.key(2), posterior, brownian_bridge_schedule(5, 2), 3)


@pytest.mark.slow  # compiles for 3-5 s: the default tier stays under 3 minutes
def test_full_learned_noise_samples_and_scores_correlated_transitions():
    schedule = brownian_bridge_schedule(NUM_STEPS, 2, sigma=1.0)
    net = DriftNetwork(2, width=8, final_init_scale=1.0, key=jax.random.key(0))
    log_noise = jnp.full((NUM_STEPS, 2), jnp.log(0.8))
    tril = jnp.zeros((NUM_STEPS, 2, 2)).at[:, 1, 0].set(0.6).at[:, 0, 1].set(5.0)  # upper: unused
    posterior = RTBPosterior(lambda x, t: -x, net, jnp.asarray(0.0), log_noise=log_noise,
                             noise_tril=tril)
    matrix = jnp.array([[0.8, 0.0], [0.6, 0.8]])
    np.testing.assert_allclose(posterior.noise_matrix(3), matrix, rtol=1e-6)
    traj = sample_posterior(jax.random.key(1), posterior, schedule, 4000)
    # From the point mass at 0 (drifts vanish): x_1 ~ Normal(0, sigma_0^2 L L^T).
    cov = jnp.cov(traj.states[:, 1].T)
    np.testing.assert_allclose(cov, schedule.noise_std[0] ** 2 * matrix @ matrix.T, atol=0.004)
    states = traj.states[:4]
    got = log_ratio(posterior, schedule, states)
    x, x_next = states[:, :-1], states[:, 1:]
    drift = jax.vmap(jax.vmap(posterior))(x, jnp.broadcast_to(schedule.times[:-1], x.shape[:2]))
    base = schedule.mean_scale[:, None] * x
    std = schedule.noise_std[:, None, None]
    post = jax.scipy.stats.multivariate_normal.logpdf(
        x_next, base + schedule.drift_step[:, None] * drift, std**2 * (matrix @ matrix.T))
    prior = normal_log_prob(x_next, base - schedule.drift_step[:, None] * x, std[..., 0])
    np.testing.assert_allclose(got, (post - prior).sum(-1), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(traj.log_pf[:4].sum(-1), post.sum(-1), rtol=1e-4, atol=1e-3)


def test_correction_clip_bounds_the_learned_drift_far_out():
    net = DriftNetwork(2, width=8, final_init_scale=1.0, key=jax.random.key(0))
    free = RTBPosterior(lambda x, t: -x, net, jnp.asarray(0.0))
    bounded = RTBPosterior(lambda x, t: -x, net, jnp.asarray(0.0), correction_clip=2.0)
    far = jnp.array([1e3, -1e3])
    # An MLP grows linearly far out; squashed, it stays below the clip and the prior (-x) wins.
    assert float(jnp.max(jnp.abs(free.learned_drift(far, 0.5)))) > 2.0
    assert float(jnp.max(jnp.abs(bounded.learned_drift(far, 0.5)))) <= 2.0
    near = jnp.array([0.01, 0.02])
    np.testing.assert_allclose(bounded.learned_drift(near, 0.5), 2.0 * jnp.tanh(
        free.learned_drift(near, 0.5) / 2.0), rtol=1e-6)


def _bimodal():
    schedule = brownian_bridge_schedule(20, 1, sigma=2.0)
    prior = gaussian_mixture(jnp.array([0.5, 0.5]), jnp.array([[-2.0], [2.0]]),
                             jnp.full((2, 1, 1), 0.25))

    def log_r(x):
        return jnp.sum(-0.5 * ((1.0 - x) / 1.5) ** 2 - math.log(1.5) - 0.5 * math.log(2 * math.pi),
                       axis=-1)

    return schedule, prior, gmm_exact_drift(prior, schedule), log_r


@pytest.mark.slow  # two trainings of 300 steps (about 40 s on 2 CPUs)
def test_kl_rl_and_tempered_learned_noise_rtb_reweight_a_bimodal_prior():
    schedule, prior, prior_drift, log_r = _bimodal()
    x = sample_trajectories(jax.random.key(99), prior_drift, schedule, 40_000).states[:, -1]
    w = jax.nn.softmax(log_r(x))
    right_ref = float(jnp.sum(w * (x[:, 0] > 0)))
    log_z_ref = float(jax.nn.logsumexp(log_r(x)) - math.log(x.shape[0]))
    runs = {
        "kl_rl": dict(kernel=build_kl_rl_kernel, network=NetworkConfig(width=32),
                      config=RTBConfig(batch_size=128, learning_rate=1e-2,
                                       log_z_learning_rate=3e-2, decay_steps=300)),
        "rtb": dict(network=NetworkConfig(width=32, noise="learned"),
                    config=RTBConfig(batch_size=64, replay_size=32, backtrack_size=32,
                                     backtrack_steps=5, explore_steps=100, learning_rate=1e-2,
                                     log_z_learning_rate=3e-2, decay_steps=300,
                                     beta=tempering(100, start=0.1))),
    }
    for name, kwargs in runs.items():
        algorithm = build_rtb(jax.random.key(0), prior_drift, schedule, log_r,
                              source=prioritized_replay(log_prior_fn=prior.log_prob), **kwargs)
        result = fit_rtb(jax.random.key(1), algorithm, num_steps=300, progress=False)
        assert result.reason == "done", name
        log_z_is, log_w = importance_log_z(jax.random.key(6), result.posterior, schedule, log_r,
                                           4000)
        xs = sample_posterior(jax.random.key(6), result.posterior, schedule, 4000).states[:, -1]
        right = float(jnp.mean(xs[:, 0] > 0))
        # The target's right-mode weight is about 0.81 (the prior's 0.5); sampling SD 0.006.
        assert right == pytest.approx(right_ref, abs=0.05), name
        assert float(log_z_is) == pytest.approx(log_z_ref, abs=0.05), name
        assert float(jnp.std(log_w)) < 0.5, name
        assert abs(float(result.infos.beta[-1]) - 1.0) < 1e-6, name  # tempered up to 1
