"""The learned correction of a Laplace stage: bounded, and checked against the network off."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.correction import check_correction, without_correction
from amortized_ppl.families.base import MAX_SCALE_FACTOR, MAX_SHIFT_SDS
from tests.helpers import exact_linear_guide, small_design


def _wild(guide, params, size=50.0):
    """The exact guide with a huge bias on the correction's last layer (a diverged network)."""
    engine = guide.engine(params)
    bias = engine.family.inner.mlp.layers[-1].bias
    engine = eqx.tree_at(lambda e: e.family.inner.mlp.layers[-1].bias, engine,
                         jnp.full_like(bias, size))
    return {guide.param_name: eqx.filter(engine, eqx.is_inexact_array)}


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget (19 s)
def test_a_diverged_correction_stays_near_its_base_and_is_flagged():
    # Issue 15: a 200-step network moved sigma's posterior mean from its base's 0.58 to 9.0.
    guide, params = exact_linear_guide(newton_steps=4)
    (x,), _ = small_design(jax.random.key(3), 40)
    y = x @ jnp.ones(3)
    wild = _wild(guide, params)
    base = guide.get_posterior(params, x, y=y)  # zero head: the Laplace fit
    moved = guide.get_posterior(wild, x, y=y)
    # In the Laplace fit's whitened coordinates (C its Cholesky factor): the location moves at
    # most MAX_SHIFT_SDS per coordinate, the factor's diagonal within MAX_SCALE_FACTOR of 1.
    delta = jax.scipy.linalg.solve_triangular(base.scale_tril, moved.loc - base.loc, lower=True)
    assert float(jnp.max(jnp.abs(delta))) <= MAX_SHIFT_SDS + 1e-3
    assert float(jnp.max(jnp.abs(delta))) > 2.0  # the huge bias did push it to the bound
    factor = jax.scipy.linalg.solve_triangular(base.scale_tril, moved.scale_tril, lower=True)
    diag = jnp.diag(factor)
    assert float(jnp.max(diag)) <= MAX_SCALE_FACTOR + 1e-3
    assert float(jnp.min(diag)) >= 1 / MAX_SCALE_FACTOR - 1e-3
    assert float(jnp.max(jnp.abs(jnp.tril(factor, -1)))) <= 1.0 + 1e-3
    report = check_correction(jax.random.key(0), guide, wild, design_fn=small_design,
                              num_datasets=32, num_draws=32)
    assert report.worse and report.gain < 0
    exact = check_correction(jax.random.key(0), guide, params, design_fn=small_design,
                             num_datasets=32, num_draws=32)
    assert not exact.worse and abs(exact.gain) < 1e-4  # the zero head is its own base
    off = without_correction(guide.engine(wild))
    np.testing.assert_allclose(off.posterior(guide.problem, {"x": x, "y": y},
                                             jnp.ones(40, bool)).loc, base.loc, rtol=1e-5, atol=1e-6)
