"""Tests of the discrete-time diffusion sampler and prior diffusions (amortized_ppl.diffusion).

Tiers: API/shape/determinism tests; exact-value tests (the sampler's ``log_pf`` against
``trajectory_log_prob``, on- and off-policy); statistical tests against closed forms with fixed
keys: the exact drift of the 25-mode grid prior, the linear-Gaussian chain's terminal law and
importance-sampled marginal likelihood, and a prior fit on a 1-D mixture (slow tier; the default
tier runs a few steps of it).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from amortized_ppl.diffusion import (
    DriftNetwork,
    brownian_bridge_schedule,
    fit_prior_diffusion,
    gmm_exact_drift,
    sample_trajectories,
    vp_schedule,
)
from amortized_ppl.diffusion.prior import build_prior_kernel, denoising_loss
from amortized_ppl.diffusion.sampler import (
    backtrack,
    backward_log_prob,
    initial_log_prob,
    noising_trajectories,
    trajectory_log_prob,
)
from amortized_ppl.models.inverse_problems import gaussian_mixture, grid_prior_2d

SCHEDULES = {
    "bridge": lambda n, d: brownian_bridge_schedule(n, d),
    "vp": lambda n, d: vp_schedule(n, d),
    "vp_cosine": lambda n, d: vp_schedule(n, d, kind="cosine"),
}


def _linear_drift(x, t):
    return -0.5 * x + t


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_marginals_and_ends(name):
    schedule = SCHEDULES[name](40, 3)
    assert schedule.num_steps == 40 and schedule.dim == 3
    assert schedule.times.shape == (41,) and schedule.mean_scale.shape == (40,)
    assert float(schedule.marginal_scale[-1]) == 1.0 and float(schedule.marginal_std[-1]) == 0.0
    assert bool(jnp.all(schedule.noise_std > 0))
    # The noising chain's start matches the generative start distribution (nearly, for VP).
    assert float(schedule.marginal_std[0]) == pytest.approx(float(schedule.init_std), abs=1e-3)
    assert float(schedule.marginal_scale[0]) == pytest.approx(0.0, abs=0.01)
    # Last step: E[x_N | x_{N-1}, x_N] = x_N.
    assert float(schedule.bridge_x_coef[-1]) == pytest.approx(0.0, abs=1e-6)
    assert float(schedule.bridge_data_coef[-1]) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_bridge_schedule_closed_form():
    schedule = brownian_bridge_schedule(10, 1, sigma=2.0)
    t = np.arange(11) / 10
    np.testing.assert_allclose(schedule.marginal_scale, t, atol=1e-6)
    np.testing.assert_allclose(schedule.marginal_std, 2.0 * np.sqrt(t * (1 - t)), atol=1e-6)
    np.testing.assert_allclose(schedule.noise_std, 2.0 * np.sqrt(0.1), rtol=1e-6)
    assert float(schedule.init_std) == 0.0 and float(schedule.back_std[0]) == 0.0


# ---------------------------------------------------------------------------------------------
# Sampling and log-probabilities
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
@pytest.mark.parametrize("name", ["bridge", "vp"])
def test_sample_shapes_determinism_and_log_pf(name, key):
    schedule = SCHEDULES[name](12, 2)
    traj = sample_trajectories(key, _linear_drift, schedule, 7)
    assert traj.states.shape == (7, 13, 2) and traj.log_pf.shape == (7, 12)
    again = sample_trajectories(key, _linear_drift, schedule, 7)
    np.testing.assert_array_equal(traj.states, again.states)
    other = sample_trajectories(jax.random.key(1), _linear_drift, schedule, 7)
    assert not np.allclose(traj.states, other.states)
    if name == "bridge":
        np.testing.assert_array_equal(traj.states[:, 0], 0.0)
    recomputed = trajectory_log_prob(_linear_drift, schedule, traj.states)
    np.testing.assert_allclose(recomputed, traj.log_pf, rtol=1e-5, atol=1e-5)
    # Vmappable and batch-shape agnostic.
    by_vmap = jax.vmap(lambda s: trajectory_log_prob(_linear_drift, schedule, s))(traj.states)
    np.testing.assert_allclose(by_vmap, recomputed, rtol=1e-6, atol=1e-6)
    stacked = jnp.stack([traj.states, traj.states])
    assert trajectory_log_prob(_linear_drift, schedule, stacked).shape == (2, 7, 12)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_off_policy_noise_scale(key):
    schedule = brownian_bridge_schedule(20, 2)
    zero = lambda x, t: jnp.zeros_like(x)
    nominal = sample_trajectories(key, zero, schedule, 2000)
    wide = sample_trajectories(key, zero, schedule, 2000, noise_scale=2.0)
    # With zero drift x_N ~ Normal(0, noise_scale^2 sigma^2 I), sigma^2 = 5.
    ratio = float(jnp.std(wide.states[:, -1]) / jnp.std(nominal.states[:, -1]))
    assert ratio == pytest.approx(2.0, rel=1e-5)  # same key: the same eps, scaled
    assert float(jnp.var(nominal.states[:, -1])) == pytest.approx(5.0, rel=0.06)
    # log_pf is the nominal kernel's, evaluated on the wider states.
    np.testing.assert_allclose(
        trajectory_log_prob(zero, schedule, wide.states), wide.log_pf, rtol=1e-5, atol=1e-5
    )
    assert float(wide.log_pf.mean()) < float(nominal.log_pf.mean()) - 1.0


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_noising_backtrack_and_partial_log_probs(key):
    schedule = brownian_bridge_schedule(10, 2)
    x_final = jnp.arange(8.0).reshape(4, 2)
    states = noising_trajectories(key, schedule, x_final)
    assert states.shape == (4, 11, 2)
    np.testing.assert_array_equal(states[:, -1], x_final)
    np.testing.assert_array_equal(states[:, 0], 0.0)  # the bridge is pinned at the origin
    log_pb = backward_log_prob(schedule, states)
    assert log_pb.shape == (4, 10) and bool(jnp.all(jnp.isfinite(log_pb)))
    assert bool(jnp.all(log_pb[:, 0] == 0.0))  # the point-mass step
    part = noising_trajectories(key, schedule, x_final, num_back=3)
    assert part.shape == (4, 4, 2)
    # Partial log-probabilities agree with the matching slice of the full ones.
    np.testing.assert_allclose(
        backward_log_prob(schedule, states[:, 7:], start_step=7), log_pb[:, 7:], rtol=1e-6
    )
    full = trajectory_log_prob(_linear_drift, schedule, states)
    np.testing.assert_allclose(
        trajectory_log_prob(_linear_drift, schedule, states[:, 7:], start_step=7),
        full[:, 7:], rtol=1e-6,
    )
    traj = backtrack(key, _linear_drift, schedule, x_final, 3)
    assert traj.states.shape == (4, 4, 2) and traj.log_pf.shape == (4, 3)
    np.testing.assert_allclose(
        trajectory_log_prob(_linear_drift, schedule, traj.states, start_step=7), traj.log_pf,
        rtol=1e-5, atol=1e-5,
    )


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_conditional_drift_network(key):
    schedule = vp_schedule(8, 3)
    net = DriftNetwork(3, width=16, cond_dim=2, key=key)
    cond = jnp.ones((5, 2))
    traj = sample_trajectories(key, net, schedule, 5, cond=cond)
    assert traj.states.shape == (5, 9, 3)
    np.testing.assert_allclose(
        trajectory_log_prob(net, schedule, traj.states, cond=cond), traj.log_pf,
        rtol=1e-4, atol=2e-4,  # float32: VP's last steps divide rounding by sigma ~ 0.01
    )
    # Small last layer: the drift starts near zero.
    assert float(jnp.max(jnp.abs(net(jnp.ones(3), 0.3, jnp.ones(2))))) < 0.1
    with pytest.raises(ValueError, match="cond"):
        net(jnp.ones(3), 0.3)


# ---------------------------------------------------------------------------------------------
# Exact drifts against closed forms
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_exact_drift_reproduces_grid_prior(key):
    """100 bridge steps (the RTB toy's): mode weights within sampling noise, 0.3 I within 10%."""
    gmm = grid_prior_2d()
    schedule = brownian_bridge_schedule(100, 2)
    num = 4000
    traj = sample_trajectories(key, gmm_exact_drift(gmm, schedule), schedule, num)
    x = np.asarray(traj.states[:, -1])
    labels = np.asarray(gmm.assign(x))
    weights = np.bincount(labels, minlength=25) / num
    se = math.sqrt(0.04 * 0.96 / num)  # 0.0031
    assert weights.min() > 0 and np.all(np.abs(weights - 0.04) < 4 * se), weights
    # Multinomial noise alone gives TV ~ 0.03 at this size; the 100-step bias is ~0.015.
    assert 0.5 * np.abs(weights - 0.04).sum() < 0.06
    resid = x - np.asarray(gmm.means)[labels]
    cov = np.cov(resid.T)
    # Euler discretization inflates it by ~0.03 at 100 steps (~1/N: 0.07 at 50, 0.16 at 25).
    np.testing.assert_allclose(cov, 0.3 * np.eye(2), atol=0.07)


def _gaussian_chain_law(schedule, mu, var):
    """Exact law of x_N under the chain with the exact drift of data Normal(mu, var), 1-D.

    The drift is linear: a x + h f(x) = A x + B E[x_N | x] with
    E[x_N | x] = mu + g (x - m mu), g = m var / (m^2 var + v).
    """
    arrays = {k: np.asarray(v, np.float64) for k, v in schedule._asdict().items() if k != "dim"}
    mean, variance = 0.0, float(arrays["init_std"]) ** 2
    for n in range(schedule.num_steps):
        m, v = arrays["marginal_scale"][n], max(arrays["marginal_std"][n] ** 2, 1e-12)
        g = m * var / (m**2 * var + v)
        A, B = arrays["bridge_x_coef"][n], arrays["bridge_data_coef"][n]
        alpha, beta = A + B * g, B * mu * (1 - g * m)
        mean = alpha * mean + beta
        variance = alpha**2 * variance + arrays["noise_std"][n] ** 2
    return mean, variance


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
@pytest.mark.parametrize("name", ["bridge", "vp"])
def test_gaussian_prior_chain_law_and_importance_sampling(name, key):
    mu, var = 0.7, 0.5
    build = (lambda n: brownian_bridge_schedule(n, 1, sigma=1.0)) if name == "bridge" else (
        lambda n: vp_schedule(n, 1))
    schedule = build(40)
    gmm = gaussian_mixture(jnp.ones(1), jnp.array([[mu]]), jnp.array([[[var]]]))
    drift_fn = gmm_exact_drift(gmm, schedule)
    chain_mean, chain_var = _gaussian_chain_law(schedule, mu, var)
    # The exact drift makes the chain's terminal law close to the data law (discretization only).
    # Its variance is inflated by O(1/N) (1.9% for the bridge, 3.9% for VP at 40 steps).
    assert chain_mean == pytest.approx(mu, abs=1e-3)
    assert var < chain_var < 1.05 * var
    assert var < _gaussian_chain_law(build(80), mu, var)[1] < 0.5 * (var + chain_var)
    # The sampler follows that law (4,000 draws: SE of the mean ~0.011, of the variance ~2%).
    key_sample, key_is = jax.random.split(key)
    x = np.asarray(sample_trajectories(key_sample, drift_fn, schedule, 4000).states[:, -1, 0])
    assert x.mean() == pytest.approx(chain_mean, abs=0.045)
    assert x.var() == pytest.approx(chain_var, rel=0.09)
    # Importance sampling with noising trajectories as the proposal estimates the chain's
    # marginal density: p(x_N) = E_q[p(x_0) prod p_F / prod q_B].
    points = jnp.array([[mu - 1.0], [mu], [mu + 1.5]])
    num = 2000
    x_final = jnp.repeat(points, num, axis=0)
    states = noising_trajectories(key_is, schedule, x_final)
    log_w = (
        initial_log_prob(schedule, states[:, 0])
        + trajectory_log_prob(drift_fn, schedule, states).sum(-1)
        - backward_log_prob(schedule, states).sum(-1)
    ).reshape(3, num)
    estimate = np.asarray(jax.nn.logsumexp(log_w, axis=1) - math.log(num))
    exact = -0.5 * (np.asarray(points[:, 0]) - chain_mean) ** 2 / chain_var - 0.5 * math.log(
        2 * math.pi * chain_var
    )
    np.testing.assert_allclose(estimate, exact, atol=0.02)
    assert float(jnp.std(log_w, axis=1).max()) < 0.3  # the exact drift nearly reverses q


# ---------------------------------------------------------------------------------------------
# Training a prior diffusion
# ---------------------------------------------------------------------------------------------


def _prior_fit_problem():
    gmm = gaussian_mixture(
        jnp.array([0.25, 0.75]), jnp.array([[-2.0], [2.0]]), jnp.full((2, 1, 1), 0.2)
    )
    return gmm, brownian_bridge_schedule(20, 1, sigma=2.0)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_fit_prior_diffusion_runs_and_its_kernel_is_deterministic(key):
    gmm, schedule = _prior_fit_problem()
    net = DriftNetwork(1, width=8, depth=2, input_scale=2.0, key=jax.random.key(1))
    trained, history = fit_prior_diffusion(key, net, schedule, gmm.sample, num_steps=10,
                                           batch_size=32, chunk_size=10, progress=False)
    assert history.shape == (10,) and np.all(np.isfinite(history))
    assert not eqx.tree_equal(eqx.filter(trained, eqx.is_array), eqx.filter(net, eqx.is_array))
    # The step kernel is deterministic given the key (each fit compiles its own step, so this
    # checks the kernel once rather than fitting twice).
    params, static = eqx.partition(net, eqx.is_inexact_array)
    init, step = build_prior_kernel(static, schedule, gmm.sample, optax.adam(1e-2), 64)
    step = jax.jit(step)
    state = init(params)
    (state_a, loss_a), (state_b, loss_b) = step(key, state), step(key, state)
    assert float(loss_a) == float(loss_b)
    np.testing.assert_array_equal(state_a.params.layers[0].weight, state_b.params.layers[0].weight)


@pytest.mark.slow
def test_fit_prior_diffusion_on_1d_mixture(key):
    gmm, schedule = _prior_fit_problem()
    net = DriftNetwork(1, width=32, depth=2, input_scale=2.0, key=jax.random.key(1))
    kwargs = dict(num_steps=400, batch_size=256, learning_rate=1e-2, progress=False)
    trained, history = fit_prior_diffusion(key, net, schedule, gmm.sample, **kwargs)
    assert history.shape == (400,) and np.all(np.isfinite(history))
    # The loss keeps an irreducible part (about 1.0 here, the exact drift's), hence the offset.
    assert history[-50:].mean() < history[:50].mean() - 0.3
    # Loss on one common batch: the exact drift is its minimizer; training gets most of the way.
    key_data, key_loss, key_sample = jax.random.split(jax.random.key(2), 3)
    x_data = gmm.sample(key_data, 8192)
    losses = {
        name: float(denoising_loss(key_loss, fn, schedule, x_data))
        for name, fn in (("init", net), ("trained", trained),
                         ("exact", gmm_exact_drift(gmm, schedule)))
    }
    assert losses["exact"] < losses["trained"] < losses["init"], losses
    assert losses["trained"] - losses["exact"] < 0.25 * (losses["init"] - losses["exact"]), losses
    x = sample_trajectories(key_sample, trained, schedule, 2000).states[:, -1, 0]
    assert float(jnp.mean(x < 0)) == pytest.approx(0.25, abs=0.08)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_bad_input(key):
    schedule = brownian_bridge_schedule(5, 2)
    with pytest.raises(ValueError, match="num_steps"):
        brownian_bridge_schedule(0, 2)
    with pytest.raises(ValueError, match="num_steps"):
        vp_schedule(-3, 2)
    with pytest.raises(ValueError, match="kind"):
        vp_schedule(5, 2, kind="quadratic")
    with pytest.raises(ValueError, match="x_init"):
        sample_trajectories(key, _linear_drift, schedule, 4, x_init=jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="x_init.*finite"):
        sample_trajectories(key, _linear_drift, schedule, 2, x_init=jnp.array([[0.0, jnp.nan]] * 2))
    with pytest.raises(ValueError, match="num"):
        sample_trajectories(key, _linear_drift, schedule, 0)
    with pytest.raises(ValueError, match="noise_scale"):
        sample_trajectories(key, _linear_drift, schedule, 2, noise_scale=-1.0)
    with pytest.raises(ValueError, match="x_init: required"):
        sample_trajectories(key, _linear_drift, schedule, 2, start_step=2)
    with pytest.raises(ValueError, match="states"):
        trajectory_log_prob(_linear_drift, schedule, jnp.zeros((3, 6, 3)))
    with pytest.raises(ValueError, match="run past"):
        backward_log_prob(schedule, jnp.zeros((3, 6, 2)), start_step=1)
    with pytest.raises(ValueError, match="x_final"):
        noising_trajectories(key, schedule, jnp.zeros((3, 1)))
    with pytest.raises(ValueError, match="num_back"):
        noising_trajectories(key, schedule, jnp.zeros((3, 2)), num_back=6)
    with pytest.raises(ValueError, match="gmm"):
        gmm_exact_drift(grid_prior_2d(), brownian_bridge_schedule(5, 3))
    with pytest.raises(TypeError, match="key"):
        sample_trajectories(0, _linear_drift, schedule, 2)
    net = DriftNetwork(2, key=key)
    with pytest.raises(ValueError, match="x: expected shape"):
        net(jnp.zeros(3), 0.5)
    with pytest.raises(ValueError, match="sample_prior_fn"):
        fit_prior_diffusion(key, net, schedule, lambda k, n: jnp.zeros((n, 3)), num_steps=2,
                            progress=False)
