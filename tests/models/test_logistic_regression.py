"""Logistic regression: the model, its simulator, the Laplace baseline and a guide on it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer.util import log_density

from amortized_ppl import AutoAmortizedMultivariateNormal
from amortized_ppl.models.logistic_regression import design_fn, laplace_posterior, log_joint, model
from amortized_ppl.reference import flatten_samples, reference_posterior


def simulate(key, num_obs, num_features=3):
    (x,), _ = design_fn(key, num_obs, num_features)
    trace = handlers.trace(handlers.seed(model, jax.random.fold_in(key, 1))).get_trace(x)
    return x, trace["y"]["value"], trace["w"]["value"], trace["b"]["value"]


def test_simulated_data_are_binary_and_the_log_joint_matches_numpyro():
    x, y, w, b = simulate(jax.random.key(0), 50)
    assert set(np.unique(np.asarray(y))) <= {0.0, 1.0}
    numpyro_value, _ = log_density(model, (x,), {"y": y}, {"w": w, "b": b})
    ours = log_joint(jnp.concatenate([w, b[None]]), x, y)
    np.testing.assert_allclose(ours, numpyro_value, rtol=1e-5)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_laplace_sits_at_the_mode_with_the_inverse_hessian_and_vectorizes():
    x, y, _, _ = simulate(jax.random.key(1), 300)

    @jax.jit
    def fit_and_newton_step(x, y):
        fit = laplace_posterior(x, y)
        objective = lambda t: log_joint(t, x, y)  # noqa: E731
        precision = -jax.hessian(objective)(fit.mean)
        return fit, precision, jnp.linalg.solve(precision, jax.grad(objective)(fit.mean))

    # (Jitted: op by op, the Newton loop's surroundings compile primitive by primitive, 3x slower.)
    fit, precision, newton_step = fit_and_newton_step(x, y)
    # At the mode: the remaining Newton step is negligible in posterior SDs (float32 sums of
    # 300 terms leave gradients of ~1e-3 against curvatures of ~50).
    assert float(jnp.max(jnp.abs(newton_step) / jnp.sqrt(jnp.diag(fit.cov)))) < 1e-3
    np.testing.assert_allclose(fit.cov @ precision, np.eye(4), atol=1e-3)
    batch = jax.jit(jax.vmap(laplace_posterior))(jnp.stack([x, x]), jnp.stack([y, 1.0 - y]))
    np.testing.assert_allclose(batch.mean[0], fit.mean, rtol=1e-4, atol=1e-5)
    assert batch.cov.shape == (2, 4, 4)


@pytest.mark.slow
def test_laplace_is_accurate_for_large_n():
    """Near-Gaussian posterior at N = 2000: Laplace within Monte Carlo error of NUTS."""
    x, y, _, _ = simulate(jax.random.key(1), 2000)
    ref = reference_posterior(jax.random.key(2), model, x, y=y, num_warmup=300, num_samples=500)
    draws = flatten_samples(ref.samples)
    ref_flat = jnp.concatenate([draws["w"], draws["b"][:, None]], axis=1)
    mean, sd = ref_flat.mean(0), ref_flat.std(0)
    fit = laplace_posterior(x, y)
    # 2,000 draws: the SE of a mean is ~0.03 SD.
    assert float(jnp.max(jnp.abs(fit.mean - mean) / sd)) < 0.15
    np.testing.assert_allclose(jnp.sqrt(jnp.diag(fit.cov)) / sd, 1.0, atol=0.12)


@pytest.mark.slow
def test_guide_sets_up_on_binary_observations():
    """A full-rank guide with Newton steps on the Bernoulli likelihood (slow: about 5 s, most of
    it compiling the guide; the guides' NumPyro contract is tests/guides/test_contract.py)."""
    guide = AutoAmortizedMultivariateNormal(model, newton_steps=2)
    guide.setup(jax.random.key(0), lambda k, n: design_fn(k, n, 3), (20, 200))
    x, y, _, _ = simulate(jax.random.key(3), 40)
    draws = guide.sample_posterior(jax.random.key(4), guide.init_params(), x, y, sample_shape=(10,))
    assert draws["w"].shape == (10, 3) and draws["b"].shape == (10,)


def test_bad_shapes():
    with pytest.raises(ValueError, match="x must be"):
        laplace_posterior(jnp.zeros(5), jnp.zeros(5))
    with pytest.raises(ValueError, match="y must be"):
        laplace_posterior(jnp.zeros((5, 2)), jnp.zeros(4))
    with pytest.raises(ValueError, match="num_obs"):
        design_fn(jax.random.key(0), 0)
