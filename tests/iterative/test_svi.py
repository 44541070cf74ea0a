"""The plain-SVI baseline on the iterative state (iterative/svi.py)."""

import jax.numpy as jnp
import numpy as np

from amortized_ppl.iterative.svi import svi_refine_jit
from tests.iterative.linear import data, errors, linear_guide


def test_svi_baseline_improves_the_elbo(key):
    guide, _ = linear_guide()
    x, y = data(200)
    arguments = {"x": x, "y": y, "sigma": 0.5}
    loc, tril, elbo = svi_refine_jit(
        key, guide.problem, arguments, jnp.ones(200, bool), batch_size=50, num_passes=10,
        learning_rate=0.05
    )
    elbo = np.asarray(elbo).reshape(-1)
    assert np.all(np.isfinite(elbo)) and elbo[-4:].mean() > elbo[:4].mean()
    assert tril.shape == (4, 4) and np.allclose(tril, np.tril(tril))
    # At equal gradient evaluations Adam is still far off, where one pass of the
    # natural-gradient update is exact (test_refine_arrays_is_exact_and_stops_on_tolerance).
    mean_error, _ = errors(loc, tril, x, y)
    assert mean_error > 0.1


