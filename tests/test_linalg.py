"""Loop-based Cholesky and triangular solves against numpy."""

import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl.linalg import cho_solve, cholesky, solve_lower, solve_upper_transposed


def _spd(key, d):
    a = jax.random.normal(key, (d, d))
    return a @ a.T + d * jnp.eye(d)


def test_cholesky_and_solves_match_numpy(key):
    matrix = _spd(key, 6)
    factor = cholesky(matrix)
    np.testing.assert_allclose(factor, np.linalg.cholesky(np.asarray(matrix)), rtol=1e-4, atol=1e-5)
    rhs = jnp.arange(12.0).reshape(6, 2)
    np.testing.assert_allclose(solve_lower(factor, rhs), np.linalg.solve(factor, rhs), rtol=1e-4)
    np.testing.assert_allclose(
        solve_upper_transposed(factor, rhs), np.linalg.solve(factor.T, rhs), rtol=1e-4
    )
    np.testing.assert_allclose(cho_solve(factor, rhs[:, 0]), np.linalg.solve(matrix, rhs[:, 0]),
                               rtol=1e-4)


def test_cholesky_flags_indefinite_matrices_and_vmaps(key):
    assert not bool(jnp.all(jnp.isfinite(cholesky(jnp.diag(jnp.array([1.0, -1.0, 2.0]))))))
    batch = jnp.stack([_spd(k, 4) for k in jax.random.split(key, 5)])
    factors = jax.jit(jax.vmap(cholesky))(batch)
    np.testing.assert_allclose(factors @ jnp.swapaxes(factors, -1, -2), batch, rtol=1e-4, atol=1e-4)
