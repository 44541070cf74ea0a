"""Training a sequence model on fresh simulations (amortized_ppl/sequence/train.py)."""

import jax
import numpy as np
import pytest

from amortized_ppl.sequence.train import fit_sequence_model
from amortized_ppl.sequence.transformer import NextTokenTransformer
from tests.sequence.helpers import TOY_STEPS, toy_problem


def _fit(model, sample_fn):
    return fit_sequence_model(jax.random.key(1), model, sample_fn, num_steps=60, batch_size=16,
                              learning_rate=3e-3, chunk_size=30, progress=False)


@pytest.mark.slow  # the default tier's budget (3 minutes on 2 cores)
def test_fit_sequence_model_learns():
    _, _, sample_fn = toy_problem()
    model = NextTokenTransformer(4, TOY_STEPS, size=16, num_heads=2, num_blocks=1,
                                 key=jax.random.key(0))
    a = _fit(model, sample_fn)
    assert a.history.shape == (60,) and not a.interrupted
    assert a.history[-20:].mean() < a.history[:5].mean() - 0.1
    with pytest.raises(ValueError, match="num_steps: expected an int >= 1, got 0"):
        fit_sequence_model(jax.random.key(1), model, sample_fn, num_steps=0)
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1, got 2.5"):
        fit_sequence_model(jax.random.key(1), model, sample_fn, batch_size=2.5)
    with pytest.raises(ValueError, match="learning_rate"):
        fit_sequence_model(jax.random.key(1), model, sample_fn, learning_rate=-1.0)
    with pytest.raises(TypeError, match="PRNG key"):
        fit_sequence_model(1, model, sample_fn)


@pytest.mark.slow
def test_fit_sequence_model_is_deterministic_given_the_key():
    """(Slow only because a second call compiles the training chunk again.)"""
    _, _, sample_fn = toy_problem()
    model = NextTokenTransformer(4, TOY_STEPS, size=16, num_heads=2, num_blocks=1,
                                 key=jax.random.key(0))
    np.testing.assert_array_equal(_fit(model, sample_fn).history, _fit(model, sample_fn).history)
