"""Classifier two-sample tests (C2ST) between guide draws and reference draws.

A classifier is trained to tell the two samples apart on all but one fold and scored on the
held-out one; its cross-validated accuracy is 0.5 when the samples cannot be told apart and 1
when they always can. Draws are standardized by the reference (see
:mod:`~amortized_ppl.diagnostics.two_sample`). :func:`c2st` trains full batch for a fixed number
of steps, all folds and data sets at once: the cheap check used across the library.
It is by far the most expensive check for large ``n`` and ``D`` (an accelerator helps).

References:
    Lopez-Paz, D. and Oquab, M. (2017). Revisiting classifier two-sample tests. *ICLR*.
    Lueckmann, J.-M., Boelts, J., Greenberg, D., Gonçalves, P. and Macke, J. (2021).
    Benchmarking simulation-based inference. *AISTATS*. (The C2ST variant of ``sbi``.)
"""

from __future__ import annotations

import functools
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from amortized_ppl.diagnostics.classifier import Classifier, glorot_classifier, train_full_batch
from amortized_ppl.diagnostics.two_sample import (
    batch_keys,
    check_count,
    check_pair,
    over_batch,
    random_order,
    standardize,
)

__all__ = ["NUM_FOLDS", "c2st", "c2st_sbibm"]

NUM_FOLDS = 5  # the default of `c2st`, and so of `compare_to_reference`


def _fold_accuracy(
    key: PRNGKeyArray,
    z: Float[Array, "N D"],
    labels: Float[Array, " N"],
    is_test: Array,
    *,
    hidden_size: int,
    num_steps: int,
    learning_rate: float,
) -> Float[Array, ""]:
    """Train a fresh classifier full batch on the draws outside the fold; score it on the fold."""
    model = Classifier(z.shape[-1], hidden_size, key=key)
    # Masks rather than index sets: every fold then has the same static shapes, so folds vmap.
    train_weight = (~is_test).astype(z.dtype)
    model = train_full_batch(model, z, labels, train_weight, num_steps=num_steps,
                             learning_rate=learning_rate)
    is_correct = (jax.vmap(model)(z) > 0) == (labels > 0.5)
    return jnp.sum(is_test & is_correct) / jnp.sum(is_test)


