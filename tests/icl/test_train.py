"""Training in-context learners (amortized_ppl/icl/train.py) on the one driver."""

import jax
import numpy as np
import pytest

from amortized_ppl.icl import (
    ImplicitLearner,
    bayesian_linear_predictor,
    build_explicit_learner,
    evaluate_learner,
    fit_icl,
    linear_regression,
)

SMALL = dict(batch_size=16, max_context=24, min_context=4, chunk_size=50)


@pytest.mark.slow  # ~10 s: 300 steps of a tiny implicit learner
def test_implicit_learner_trains_towards_the_bayes_predictor():
    family = linear_regression(1, noise_scale=0.1)
    learner = ImplicitLearner(1, size=32, num_heads=4, num_blocks=2, key=jax.random.key(0))
    key = jax.random.key(3)
    before = evaluate_learner(key, learner, family, num_tasks=64, max_context=24, min_context=4)
    result = fit_icl(jax.random.key(1), learner, family, num_steps=300, learning_rate=2e-3, **SMALL)
    after = evaluate_learner(
        key, result.learner, family, num_tasks=64, max_context=24, min_context=4
    )
    exact = evaluate_learner(
        key,
        bayesian_linear_predictor(0.1, return_moments=True),
        family,
        num_tasks=64,
        max_context=24,
        min_context=4,
    )
    assert result.infos.loss.shape == (300,)
    assert np.isnan(result.infos.probe_mse).all()
    assert after["nll"] < before["nll"] - 1.0
    assert after["mse"] < 0.25 * before["mse"]
    assert exact["nll"] <= after["nll"]


@pytest.mark.slow  # ~10 s: 300 steps of a tiny explicit learner with the known form
def test_explicit_learner_and_its_probe_train():
    family = linear_regression(1)
    learner = build_explicit_learner(
        1, 2, predictor="known", z_dim=8, size=32, num_heads=4, num_blocks=2, key=jax.random.key(0)
    )
    result = fit_icl(
        jax.random.key(1),
        learner,
        family,
        num_steps=300,
        learning_rate=2e-3,
        objective="mse",
        **SMALL,
    )
    probe = result.infos.probe_mse
    assert np.all(np.isfinite(probe))
    assert probe[-50:].mean() < 0.5 * probe[:50].mean()
    assert result.infos.mse[-50:].mean() < 0.5 * result.infos.mse[:50].mean()


def test_bad_training_arguments_name_themselves():
    learner = ImplicitLearner(1, size=8, num_heads=2, num_blocks=1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="objective: expected one of"):
        fit_icl(jax.random.key(1), learner, linear_regression(1), num_steps=1, objective="kl")
    with pytest.raises(ValueError, match="num_steps"):
        fit_icl(jax.random.key(1), learner, linear_regression(1), num_steps=0)
