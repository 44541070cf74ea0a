"""A guide against a NUTS reference: distances when the sites agree, clear errors when not."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.diagnostics.compare import compare_guide_to_reference
from amortized_ppl.models.linear_regression import exact_posterior
from tests.helpers import exact_linear_guide, small_design


@pytest.fixture(scope="module")
def setting():
    guide, params = exact_linear_guide(newton_steps=4)
    (x,), _ = small_design(jax.random.key(1), 30)
    y = x @ jnp.array([1.0, -0.5, 0.2]) + 0.5 * jax.random.normal(jax.random.key(2), (30,))
    post = exact_posterior(x, y)
    # Exact posterior draws laid out like a NUTS result: 4 chains x 300 draws.
    flat = jax.random.multivariate_normal(jax.random.key(3), post.mean, post.cov, (4, 300))
    reference = SimpleNamespace(samples={"w": flat[..., :3], "b": flat[..., 3]})
    return guide, params, x, y, reference


@pytest.mark.slow
def test_exact_guide_is_indistinguishable_from_exact_draws(setting):
    """Statistical: two MMD tests and C2STs on 600 draws (opt in with --runslow)."""
    guide, params, x, y, reference = setting
    report, guide_flat, ref_flat = compare_guide_to_reference(
        jax.random.key(0), guide, params, reference, x, y=y, num_draws=600
    )
    assert guide_flat.shape == (600, 4) and ref_flat.shape == (600, 4)
    assert float(jnp.max(report.mean_error)) < 0.2
    assert 0.4 <= float(report.c2st_accuracy) <= 0.6
    # The same reference moved by one posterior SD in one coordinate is told apart.
    sd = float(jnp.std(reference.samples["b"]))
    moved = SimpleNamespace(samples={"w": reference.samples["w"], "b": reference.samples["b"] + sd})
    shifted, _, _ = compare_guide_to_reference(
        jax.random.key(0), guide, params, moved, x, y=y, num_draws=600
    )
    # (The best possible accuracy for a 1-SD shift is Phi(0.5) = 0.69.)
    assert float(shifted.c2st_accuracy) > 0.55 and float(shifted.mmd_p_value) <= 0.01
    assert float(shifted.mmd2) > 5 * max(float(report.mmd2), 1e-4)


@pytest.mark.slow  # runs NUTS on another model to be refused
def test_reference_from_another_model_is_refused(setting):
    guide, params, x, y, reference = setting
    no_b = SimpleNamespace(samples={"w": reference.samples["w"]})
    with pytest.raises(ValueError, match=r"latent sites \['b'\].*another model"):
        compare_guide_to_reference(jax.random.key(0), guide, params, no_b, x, y=y)
    narrow = SimpleNamespace(
        samples={"w": reference.samples["w"][..., :2], "b": reference.samples["b"]}
    )
    with pytest.raises(ValueError, match="site 'w' has shape"):
        compare_guide_to_reference(jax.random.key(0), guide, params, narrow, x, y=y)
    few = SimpleNamespace(samples={k: np.asarray(v)[:, :1] for k, v in reference.samples.items()})
    with pytest.raises(ValueError, match="reference"):
        compare_guide_to_reference(jax.random.key(0), guide, params, few, x, y=y, num_draws=100)