def _c2st_folds(key, x, y, *, num_folds):
    """Balance, shuffle and split one data set: keys ``(K,)``, ``z (2k, D)``, labels, test masks.

    Class 1 is ``x`` and class 0 is ``y``, ``k = min(n, m)`` draws each; ``is_test`` is
    ``(K, 2k)``, True on the held-out fold.
    """
    x, y = standardize(x, y)
    num_per_class = min(x.shape[0], y.shape[0])
    x_key, y_key, fold_key = jax.random.split(key, 3)
    # A random subset of the larger sample balances the classes; shuffling both also makes the
    # contiguous folds below random, and stratified (equal counts of each class per fold).
    x = x[random_order(x_key, x.shape[0])[:num_per_class]]
    y = y[random_order(y_key, y.shape[0])[:num_per_class]]
    z = jnp.concatenate([x, y])
    labels = jnp.concatenate([jnp.ones(num_per_class, z.dtype), jnp.zeros(num_per_class, z.dtype)])
    fold_of = jnp.tile(jnp.arange(num_per_class) * num_folds // num_per_class, 2)
    is_test = fold_of[None, :] == jnp.arange(num_folds)[:, None]
    return jax.random.split(fold_key, num_folds), z, labels, is_test


def c2st(
    key: PRNGKeyArray,
    x: Any,
    y: Any,
    *,
    num_folds: int = NUM_FOLDS,
    hidden_size: int | None = None,
    num_steps: int = 500,
    learning_rate: float = 1e-2,
) -> jax.Array:
    """Classifier two-sample test: cross-validated accuracy of a classifier telling x from y.

    The variant of ``sbi`` (Lueckmann et al., 2021): both samples are standardized by the
    reference ``y``'s mean and SD per dimension, classes are balanced (the larger sample is
    randomly subsampled to the size of the smaller), and an MLP with two ReLU hidden layers of
    ``hidden_size`` units is trained on ``num_folds - 1`` folds and scored on the held-out one.
    Here training is full batch with Adam for a fixed ``num_steps``, and folds are stratified.
    The accuracy is 0.5 when the classifier cannot tell the samples apart, 1 when it always can.

    Args:
        key: PRNG key for subsampling, folds and initialization; data set ``i`` of the flattened
            batch uses ``split(key, B)[i]``, and an unbatched call uses ``key`` itself.
        x: Draws of shape ``(..., n, D)``.
        y: Reference draws of shape ``(..., m, D)``.
        num_folds: Number of cross-validation folds, at least 2; ``n`` and ``m`` must both be at
            least ``2 * num_folds`` so that every held-out fold has two draws of each class.
        hidden_size: Units per hidden layer; ``10 * D`` by default, as in ``sbi``.
        num_steps: Full-batch Adam steps per fold.
        learning_rate: Adam's learning rate.

    Returns:
        Accuracy averaged over folds, shape ``(...)``. With ``k = min(n, m)`` draws per class its
        sampling SD under the null is about ``sqrt(0.25 / (2 k))``, 0.02 for ``k = 300``.

    References:
        Lopez-Paz and Oquab (2017); Lueckmann et al. (2021), Section 3.

    Examples:
        >>> accuracy = c2st(jax.random.key(0), guide_draws, nuts_draws)  # doctest: +SKIP
    """
    num_folds = check_count(num_folds, "num_folds", 2)
    num_steps = check_count(num_steps, "num_steps", 1)
    if not learning_rate > 0:
        raise ValueError(f"learning_rate: expected a positive number, got {learning_rate!r}.")
    x, y = check_pair(
        x, y, min_draws=2 * num_folds, why=f" (2 * num_folds, num_folds={num_folds})"
    )
    if hidden_size is None:
        hidden_size = 10 * x.shape[-1]
    hidden_size = check_count(hidden_size, "hidden_size", 1)
    return _c2st_batched(
        batch_keys(key, x.shape[:-2]),
        x,
        y,
        num_folds=num_folds,
        hidden_size=hidden_size,
        num_steps=num_steps,
        learning_rate=float(learning_rate),
    )


def _over_folds(fold_fn, keys, x, y, num_folds):
    """``fold_fn(key, z, labels, is_test)`` on every (data set, fold) pair, one vmap over the
    pairs, each with its own copy of the draws (XLA compiles this several times faster than a
    vmap over folds nested in a vmap over data sets); outputs shaped ``(..., num_folds)``."""
    batch_shape = x.shape[:-2]
    fold_keys, z, labels, is_test = over_batch(
        functools.partial(_c2st_folds, num_folds=num_folds), batch_shape, keys, x, y
    )
    flat = math.prod(batch_shape) * num_folds
    z = jnp.broadcast_to(z[..., None, :, :], batch_shape + (num_folds,) + z.shape[-2:])
    labels = jnp.broadcast_to(labels[..., None, :], is_test.shape)
    out = jax.vmap(fold_fn)(
        fold_keys.reshape((flat,) + fold_keys.shape[len(batch_shape) + 1 :]),
        z.reshape((flat,) + z.shape[-2:]),
        labels.reshape(flat, -1),
        is_test.reshape(flat, -1),
    )
    return jax.tree.map(lambda v: v.reshape(batch_shape + (num_folds,)), out)


@functools.partial(
    jax.jit, static_argnames=("num_folds", "hidden_size", "num_steps", "learning_rate")
)
def _c2st_batched(keys, x, y, *, num_folds, **train_config):
    accuracy = _over_folds(functools.partial(_fold_accuracy, **train_config), keys, x, y,
                           num_folds)
    return jnp.mean(accuracy, axis=-1)


def _fold_accuracy_minibatch(key, z, labels, is_test, *, hidden_size, num_train, batch_size,
                             learning_rate, l2, tolerance, patience, max_epochs):
    """scikit-learn's ``MLPClassifier`` training, on one fold: shuffled mini-batches of Adam,
    an L2 penalty ``l2 / 2 * |W|^2 / batch``, and a stop once the epoch's mean training loss has
    not fallen by ``tolerance`` below its best for more than ``patience`` epochs in a row."""
    init_key, loop_key = jax.random.split(key)
    model = glorot_classifier(init_key, z.shape[-1], hidden_size)
    optimizer = optax.adam(learning_rate)
    train = jnp.nonzero(~is_test, size=num_train)[0]
    num_batches = num_train // batch_size

    def batch_loss(model, index):
        logits = jax.vmap(model)(z[index])
        penalty = sum(jnp.sum(w ** 2) for w in model.weights)
        return (jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels[index]))
                + 0.5 * l2 * penalty / batch_size)

    def epoch(state):
        model, opt_state, best, stale, count = state
        order = train[jax.random.permutation(jax.random.fold_in(loop_key, count), num_train)]

        def step(carry, index):
            model, opt_state = carry
            loss, grads = jax.value_and_grad(batch_loss)(model, index)
            updates, opt_state = optimizer.update(grads, opt_state, model)
            return (eqx.apply_updates(model, updates), opt_state), loss

        batches = order[:num_batches * batch_size].reshape(num_batches, batch_size)
        (model, opt_state), losses = jax.lax.scan(step, (model, opt_state), batches)
        loss = jnp.mean(losses)
        stale = jnp.where(loss > best - tolerance, stale + 1, 0)
        return model, opt_state, jnp.minimum(best, loss), stale, count + 1

    def running(state):
        *_, stale, count = state
        return (stale <= patience) & (count < max_epochs)

    state = (model, optimizer.init(model), jnp.array(jnp.inf, z.dtype), jnp.array(0),
             jnp.array(0))
    model, *_, epochs = jax.lax.while_loop(running, epoch, state)
    is_correct = (jax.vmap(model)(z) > 0) == (labels > 0.5)
    return jnp.sum(is_test & is_correct) / jnp.sum(is_test), epochs


