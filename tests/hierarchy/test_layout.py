"""The flat (globals, locals) layout, the log joint there and its per-group Hessian blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer.util import log_density

from amortized_ppl.hierarchy import (
    conditional_locals,
    constrain,
    flatten,
    group_laplace,
    inspect_hierarchical_problem,
    log_joint,
)
from amortized_ppl.hierarchy.chunks import one_group
from amortized_ppl.hierarchy.layout import simulate
from amortized_ppl.models import hierarchical as h


def _slopes_problem():
    return inspect_hierarchical_problem(jax.random.key(0), h.varying_slopes, h.regression_design,
                                        num_groups=(3, 6), group_sizes=(1, 7), num_pilot=16)


@pytest.mark.slow  # compiles for 3-5 s: the default tier stays under 3 minutes
def test_round_trip_and_log_joint_match_numpyro():
    problem = _slopes_problem()
    data, g, u = problem.simulate(jax.random.key(1))
    values, log_det = constrain(problem.structure, g, u)
    g_back, l_back = flatten(problem.structure, values)
    np.testing.assert_allclose(g_back, g, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(l_back, u, rtol=1e-5, atol=1e-5)
    expected = log_density(h.varying_slopes, (), data, values)[0] + log_det
    np.testing.assert_allclose(log_joint(h.varying_slopes, problem.structure, data, g, u),
                               expected, rtol=1e-5)
    # Padded observations do not count: moving them changes nothing.
    moved = dict(data, y=jnp.where(data["mask"], data["y"], 1e3))
    np.testing.assert_allclose(log_joint(h.varying_slopes, problem.structure, moved, g, u),
                               expected, rtol=1e-5)


@pytest.mark.slow  # the default tier's budget (3 minutes on 2 cores)
def test_group_laplace_reads_the_dense_hessians_blocks():
    """The locals of different groups are conditionally independent: the dense Hessian is
    block-diagonal, and each group's Laplace fit (on the model called with that group alone)
    reads its block."""
    problem = _slopes_problem()
    data, g, u = problem.simulate(jax.random.key(2))
    f = lambda x: log_joint(h.varying_slopes, problem.structure, data, g, x)  # noqa: E731
    dense = jax.jit(jax.hessian(f))(u)
    fits = jax.jit(jax.vmap(lambda j, start: group_laplace(
        problem, one_group(problem, data, j), g, start, 0)))(jnp.arange(u.shape[0]), u)
    np.testing.assert_allclose(fits.mode, u)  # no step taken: the fit is at the start
    for j in range(u.shape[0]):
        block = -np.asarray(fits.factor[j]) @ np.asarray(fits.factor[j]).T
        if bool(data["mask"][j].any()):
            np.testing.assert_allclose(block, dense[j, :, j, :], rtol=1e-4, atol=1e-4)
        for i in range(u.shape[0]):
            if i != j:
                assert np.all(dense[i, :, j, :] == 0.0)


@pytest.mark.slow  # 10 s of compilation; the default tier is at its budget
def test_one_newton_step_gives_the_exact_conditional_of_a_gaussian_model():
    problem = _slopes_problem()
    data, g, u = problem.simulate(jax.random.key(3))
    values, _ = constrain(problem.structure, g, u)
    mean, tril = conditional_locals(problem, data, g, jnp.zeros_like(u) + 5.0,
                                    jnp.broadcast_to(jnp.eye(2), u.shape + (2,)), 1)
    prior_precision = np.diag([1 / float(values["sigma_a"]) ** 2,
                               1 / float(values["sigma_b"]) ** 2])
    prior_mean = np.array([float(values["mu_a"]), float(values["mu_b"])])
    noise = float(values["sigma_y"]) ** 2
    mask, x, y = (np.asarray(data[k], np.float64) for k in ("mask", "x", "y"))
    for j in range(mask.shape[0]):
        if not mask[j].any():
            continue
        design = np.stack([np.ones(int(mask[j].sum())), x[j][mask[j] > 0]], axis=1)
        precision = prior_precision + design.T @ design / noise
        exact_mean = np.linalg.solve(precision, prior_precision @ prior_mean
                                     + design.T @ y[j][mask[j] > 0] / noise)
        np.testing.assert_allclose(mean[j], exact_mean, rtol=1e-3, atol=1e-3)
        cov = np.asarray(tril[j], np.float64) @ np.asarray(tril[j], np.float64).T
        np.testing.assert_allclose(cov, np.linalg.inv(precision), rtol=2e-3, atol=1e-5)


def test_simulate_respects_the_layout():
    problem = _slopes_problem()
    data, g, u = simulate(jax.random.key(4), h.varying_slopes, problem.structure,
                          {"x": jnp.ones((4, 3)), "mask": jnp.ones((4, 3), bool)})
    assert data["y"].shape == (4, 3) and g.shape == (5,) and u.shape == (4, 2)
