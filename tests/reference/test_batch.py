"""Many data sets in one NUTS program (amortized_ppl/reference/batch.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.models.linear_regression import exact_posterior, model_known_noise
from amortized_ppl.reference import reference_posterior, reference_posteriors


def _data(num_datasets=3):
    x = jax.random.normal(jax.random.key(0), (num_datasets, 30, 2))
    y = x.sum(-1) + 0.5 * jax.random.normal(jax.random.key(1), (num_datasets, 30))
    return x, y


@pytest.mark.filterwarnings("ignore:R-hat")  # the short chains have not converged
@pytest.mark.slow  # compiles NUTS vectorized over data sets, twice, and once for the loop
def test_a_batch_gives_each_data_set_its_own_reference():
    x, y = _data()
    # Short chains: the same key as a loop over reference_posterior gives the same draws to
    # vectorization's float rounding (over long runs a rounding difference sooner or later
    # flips an accept or U-turn decision, and the chains part in value, not in distribution).
    short = dict(num_chains=2, num_warmup=5, num_samples=10)
    batch = reference_posteriors(jax.random.key(2), model_known_noise, x, y=y, **short)
    keys = jax.random.split(jax.random.key(2), 3)
    for b, result in enumerate(batch):
        alone = reference_posterior(keys[b], model_known_noise, x[b], y=y[b], progress=False,
                                    **short)
        np.testing.assert_allclose(result.samples["w"], alone.samples["w"], atol=1e-4)
    # A 0-d array is shared by every data set, as a Python value is (traced, not static).
    shared = reference_posteriors(jax.random.key(2), model_known_noise, x, y=y,
                                  sigma=jnp.asarray(0.5), **short)
    for a, b in zip(batch, shared):
        np.testing.assert_allclose(a.samples["w"], b.samples["w"], atol=1e-5)
    # Long chains: each result is its own data set's posterior (posterior-mean error of 2 x 500
    # draws with ESS > 200 is under 0.1 SD; 0.3 SD leaves room for the worst of 6 coordinates).
    batch = reference_posteriors(jax.random.key(3), model_known_noise, x, y=y, num_chains=2,
                                 num_warmup=300, num_samples=500)
    assert len(batch) == 3
    for b, result in enumerate(batch):
        assert result.samples["w"].shape == (2, 500, 2)
        assert float(np.max(result.rhat["w"])) < 1.05
        exact = exact_posterior(x[b], y[b])
        mean = np.asarray(result.samples["w"]).reshape(-1, 2).mean(0)
        sd = np.sqrt(np.diag(exact.cov))[:2]
        assert np.all(np.abs(mean - exact.mean[:2]) < 0.3 * sd)


def test_a_batch_without_a_common_data_set_axis_is_refused():
    x, y = _data()
    with pytest.raises(ValueError, match="leading data-set axis"):
        reference_posteriors(jax.random.key(0), model_known_noise, x, y=y[:2])
    with pytest.raises(ValueError, match="at least one array"):
        reference_posteriors(jax.random.key(0), model_known_noise, x[0, 0, 0], y=y[0, 0])
    with pytest.raises(TypeError, match="'progress' is not supported"):
        reference_posteriors(jax.random.key(0), model_known_noise, x, y=y, progress=True)
    with pytest.raises(ValueError, match="NaN or Inf"):
        reference_posteriors(jax.random.key(0), model_known_noise, x, y=y.at[1, 3].set(np.nan))
