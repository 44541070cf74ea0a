"""The iterative update's pure pieces (iterative/kernel.py, iterative/passes.py)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.iterative import (
    base_schedule,
    batch_at,
    cubature_points,
    curvature,
    natural_gradient_step,
    pass_order,
    steps_per_pass,
)
from tests.iterative.linear import data, linear_guide


def test_cubature_points_have_identity_moments(key):
    points = cubature_points(key, 5)
    assert points.shape == (10, 5)
    np.testing.assert_allclose(points.mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(points.T @ points / 10, np.eye(5), atol=1e-5)


def test_curvature_is_exact_for_a_quadratic(key):
    a = jax.random.normal(key, (4, 4))
    hessian = -(a @ a.T + 4 * jnp.eye(4))
    centre = jnp.arange(4.0)
    log_density = lambda u: 0.5 * (u - centre) @ hessian @ (u - centre)  # noqa: E731
    loc = jnp.ones(4)
    tril = jnp.tril(0.1 * jax.random.normal(jax.random.key(1), (4, 4))) + 0.5 * jnp.eye(4)
    _, g, m = curvature(log_density, loc, tril, cubature_points(jax.random.key(2), 4))
    np.testing.assert_allclose(g, hessian @ (loc - centre), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(m, -tril.T @ hessian @ tril, rtol=1e-4, atol=1e-4)


def test_full_step_is_newton_for_a_quadratic(key):
    # rho = 1 jumps to the exact Gaussian N(centre, -H^{-1}).
    a = jax.random.normal(key, (3, 3))
    hessian = -(a @ a.T + 3 * jnp.eye(3))
    centre = jnp.array([1.0, -2.0, 0.5])
    log_density = lambda u: 0.5 * (u - centre) @ hessian @ (u - centre)  # noqa: E731
    loc, tril = jnp.zeros(3), jnp.eye(3)
    _, g, m = curvature(log_density, loc, tril, cubature_points(key, 3))
    new_loc, new_tril = natural_gradient_step(loc, tril, g, m, 1.0, 1.0)
    np.testing.assert_allclose(new_loc, centre, atol=1e-4)
    np.testing.assert_allclose(new_tril @ new_tril.T, jnp.linalg.inv(-hessian), atol=1e-4)
    assert np.allclose(new_tril, np.tril(new_tril))
    # The diagonal version keeps a diagonal factor.
    _, diag_tril = natural_gradient_step(loc, tril, g, m, 1.0, 1.0, full_rank=False)
    assert np.allclose(diag_tril, np.diag(np.diag(diag_tril)))


def test_step_falls_back_when_curvature_is_not_positive():
    loc, tril = jnp.zeros(2), jnp.eye(2)
    m = jnp.array([[-1.0, 0.0], [0.0, 2.0]])  # a non-concave direction
    new_loc, new_tril = natural_gradient_step(loc, tril, jnp.ones(2), m, 1.0, 1.0)
    assert np.all(np.isfinite(new_tril)) and np.all(np.isfinite(new_loc))


def test_base_schedule_averages_each_pass():
    per_pass = jnp.asarray(4)
    rho = [float(base_schedule(jnp.asarray(k), per_pass)) for k in range(8)]
    np.testing.assert_allclose(rho, [1, 1 / 2, 1 / 3, 1 / 4, 1 / 3, 1 / 4, 1 / 5, 1 / 6])
    # One mini-batch per pass: every step is a full (Newton) step.
    assert float(base_schedule(jnp.asarray(5), jnp.asarray(1))) == 1.0


def test_pass_order_is_a_padded_permutation(key):
    assert steps_per_pass(10, 4) == 3
    order = pass_order(key, 10, 4)
    assert order.shape == (12,)
    assert sorted(np.asarray(order[order >= 0]).tolist()) == list(range(10))
    positions, valid = batch_at(order, 2, 4)
    assert valid.tolist() == [True, True, False, False]
    assert np.all(np.asarray(positions) >= 0)


@pytest.mark.slow  # the default tier's budget (3 minutes on 2 cores)
def test_the_network_cannot_touch_the_step_sizes_or_the_running_gaussian(key):
    guide, params = linear_guide()
    base = guide.engine(params)
    # A network with a large readout shift.
    engine = eqx.tree_at(lambda e: e.network.readout.layers[-1].bias, base,
                         jnp.full_like(base.network.readout.layers[-1].bias, 3.0))
    problem = guide.problem
    x, y = data(40)
    batch = {"x": x[:20], "y": y[:20], "sigma": 0.5}
    mask = jnp.ones(20, bool)
    step = eqx.filter_jit(lambda e, k, s: e.step(k, problem, s, batch, mask, 2))
    state = base_state = engine.init_state(problem)
    for k in range(3):  # pass 1 (j = 0, 1), then pass 2 (j = 0)
        state, info = step(engine, key, state)
        base_state, _ = step(base, key, base_state)
        assert float(info.rho_loc) == pytest.approx(
            float(base_schedule(jnp.asarray(k), jnp.asarray(2))), rel=1e-6)
        np.testing.assert_allclose(state.run_loc, base_state.run_loc, rtol=1e-6)
        assert float(jnp.max(jnp.abs(state.loc - state.run_loc))) > 0


@pytest.mark.slow  # compiles for 3-5 s: the default tier stays under 3 minutes
def test_a_step_that_would_overflow_is_skipped(key):
    """The driver's non-finite policy inside the scan: the state is kept, the step counted."""
    guide, params = linear_guide()
    engine, problem = guide.engine(params), guide.problem
    x, y = data(20)
    state = engine.init_state(problem)
    bad = {"x": x, "y": y.at[0].set(jnp.inf), "sigma": 0.5}
    step = eqx.filter_jit(lambda e, s, batch: e.step(key, problem, s, batch, jnp.ones(20, bool), 1))
    new, info = step(engine, state, bad)
    assert bool(info.skipped) and int(new.step) == 1
    np.testing.assert_array_equal(new.loc, state.loc)
    good, info = step(engine, state, {**bad, "y": y})
    assert not bool(info.skipped) and bool(jnp.all(jnp.isfinite(good.loc)))


def test_the_laplace_start_moves_a_wide_prior_to_the_first_batch(key):
    """From a wide prior the first pass would linearize in the tails; the start moves the state
    to the damped Newton fit of a mini-batch, and keeps it where that fit is not finite."""
    from amortized_ppl.iterative.kernel import laplace_start

    guide, params = linear_guide()
    engine, problem = guide.engine(params), guide.problem
    state = engine.init_state(problem)
    x, y = data(40)
    batch = {"x": x, "y": y, "sigma": 0.5}

    def log_density(u):
        return problem.log_density(u, batch, jnp.ones(40, bool), 5.0)

    started = jax.jit(lambda s: laplace_start(s, log_density))(state)
    # Newton is exact for this Gaussian: the mode of the scaled batch's posterior.
    hessian = jax.jit(jax.hessian(log_density))(started.loc)  # jitted: eager takes seconds
    np.testing.assert_allclose(jax.jit(jax.grad(log_density))(started.loc), 0.0, atol=1e-2)
    np.testing.assert_allclose(started.scale_tril @ started.scale_tril.T,
                               jnp.linalg.inv(-hessian), rtol=1e-3, atol=1e-6)
    np.testing.assert_array_equal(started.run_loc, started.loc)
    kept = jax.jit(lambda s: laplace_start(s, lambda u: jnp.nan * jnp.sum(u)))(state)
    np.testing.assert_array_equal(kept.loc, state.loc)
