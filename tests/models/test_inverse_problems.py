"""Tests of amortized_ppl/models/inverse_problems.py: GMM priors, exact posteriors, NumPyro likelihoods.

The mixture itself (density, score, sampling) is tests/models/test_gaussian_mixture.py.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer.util import log_density

from amortized_ppl.models.inverse_problems import (
    DEFAULT_NOISE_SCALE,
    TOY_NOISE_SCALE,
    blur_matrix,
    blur_problem,
    grid_prior_2d,
    inpainting_problem,
    linear_gaussian_posterior,
    numpyro_likelihood,
    phase_retrieval_problem,
    random_gmm_prior,
    toy_2d_balanced_problem,
    toy_2d_problem,
    toy_2d_unbalanced_problem,
)

# A 2-D integration grid for the toy: step 0.1 over [-15, 15]^2 (mode SDs are >= 0.53).
_STEP = 0.1
_AXIS = np.arange(-15.0, 15.0 + _STEP / 2, _STEP)


def _grid_points():
    first, second = np.meshgrid(_AXIS, _AXIS, indexing="ij")
    return jnp.asarray(np.stack([first.ravel(), second.ravel()], axis=-1), jnp.float32)


# ---------------------------------------------------------------------------------------------
# Mixture priors
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_grid_prior_is_normalized_with_25_modes():
    prior = grid_prior_2d()
    assert prior.means.shape == (25, 2) and prior.covs.shape == (25, 2, 2)
    np.testing.assert_allclose(prior.covs, np.broadcast_to(0.3 * np.eye(2), (25, 2, 2)))
    assert {tuple(m) for m in np.asarray(prior.means).tolist()} == {
        (a, b) for a in (-10, -5, 0, 5, 10) for b in (-10, -5, 0, 5, 10)
    }
    mass = float(jnp.sum(jnp.exp(prior.log_prob(_grid_points()))) * _STEP**2)
    assert mass == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_random_prior_modes_are_well_separated(key):
    for d in (8, 16):
        prior = random_gmm_prior(key, d, 8)
        gaps = np.linalg.norm(prior.means[:, None] - prior.means[None], axis=-1)
        max_sd = math.sqrt(np.linalg.eigvalsh(np.asarray(prior.covs)).max())  # host LAPACK
        assert gaps[~np.eye(8, dtype=bool)].min() > 6 * max_sd
        assert float(jnp.sum(prior.weights)) == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# The 2-D toy
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_toy_has_nine_modes_with_documented_weights():
    problem = toy_2d_problem()
    post = problem.exact_posterior
    weights = np.asarray(post.weights)
    assert weights.sum() == pytest.approx(1.0, abs=1e-6)
    kept = weights > 1e-3
    assert kept.sum() == 9
    kept_means = {tuple(m) for m in np.asarray(problem.prior.means)[kept].tolist()}
    assert kept_means == {(a, b) for a in (-5, 0, 5) for b in (-5, 0, 5)}
    # Mode (5 i, 5 j) has weight p_i p_j with p_i = 8^{-i^2} / (1 + 2/8 + 2/8^4).
    steps = np.asarray(problem.prior.means) / 5.0
    per_axis = 8.0 ** -(steps**2) / (1 + 2 / 8 + 2 / 8**4)
    np.testing.assert_allclose(weights, per_axis.prod(axis=1), rtol=1e-5)
    assert weights.max() == pytest.approx(0.639500, abs=1e-6)
    assert weights[kept].sum() == pytest.approx(0.999219, abs=1e-6)
    v = 0.3 + TOY_NOISE_SCALE**2
    log_z = -math.log(25) - math.log(2 * math.pi * v) + 2 * math.log(1.25048828125)
    assert float(problem.log_evidence) == pytest.approx(log_z, abs=1e-5)
    assert log_z == pytest.approx(-6.40331, abs=1e-5)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_toy_posterior_matches_grid_integration():
    problem = toy_2d_problem()
    points = _grid_points()
    log_joint = problem.log_joint(points)
    joint = np.exp(np.asarray(log_joint, np.float64))
    grid_log_z = math.log(joint.sum() * _STEP**2)
    assert grid_log_z == pytest.approx(float(problem.log_evidence), abs=1e-4)
    # Pointwise: exact posterior density == prior x likelihood / Z.
    np.testing.assert_allclose(
        problem.exact_posterior.log_prob(points[::97]),
        log_joint[::97] - problem.log_evidence,
        atol=2e-3,
    )
    # Mode weights by integrating the joint over each grid cell's Voronoi region.
    cells = np.asarray(problem.prior.assign(points))
    grid_weights = np.bincount(cells, weights=joint, minlength=25) / joint.sum()
    np.testing.assert_allclose(grid_weights, problem.exact_posterior.weights, atol=2e-5)


@pytest.mark.slow
def test_toy_log_evidence_matches_monte_carlo(key):
    problem = toy_2d_problem()
    draws = problem.prior.sample(key, 200_000)
    log_z_mc = jax.nn.logsumexp(problem.log_likelihood(draws)) - math.log(draws.shape[0])
    # Likelihood ratios across draws are below e^25; relative MC SD ~ 1 / sqrt(n * ESS frac).
    assert float(log_z_mc) == pytest.approx(float(problem.log_evidence), abs=0.03)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
@pytest.mark.parametrize("build, column_weights", [
    (toy_2d_balanced_problem, {0: 0.2}),
    # exp((3^2 - 2^2) / (2 (0.3 + 1))) = 6.84 between the columns x_1 = 0 and x_1 = 5.
    (toy_2d_unbalanced_problem, {0: 0.2 / (1 + math.exp(-5 / 2.6)),
                                 5: 0.2 / (1 + math.exp(5 / 2.6))}),
])
def test_sliced_toys_have_their_documented_modes_and_match_grid_integration(build,
                                                                            column_weights):
    problem = build()
    weights = np.asarray(problem.exact_posterior.weights)
    first = np.asarray(problem.prior.means)[:, 0]
    for column, weight in column_weights.items():
        np.testing.assert_allclose(weights[first == column], weight, rtol=2e-4)
    others = ~np.isin(first, list(column_weights))
    assert weights[others].max() < 2e-5
    points = _grid_points()
    joint = np.exp(np.asarray(problem.log_joint(points), np.float64))
    assert math.log(joint.sum() * _STEP**2) == pytest.approx(float(problem.log_evidence),
                                                             abs=1e-4)
    cells = np.asarray(problem.prior.assign(points))
    np.testing.assert_allclose(np.bincount(cells, weights=joint, minlength=25) / joint.sum(),
                               weights, atol=2e-5)


# ---------------------------------------------------------------------------------------------
# Linear inverse problems in d = 8..16
# ---------------------------------------------------------------------------------------------


def _direct_bayes(prior, A, y, noise_scale):
    """Per-component Bayes in float64 numpy, in precision form (independent of the library)."""
    A, y = np.asarray(A, np.float64), np.asarray(y, np.float64)
    log_weights, means, covs = [], [], []
    for w, mu, cov in zip(
        np.asarray(prior.weights), np.asarray(prior.means), np.asarray(prior.covs)
    ):
        mu, cov = mu.astype(np.float64), cov.astype(np.float64)
        precision = np.linalg.inv(cov) + A.T @ A / noise_scale**2
        post_cov = np.linalg.inv(precision)
        means.append(post_cov @ (np.linalg.solve(cov, mu) + A.T @ y / noise_scale**2))
        covs.append(post_cov)
        marginal = A @ cov @ A.T + noise_scale**2 * np.eye(len(y))
        r = y - A @ mu
        _, logdet = np.linalg.slogdet(marginal)
        log_weights.append(
            math.log(w)
            - 0.5 * (r @ np.linalg.solve(marginal, r) + logdet + len(y) * math.log(2 * math.pi))
        )
    log_weights = np.array(log_weights)
    log_z = np.logaddexp.reduce(log_weights)
    return np.exp(log_weights - log_z), np.array(means), np.array(covs), log_z


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
@pytest.mark.parametrize("builder", [inpainting_problem, blur_problem])
def test_linear_posterior_matches_direct_bayes(builder, key):
    problem = builder(key, d=8)
    weights, means, covs, log_z = _direct_bayes(
        problem.prior, problem.matrix, problem.y, problem.noise_scale
    )
    post = problem.exact_posterior
    np.testing.assert_allclose(post.weights, weights, atol=1e-4)
    np.testing.assert_allclose(post.means, means, atol=2e-3)
    np.testing.assert_allclose(post.covs, covs, atol=2e-4)
    assert float(problem.log_evidence) == pytest.approx(log_z, abs=2e-3)
    # Pointwise identity p(x | y) = p(x) p(y | x) / p(y) near the posterior's modes.
    x = post.sample(jax.random.key(5), 32)
    log_post, log_joint = jax.jit(lambda x: (post.log_prob(x), problem.log_joint(x)))(x)
    np.testing.assert_allclose(log_post, log_joint - problem.log_evidence, atol=1e-2)


# d = 16 checks the same code at another size (slow tier: each size compiles the builders again).
_SIZES = [8, pytest.param(16, marks=pytest.mark.slow)]


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
@pytest.mark.parametrize("builder", [inpainting_problem, blur_problem])
@pytest.mark.parametrize("d", _SIZES)
def test_linear_problem_shapes(builder, d, key):
    problem = builder(key, d=d)
    m = problem.y.shape[0]
    assert problem.noise_scale == DEFAULT_NOISE_SCALE == 0.05
    assert problem.matrix.shape == (m, d) and m < d
    assert problem.prior.dim == d and problem.exact_posterior.means.shape == (8, d)
    assert problem.forward(jnp.zeros((3, 5, d))).shape == (3, 5, m)
    assert problem.log_likelihood(jnp.zeros((3, d))).shape == (3,)
    assert problem.y.dtype == jnp.float32 and np.isfinite(float(problem.log_evidence))
    # Groups of 2 components that A cannot tell apart: 2 posterior modes.
    assert int(jnp.sum(problem.exact_posterior.weights > 1e-3)) == 2
    if builder is inpainting_problem:
        assert m == d // 2
        np.testing.assert_allclose(problem.matrix.sum(axis=1), 1.0)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_blur_matrix_rows_are_normalized_kernels():
    circular = blur_matrix(8, 1.0, mode="circular")
    valid = blur_matrix(8, 1.0, mode="valid")
    assert circular.shape == (8, 8) and valid.shape == (4, 8)
    np.testing.assert_allclose(circular.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(circular.sum(axis=0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(valid, circular[2:6], rtol=1e-6)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_linear_gaussian_posterior_validates():
    prior = grid_prior_2d()
    with pytest.raises(ValueError, match=r"A must have shape \(m, 2\)"):
        linear_gaussian_posterior(prior, jnp.eye(3), jnp.zeros(3), 1.0)
    with pytest.raises(ValueError, match=r"y must have shape \(2,\)"):
        linear_gaussian_posterior(prior, jnp.eye(2), jnp.zeros(3), 1.0)
    with pytest.raises(ValueError, match="y: expected finite values"):
        linear_gaussian_posterior(prior, jnp.eye(2), jnp.array([0.0, jnp.inf]), 1.0)
    with pytest.raises(ValueError, match="noise_scale"):
        linear_gaussian_posterior(prior, jnp.eye(2), jnp.zeros(2), -1.0)
    with pytest.raises(ValueError, match="y: expected finite values"):
        inpainting_problem(jax.random.key(0), d=8, y=jnp.array([0.0, 1.0, jnp.nan, 0.0]))
    with pytest.raises(ValueError, match="observed_fraction"):
        inpainting_problem(jax.random.key(0), d=8, observed_fraction=1.5)


# ---------------------------------------------------------------------------------------------
# Phase retrieval
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
@pytest.mark.parametrize("d", _SIZES)
def test_phase_retrieval(d, key):
    problem = phase_retrieval_problem(key, d=d)
    assert problem.exact_posterior is None and problem.log_evidence is None
    assert problem.y.shape == (2 * d,) and problem.matrix.shape == (2 * d, d)
    x = problem.prior.sample(jax.random.key(4), 10)
    np.testing.assert_allclose(problem.forward(x), jnp.abs(x @ problem.matrix.T), rtol=1e-6)
    log_lik = problem.log_likelihood(x)
    assert log_lik.shape == (10,) and bool(jnp.all(jnp.isfinite(log_lik)))
    # The sign flip x -> -x leaves the likelihood unchanged.
    np.testing.assert_allclose(problem.log_likelihood(-x), log_lik, rtol=1e-6)
    assert float(problem.log_likelihood(problem.x_true)) > float(jnp.max(log_lik))


# ---------------------------------------------------------------------------------------------
# NumPyro likelihoods and models
# ---------------------------------------------------------------------------------------------


_PROBLEMS = {
    "toy": lambda: toy_2d_problem(),
    "inpainting": lambda: inpainting_problem(jax.random.key(1), d=8),
    "blur": lambda: blur_problem(jax.random.key(2), d=8),  # d = 16: the slow shape tests
    "phase": lambda: phase_retrieval_problem(jax.random.key(3), d=8),
}


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
@pytest.mark.parametrize("name", sorted(_PROBLEMS))
def test_numpyro_likelihood_matches_problem(name):
    problem = _PROBLEMS[name]()
    x = problem.prior.sample(jax.random.key(6), 6).reshape(2, 3, -1)
    from_model_fn = numpyro_likelihood(problem.likelihood_model, problem.y)
    from_joint_fn = numpyro_likelihood(problem.joint_model, problem.y, site="y", x_site="x")

    # One compile for all of it: op by op, every primitive of the three densities compiles alone.
    @jax.jit
    def compute(x):
        # The joint model's density is prior x likelihood.
        joint = log_density(problem.joint_model, (), {"y": problem.y}, {"x": x[0, 0]})[0]
        return (problem.log_likelihood(x), from_model_fn(x), from_joint_fn(x), joint,
                problem.log_joint(x[0, 0]))

    expected, from_model, from_joint, joint, log_joint = compute(x)
    assert from_model.shape == (2, 3)
    np.testing.assert_allclose(from_model, expected, rtol=1e-5)
    np.testing.assert_allclose(from_joint, expected, rtol=1e-5)
    assert float(joint) == pytest.approx(float(log_joint), rel=1e-5)


def _likelihood_model(x, y=None):
    numpyro.sample("obs", dist.Normal(jnp.concatenate([x, x]), 0.1).to_event(1), obs=y)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_numpyro_likelihood_shape_mismatch_is_a_clear_error():
    log_r = numpyro_likelihood(_likelihood_model, jnp.zeros(3))
    with pytest.raises(ValueError, match=r"'obs' has shape \(4,\).*y has shape \(3,\)"):
        log_r(jnp.zeros(2))
    # Broadcastable shapes are rejected too (numpyro would silently broadcast them).
    with pytest.raises(ValueError, match=r"has shape \(4,\).*y has shape \(1,\)"):
        numpyro_likelihood(_likelihood_model, jnp.zeros(1))(jnp.zeros(2))
    assert numpyro_likelihood(_likelihood_model, jnp.zeros(4))(jnp.zeros((5, 2))).shape == (5,)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_numpyro_likelihood_site_errors():
    with pytest.raises(ValueError, match=r"Unknown site 'y'.*\['obs'\]"):
        numpyro_likelihood(_likelihood_model, jnp.zeros(4), site="y")(jnp.zeros(2))

    def noisy(x, y=None):
        scale = numpyro.sample("scale", dist.HalfNormal(1.0))
        numpyro.sample("y", dist.Normal(x, scale).to_event(1), obs=y)

    with pytest.raises(ValueError, match=r"latent sample sites \['scale'\]"):
        numpyro_likelihood(noisy, jnp.zeros(2))(jnp.zeros(2))
    with pytest.raises(ValueError, match="is not observed"):
        numpyro_likelihood(noisy, jnp.zeros(2), site="scale")(jnp.zeros(2))
    with pytest.raises(ValueError, match="y: expected finite values"):
        numpyro_likelihood(_likelihood_model, jnp.array([0.0, jnp.nan, 0.0, 0.0]))
