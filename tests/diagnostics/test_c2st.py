"""The sbibm C2ST (``c2st_sbibm``): it reaches the Bayes accuracy where that is known."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import norm

from amortized_ppl.diagnostics.c2st import c2st_sbibm

NUM = 1500  # per side; the accuracy's sampling SD is about sqrt(0.25 / 3000) = 0.009


@pytest.mark.slow
def test_c2st_sbibm_reaches_the_bayes_accuracy():
    """Two unit Gaussians in 2-d whose means differ by delta: the best classifier's accuracy
    is Phi(delta / 2). Data set 0: delta = 0 (0.5); data set 1: delta = 1 (0.691). Within
    0.035 (about 4 sampling SDs: the classifier is fit to a finite sample, so it can only fall
    short of the Bayes accuracy, or exceed it by chance)."""
    x = jax.random.normal(jax.random.key(1), (2, NUM, 2))
    y = jax.random.normal(jax.random.key(2), (2, NUM, 2)).at[1, :, 0].add(1.0)
    accuracy, epochs = c2st_sbibm(jax.random.key(0), x, y, return_epochs=True)
    bayes = np.array([0.5, float(norm.cdf(0.5))])
    assert np.all(np.abs(np.asarray(accuracy) - bayes) < 0.035), (accuracy, bayes)
    assert epochs.shape == (2, 5) and np.all(epochs > 10) and np.all(epochs < 10_000)
    again = c2st_sbibm(jax.random.split(jax.random.key(0), 2)[1], x[1], y[1])
    assert float(again) == pytest.approx(float(accuracy[1]), abs=1e-6)  # batch = one by one


def test_c2st_sbibm_refuses_bad_settings():
    x = jnp.zeros((100, 2))
    with pytest.raises(ValueError, match="batch_size: 200 is more than the 160 training draws"):
        c2st_sbibm(jax.random.key(0), x, x)
    with pytest.raises(ValueError, match="learning_rate"):
        c2st_sbibm(jax.random.key(0), x, x, batch_size=10, learning_rate=0.0)
