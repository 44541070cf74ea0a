"""Damped Newton steps and the Laplace approximation (laplace.py)."""

import jax.numpy as jnp
import numpy as np

from amortized_ppl.laplace import newton_laplace


def test_newton_laplace_is_exact_on_a_gaussian():
    cov = jnp.array([[2.0, 0.5], [0.5, 1.0]])
    mean = jnp.array([1.0, -2.0])
    prec = jnp.linalg.inv(cov)
    fit = newton_laplace(lambda u: -0.5 * (u - mean) @ prec @ (u - mean), jnp.zeros(2),
                         num_steps=1)
    np.testing.assert_allclose(fit.loc, mean, atol=1e-5)
    np.testing.assert_allclose(fit.scale_tril @ fit.scale_tril.T, cov, atol=1e-5)
    assert float(fit.grad_norm) < 1e-4


def test_a_non_concave_density_still_gives_a_valid_gaussian():
    fit = newton_laplace(lambda u: jnp.sum(jnp.cos(3 * u)) - 0.1 * jnp.sum(u**2),
                         jnp.array([0.3, -0.2]), num_steps=4)
    assert bool(jnp.all(jnp.isfinite(fit.loc))) and bool(jnp.all(jnp.diag(fit.scale_tril) > 0))
