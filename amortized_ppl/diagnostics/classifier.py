"""The small classifier of the classifier-based checks, its initializations and its training.

An MLP with two ReLU hidden layers and one logit, on one standardized input vector, as ``sbi``
and ``sbibm`` use (scikit-learn's ``MLPClassifier``), and full-batch Adam training of it for a
fixed number of steps. Used by :mod:`~amortized_ppl.diagnostics.c2st` (two-sample tests) and
:mod:`~amortized_ppl.diagnostics.lc2st` (the local test of an amortized posterior); everything
here is a pure function of its inputs, so many classifiers train at once under ``jax.vmap``.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["Classifier", "glorot_classifier", "train_full_batch"]


class Classifier(eqx.Module):
    """MLP with two ReLU hidden layers and one logit, on one standardized draw.

    Attributes:
        weights: Shapes ``(H, D)``, ``(H, H)`` and ``(H,)``.
        biases: Shapes ``(H,)``, ``(H,)`` and ``()``.
    """

    weights: tuple[jax.Array, jax.Array, jax.Array]
    biases: tuple[jax.Array, jax.Array, jax.Array]

    def __init__(self, in_size: int, hidden_size: int, *, key: PRNGKeyArray):
        # The initialization of `eqx.nn.Linear`, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights
        # and biases, but from one uniform draw: every separate draw compiles its own threefry
        # hash, which made up most of the compile time of the whole test.
        shapes = [
            (hidden_size, in_size),
            (hidden_size,),
            (hidden_size, hidden_size),
            (hidden_size,),
            (hidden_size,),
            (),
        ]
        fan_ins = [in_size, in_size, hidden_size, hidden_size, hidden_size, hidden_size]
        sizes = [math.prod(shape) for shape in shapes]
        flat = jax.random.uniform(key, (sum(sizes),), minval=-1.0, maxval=1.0)
        parts = jnp.split(flat, np.cumsum(sizes)[:-1])
        params = [
            part.reshape(shape) / math.sqrt(fan_in)
            for part, shape, fan_in in zip(parts, shapes, fan_ins)
        ]
        self.weights = tuple(params[0::2])
        self.biases = tuple(params[1::2])

    def __call__(self, z: Float[Array, " D"]) -> Float[Array, ""]:
        hidden = jax.nn.relu(self.weights[0] @ z + self.biases[0])
        hidden = jax.nn.relu(self.weights[1] @ hidden + self.biases[1])
        return self.weights[2] @ hidden + self.biases[2]


def glorot_classifier(key: PRNGKeyArray, in_size: int, hidden_size: int) -> Classifier:
    """The classifier with scikit-learn's MLP initialization: weights and biases uniform in
    ``+-sqrt(f / (fan_in + fan_out))``, ``f = 6`` for the ReLU layers and 2 for the logistic
    output.

    Args:
        key: PRNG key of the initialization.
        in_size: Length ``D`` of an input vector.
        hidden_size: Units per hidden layer.

    Returns:
        A fresh :class:`Classifier`.
    """
    model = Classifier(in_size, hidden_size, key=key)
    fans = [(in_size, hidden_size, 6.0), (hidden_size, hidden_size, 6.0), (hidden_size, 1, 2.0)]
    leaves = []
    for weight, bias, (fan_in, fan_out, factor) in zip(model.weights, model.biases, fans):
        # `Classifier` drew U(-1, 1) / sqrt(fan_in): rescale those draws to the wanted bound.
        scale = math.sqrt(factor / (fan_in + fan_out)) * math.sqrt(fan_in)
        leaves.append((weight * scale, bias * scale))
    return eqx.tree_at(lambda m: (m.weights, m.biases), model,
                       (tuple(w for w, _ in leaves), tuple(b for _, b in leaves)))


def train_full_batch(
    model: Classifier,
    z: Float[Array, "N D"],
    labels: Float[Array, " N"],
    weights: Float[Array, " N"],
    *,
    num_steps: int,
    learning_rate: float,
) -> Classifier:
    """Train a classifier full batch with Adam for a fixed number of steps (a ``lax.scan``).

    The loss is the weighted mean binary cross-entropy of the logits,
    ``sum(w * bce) / sum(w)``. Weights, rather than index sets, leave a draw out (weight 0)
    while keeping every static shape the same, so that many trainings (folds, permutations)
    ``vmap`` together. No randomness: the result is a function of ``model``'s initial
    parameters and the data alone.

    Args:
        model: The initial classifier (e.g. from :func:`glorot_classifier`).
        z: Inputs ``(N, D)``, already standardized.
        labels: Class of each input, 0.0 or 1.0, ``(N,)``; 1 is the positive class (logit > 0).
        weights: Non-negative weight of each input in the loss ``(N,)``, not all 0.
        num_steps: Adam steps (static).
        learning_rate: Adam's learning rate (static).

    Returns:
        The trained classifier.
    """
    optimizer = optax.adam(learning_rate)

    def loss_fn(model):
        logits = jax.vmap(model)(z)
        losses = optax.sigmoid_binary_cross_entropy(logits, labels)
        return jnp.sum(weights * losses) / jnp.sum(weights)

    def step(carry, _):
        model, opt_state = carry
        grads = jax.grad(loss_fn)(model)
        updates, opt_state = optimizer.update(grads, opt_state, model)
        return (eqx.apply_updates(model, updates), opt_state), None

    (model, _), _ = jax.lax.scan(step, (model, optimizer.init(model)), length=num_steps)
    return model
