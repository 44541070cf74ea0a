"""Training with a held-out loss curve (amortized_ppl/sequence/validation.py)."""

import equinox as eqx
import jax
import numpy as np
import pytest

from amortized_ppl.sequence.train import fit_sequence_model
from amortized_ppl.sequence.transformer import NextTokenTransformer
from amortized_ppl.sequence.validation import fit_with_held_out_loss, held_out_loss
from tests.sequence.helpers import TOY_STEPS, toy_problem


@pytest.mark.slow  # trains twice (two compilations of the training chunk)
def test_held_out_curve_and_the_same_model_as_fit_sequence_model():
    _, _, sample_fn = toy_problem()
    model = NextTokenTransformer(4, TOY_STEPS, size=16, num_heads=2, num_blocks=1,
                                 key=jax.random.key(0))
    held_out = sample_fn(jax.random.key(9), 40)
    budget = dict(num_steps=60, batch_size=16, learning_rate=3e-3, progress=False)
    fit, curve = fit_with_held_out_loss(jax.random.key(1), model, sample_fn, held_out,
                                        eval_every=20, **budget)
    np.testing.assert_array_equal(curve.steps, [0, 20, 40, 60])
    assert curve.loss.shape == (4,) and curve.loss[-1] < curve.loss[0] - 0.1
    # The score after training is the trained model's loss on the batch.
    np.testing.assert_allclose(curve.loss[-1], held_out_loss(fit.model, held_out), rtol=1e-6)
    # Same kernel, optimizer and step keys: the model fit_sequence_model trains (any chunking).
    plain = fit_sequence_model(jax.random.key(1), model, sample_fn, chunk_size=30, **budget)
    for a, b in zip(jax.tree.leaves(eqx.filter(fit.model, eqx.is_array)),
                    jax.tree.leaves(eqx.filter(plain.model, eqx.is_array))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="held_out: expected a tuple"):
        fit_with_held_out_loss(jax.random.key(1), model, sample_fn, held_out[1], **budget)
    with pytest.raises(ValueError, match="eval_every"):
        fit_with_held_out_loss(jax.random.key(1), model, sample_fn, held_out, eval_every=0)
    with pytest.raises(ValueError, match="same leading size"):
        held_out_loss(model, (held_out[0][:3], held_out[1]))
