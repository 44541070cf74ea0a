"""Task families for in-context learning, and a sampler of padded batches of tasks.

A task family is a value (:class:`TaskFamily`): pure functions that draw a task latent from a
key, map a latent and an input to the noise-free output, and observe an output. A batch
(:class:`TaskBatch`) holds, per task, a context of ``n ~ U{min_context..max_context}`` points
padded to ``max_context`` rows with a boolean mask, as many query points (padded the same way)
and the task's true latent (for probes). Queries may be moved out of distribution:

- ``"iid"``: ``x_q ~ N(0, I)`` like the context;
- ``"wide"``: ``3 x_q``;
- ``"far"``: ``0.1 x_q + 3 u`` with ``u`` a unit vector drawn uniformly per task.

Families: :func:`linear_regression` (``y = [x, 1] @ w + noise``, ``w ~ N(0, I)``),
:func:`sinusoid` (three fixed frequencies, random amplitudes), :func:`random_mlp` (a one-hidden-
layer tanh network with random weights) and :func:`logistic_classification` (``y ~ Bernoulli(
sigmoid([x, 1] @ w))``).

References:
    Elmoznino, E., Marty, T., Kasetty, T., Gagnon, L., Mittal, S., Fathi, M., Sridhar, D.,
    Lajoie, G. (2024). In-context learning and Occam's razor. arXiv:2410.14086.
    Mittal, S., Elmoznino, E., Gagnon, L., Bhardwaj, S., Sridhar, D., Lajoie, G. (2024). Does
    learning the right latent variables necessarily improve in-context learning?
    arXiv:2405.19162.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from amortized_ppl._checks import check_int, check_positive_float

__all__ = [
    "QUERY_SHIFTS",
    "TaskBatch",
    "TaskFamily",
    "linear_regression",
    "logistic_classification",
    "random_mlp",
    "sample_tasks",
    "shift_queries",
    "sinusoid",
]

QUERY_SHIFTS = ("iid", "wide", "far")
"""The query distributions :func:`shift_queries` knows."""


class TaskFamily(NamedTuple):
    """A distribution over tasks, as pure functions.

    Attributes:
        name: a label (``"linear"``, ``"sinusoid"``, ...).
        x_dim: input dimension ``d``.
        latent_dim: size of the flat task latent (what a probe predicts).
        sample_latent: ``sample_latent(key) -> (latent_dim,)``.
        mean_fn: ``mean_fn(latent, x) -> ()``, the noise-free output at one input ``(d,)``.
        observe_fn: ``observe_fn(key, mean) -> ()``, one observation given its noise-free output.
        noise_scale: SD of the Gaussian observation noise (0 for noise-free or non-Gaussian).
    """

    name: str
    x_dim: int
    latent_dim: int
    sample_latent: Callable
    mean_fn: Callable
    observe_fn: Callable
    noise_scale: float = 0.0


class TaskBatch(NamedTuple):
    """A batch of tasks, contexts and queries padded to ``max_context`` rows.

    Attributes:
        context_x: ``(batch, max_context, d)``; padded rows are zero.
        context_y: ``(batch, max_context)``; padded entries are zero.
        context_mask: ``(batch, max_context)`` bool; True marks real points.
        query_x: ``(batch, max_context, d)``.
        query_y: ``(batch, max_context)``, observed outputs (noisy where the family is).
        query_mask: ``(batch, max_context)`` bool; as many real queries as context points.
        latent: ``(batch, latent_dim)``, each task's true latent.
    """

    context_x: jax.Array
    context_y: jax.Array
    context_mask: jax.Array
    query_x: jax.Array
    query_y: jax.Array
    query_mask: jax.Array
    latent: jax.Array


def _gaussian_observe(noise_scale: float) -> Callable:
    def observe(key, mean):
        return mean + noise_scale * jax.random.normal(key, jnp.shape(mean))

    return observe


def _with_bias(x):
    return jnp.concatenate([x, jnp.ones(x.shape[:-1] + (1,), x.dtype)], axis=-1)


def linear_regression(x_dim: int = 1, *, noise_scale: float = 0.0,
                      prior_scale: float = 1.0) -> TaskFamily:
    """Linear regression with a bias: ``y = [x, 1] @ w + noise_scale * eps``,
    ``w ~ N(0, prior_scale^2 I)``.

    The latent is ``w`` of shape ``(x_dim + 1,)``, bias last (the order of
    :func:`amortized_ppl.models.linear_regression.exact_posterior`).

    Args:
        x_dim: input dimension ``d`` (the issue's 1, 3 and 8).
        noise_scale: observation noise SD, >= 0.
        prior_scale: prior SD of every coefficient (Elmoznino et al.'s code-length tasks use
            ``1 / sqrt(d + 1)``).

    Examples:
        >>> family = linear_regression(3, noise_scale=0.1)
        >>> family.latent_dim
        4
    """
    x_dim = check_int(x_dim, "x_dim")
    noise_scale = check_positive_float(noise_scale, "noise_scale", allow_zero=True)
    prior_scale = check_positive_float(prior_scale, "prior_scale")
    return TaskFamily(
        name="linear",
        x_dim=x_dim,
        latent_dim=x_dim + 1,
        sample_latent=lambda key: prior_scale * jax.random.normal(key, (x_dim + 1,)),
        mean_fn=lambda w, x: _with_bias(x) @ w,
        observe_fn=_gaussian_observe(noise_scale),
        noise_scale=noise_scale,
    )


SINUSOID_FREQUENCIES = (0.5, 1.0, 2.0)
"""The three fixed frequencies of :func:`sinusoid`."""


def sinusoid(*, noise_scale: float = 0.0) -> TaskFamily:
    """``y = sum_k a_k sin(f_k x)`` over the fixed :data:`SINUSOID_FREQUENCIES`, ``a ~ N(0, I)``.

    One-dimensional inputs; the latent is the three amplitudes.
    """
    noise_scale = check_positive_float(noise_scale, "noise_scale", allow_zero=True)
    frequencies = jnp.asarray(SINUSOID_FREQUENCIES)
    return TaskFamily(
        name="sinusoid",
        x_dim=1,
        latent_dim=len(SINUSOID_FREQUENCIES),
        sample_latent=lambda key: jax.random.normal(key, (len(SINUSOID_FREQUENCIES),)),
        mean_fn=lambda a, x: jnp.sum(a * jnp.sin(frequencies * x[0])),
        observe_fn=_gaussian_observe(noise_scale),
        noise_scale=noise_scale,
    )


def random_mlp(x_dim: int = 1, *, hidden: int = 16, noise_scale: float = 0.0) -> TaskFamily:
    """A one-hidden-layer tanh network with ``N(0, 1/fan_in)`` weights and zero-mean biases.

    ``y = v @ tanh(A x + b) / sqrt(hidden) + c``; the latent is ``[A, b, v, c]`` flattened.
    """
    x_dim = check_int(x_dim, "x_dim")
    hidden = check_int(hidden, "hidden")
    noise_scale = check_positive_float(noise_scale, "noise_scale", allow_zero=True)
    sizes = (hidden * x_dim, hidden, hidden, 1)

    def unpack(latent):
        a, b, v, c = jnp.split(latent, [sizes[0], sizes[0] + hidden, sizes[0] + 2 * hidden])
        return a.reshape(hidden, x_dim) / jnp.sqrt(x_dim), b, v / jnp.sqrt(hidden), c[0]

    def mean_fn(latent, x):
        a, b, v, c = unpack(latent)
        return v @ jnp.tanh(a @ x + b) + c

    return TaskFamily(
        name="mlp",
        x_dim=x_dim,
        latent_dim=sum(sizes),
        sample_latent=lambda key: jax.random.normal(key, (sum(sizes),)),
        mean_fn=mean_fn,
        observe_fn=_gaussian_observe(noise_scale),
        noise_scale=noise_scale,
    )


def logistic_classification(x_dim: int = 1) -> TaskFamily:
    """Binary classification: ``y ~ Bernoulli(sigmoid([x, 1] @ w))``, ``w ~ N(0, I)``, y in {0, 1}.

    ``mean_fn`` gives the class-1 probability.
    """
    x_dim = check_int(x_dim, "x_dim")

    def observe(key, probability):
        return jax.random.bernoulli(key, probability).astype(jnp.float32)

    return TaskFamily(
        name="logistic",
        x_dim=x_dim,
        latent_dim=x_dim + 1,
        sample_latent=lambda key: jax.random.normal(key, (x_dim + 1,)),
        mean_fn=lambda w, x: jax.nn.sigmoid(_with_bias(x) @ w),
        observe_fn=observe,
    )


def shift_queries(key, query_x, shift: str):
    """Move one task's queries ``(m, d)`` to the distribution named by ``shift``.

    Raises:
        ValueError: ``shift`` is not one of :data:`QUERY_SHIFTS`.
    """
    if shift == "iid":
        return query_x
    if shift == "wide":
        return 3.0 * query_x
    if shift == "far":
        direction = jax.random.normal(key, query_x.shape[-1:])
        direction = direction / jnp.linalg.norm(direction)
        return 0.1 * query_x + 3.0 * direction
    raise ValueError(f"shift: expected one of {QUERY_SHIFTS}, got {shift!r}.")


def _one_task(key, family: TaskFamily, max_context: int, min_context: int, shift: str):
    keys = jax.random.split(key, 7)
    latent = family.sample_latent(keys[0])
    size = jax.random.randint(keys[1], (), min_context, max_context + 1)
    mask = jnp.arange(max_context) < size
    context_x = jax.random.normal(keys[2], (max_context, family.x_dim))
    query_x = shift_queries(keys[3], jax.random.normal(keys[4], context_x.shape), shift)

    def observe(key_, x):
        means = jax.vmap(lambda row: family.mean_fn(latent, row))(x)
        return family.observe_fn(key_, means)

    context_y = observe(keys[5], context_x)
    query_y = observe(keys[6], query_x)
    zero = lambda a: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, 0.0)
    return TaskBatch(
        zero(context_x), zero(context_y), mask, zero(query_x), zero(query_y), mask, latent
    )


def sample_tasks(
    key,
    family: TaskFamily,
    batch_size: int,
    *,
    max_context: int = 128,
    min_context: int = 16,
    shift: str = "iid",
) -> TaskBatch:
    """Draw ``batch_size`` tasks, each with ``n ~ U{min_context..max_context}`` context points.

    Args:
        key: PRNG key; the batch is a pure function of it.
        family: the :class:`TaskFamily`.
        batch_size: number of tasks.
        max_context: rows every context (and query set) is padded to.
        min_context: the fewest context points (0 allowed: an empty context).
        shift: the query distribution, one of :data:`QUERY_SHIFTS`.

    Returns:
        A :class:`TaskBatch` with leading axis ``batch_size``.

    Examples:
        >>> batch = sample_tasks(jax.random.key(0), linear_regression(1), 4, max_context=32)
        >>> batch.context_x.shape, batch.latent.shape
        ((4, 32, 1), (4, 2))
    """
    if not isinstance(family, TaskFamily):
        raise TypeError(f"family: expected a TaskFamily, got {type(family).__name__}.")
    batch_size = check_int(batch_size, "batch_size")
    max_context = check_int(max_context, "max_context")
    min_context = check_int(min_context, "min_context", 0)
    if min_context > max_context:
        raise ValueError(
            f"min_context: expected at most max_context={max_context}, got {min_context}."
        )
    if shift not in QUERY_SHIFTS:
        raise ValueError(f"shift: expected one of {QUERY_SHIFTS}, got {shift!r}.")
    keys = jax.random.split(key, batch_size)
    return jax.vmap(lambda k: _one_task(k, family, max_context, min_context, shift))(keys)
