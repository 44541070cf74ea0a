"""The SGD baseline of prequential coding (amortized_ppl/icl/sgd_learner.py) and the train-risk
objective (amortized_ppl/icl/train.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.icl import (
    ImplicitLearner,
    SGDLearner,
    icl_loss,
    linear_regression,
    log_spaced_boundaries,
    sample_tasks,
    sgd_prequential_code_length,
)
from amortized_ppl.icl.predictor import gaussian_log_density

SMALL = SGDLearner(width=16, depth=2, learning_rate=1e-2, num_steps=200)


def _data(n=60):
    x = jax.random.normal(jax.random.key(0), (n, 1))
    return x, 1.5 * x[:, 0] - 0.5 + 0.1 * jax.random.normal(jax.random.key(1), (n,))


def test_boundaries_are_log_spaced_block_starts():
    bounds = log_spaced_boundaries(1000, first=5, num_blocks=10)
    assert bounds[0] == 5 and bounds[-1] < 1000 and np.all(np.diff(bounds) > 0)
    assert np.all(np.diff(np.log(bounds)) < 0.6)  # about log(200) / 10 apart
    with pytest.raises(ValueError, match="first"):
        log_spaced_boundaries(5, first=5)


@pytest.mark.slow  # compiles the vmapped training of three blocks' MLPs
def test_the_code_learns_block_by_block():
    x, y = _data()
    bounds = np.array([5, 20, 40])
    result = sgd_prequential_code_length(jax.random.key(2), x, y, bounds, SMALL)
    assert result.per_point_nats.shape == (60,)
    # The first block is the standard normal code.
    np.testing.assert_allclose(
        result.per_point_nats[:5], -gaussian_log_density(y[:5], 0.0, 0.0), rtol=1e-6)
    # Trained on 40 points, the network codes the last block far better than N(0, 1) would.
    standard = -gaussian_log_density(y[40:], 0.0, 0.0)
    assert float(jnp.mean(result.per_point_nats[40:])) < float(jnp.mean(standard)) - 0.5
    np.testing.assert_allclose(result.total_nats, jnp.sum(result.per_point_nats), rtol=1e-6)
    np.testing.assert_allclose(result.total_bits, result.total_nats / np.log(2), rtol=1e-6)
    again = sgd_prequential_code_length(jax.random.key(2), x, y, bounds, SMALL)
    np.testing.assert_array_equal(result.per_point_nats, again.per_point_nats)


def test_bad_inputs_are_refused_by_name():
    x, y = _data()
    with pytest.raises(ValueError, match="boundaries"):
        sgd_prequential_code_length(jax.random.key(0), x, y, [20, 10], SMALL)
    with pytest.raises(ValueError, match="boundaries"):
        sgd_prequential_code_length(jax.random.key(0), x, y, [5, 60], SMALL)
    with pytest.raises(ValueError, match="x, y"):
        sgd_prequential_code_length(jax.random.key(0), x, y[:10], [5], SMALL)
    with pytest.raises(ValueError, match="NaN"):
        sgd_prequential_code_length(jax.random.key(0), x, y.at[3].set(jnp.nan), [5], SMALL)


@pytest.mark.slow  # three eager passes of a Transformer
def test_train_risk_predicts_the_context_from_itself():
    family = linear_regression(1, noise_scale=0.1, prior_scale=0.5)
    batch = sample_tasks(jax.random.key(0), family, 4, max_context=12, min_context=4)
    assert float(jnp.max(jnp.abs(batch.latent))) < 4 * 0.5 * 1.5  # the prior's scale
    learner = ImplicitLearner(1, size=16, num_blocks=1, key=jax.random.key(1))
    risk, (_, nll, _) = icl_loss(learner, batch, objective="train_risk")
    on_context = batch._replace(query_x=batch.context_x, query_y=batch.context_y,
                                query_mask=batch.context_mask)
    expected, _ = icl_loss(learner, on_context, objective="nll")
    np.testing.assert_allclose(risk, expected, rtol=1e-6)
    assert float(risk) == pytest.approx(float(nll))
    other, _ = icl_loss(learner, batch, objective="nll")  # the held-out queries differ
    assert float(other) != pytest.approx(float(risk))