def c2st_sbibm(
    key: PRNGKeyArray,
    x: Any,
    y: Any,
    *,
    num_folds: int = NUM_FOLDS,
    hidden_factor: int = 10,
    batch_size: int = 200,
    learning_rate: float = 1e-3,
    l2: float = 1e-4,
    tolerance: float = 1e-4,
    patience: int = 10,
    max_epochs: int = 10_000,
    return_epochs: bool = False,
):
    """C2ST as the sbibm benchmark computes it (Lueckmann et al. 2021, ``sbibm.metrics.c2st``).

    Both samples are z-scored by the reference ``y``; ``num_folds``-fold cross-validation
    (shuffled); per fold an MLP with two ReLU layers of ``hidden_factor * D`` units trained as
    scikit-learn's ``MLPClassifier`` trains it by default (Adam at ``1e-3`` on mini-batches of
    200, L2 ``1e-4``, stopping after ``patience`` + 1 epochs without a ``tolerance``
    improvement of the training loss, at most ``max_epochs``); the mean held-out accuracy. The
    published figures use 10,000 draws per side. Classes are balanced as in :func:`c2st` (the
    larger sample subsampled), and the folds of one data set train at once (``vmap``; a fold
    that has stopped waits for the others).

    Args:
        key: PRNG key (subsampling, folds, initialization, mini-batch order); data set ``i`` of
            a batch uses ``split(key, B)[i]``.
        x: Draws ``(..., n, D)``; ``y``: reference draws ``(..., m, D)``.
        return_epochs: also return the epochs each fold trained, ``(..., num_folds)``.

    Returns:
        The accuracy, shape ``(...)`` (and the epochs with ``return_epochs``).
    """
    num_folds = check_count(num_folds, "num_folds", 2)
    batch_size = check_count(batch_size, "batch_size", 1)
    hidden_factor = check_count(hidden_factor, "hidden_factor", 1)
    patience = check_count(patience, "patience", 0)
    max_epochs = check_count(max_epochs, "max_epochs", 1)
    for name, value in (("learning_rate", learning_rate), ("l2", l2), ("tolerance", tolerance)):
        if not value >= 0 or (name == "learning_rate" and value == 0):
            raise ValueError(f"{name}: expected a non-negative number (positive for the "
                             f"learning rate), got {value!r}.")
    x, y = check_pair(x, y, min_draws=2 * num_folds,
                      why=f" (2 * num_folds, num_folds={num_folds})")
    per_class = min(x.shape[-2], y.shape[-2])
    num_train = 2 * (per_class - -(-per_class // num_folds))
    if num_train < batch_size:
        raise ValueError(f"batch_size: {batch_size} is more than the {num_train} training draws "
                         f"of a fold (2 x {per_class} draws, {num_folds} folds).")
    accuracy, epochs = _c2st_sbibm_batched(
        batch_keys(key, x.shape[:-2]), x, y, num_folds=num_folds,
        hidden_size=hidden_factor * x.shape[-1], num_train=num_train, batch_size=batch_size,
        learning_rate=float(learning_rate), l2=float(l2), tolerance=float(tolerance),
        patience=patience, max_epochs=max_epochs)
    return (accuracy, epochs) if return_epochs else accuracy


@functools.partial(jax.jit, static_argnames=(
    "num_folds", "hidden_size", "num_train", "batch_size", "learning_rate", "l2", "tolerance",
    "patience", "max_epochs"))
def _c2st_sbibm_batched(keys, x, y, *, num_folds, **train_config):
    accuracy, epochs = _over_folds(functools.partial(_fold_accuracy_minibatch, **train_config),
                                   keys, x, y, num_folds)
    return jnp.mean(accuracy, axis=-1), epochs
