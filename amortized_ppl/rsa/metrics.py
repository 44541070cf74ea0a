"""What one round of RSA measures on its population: Pass@1, Pass@N, majority vote, diversity.

Given a population of ``N`` candidates, a ``score_fn`` (a candidate's accuracy, 1 for a correct
answer) and an ``answer_fn`` (what majority voting compares; the candidate itself by default),
one round reports

- ``mean_score``: the population's mean score. With 0/1 scores this is the paper's Pass@1, the
  accuracy of one candidate drawn at random;
- ``best_score``: the largest score;
- ``pass_at_n``: 1 if any candidate is correct, else 0; correct means ``correct_fn(candidate)``
  when one is given, else ``score >= correct_threshold`` (default 1.0);
- ``majority_score``: the score of the majority-vote answer. Candidates are grouped by *exact
  equality* of their answers (every element of every leaf equal: ``==`` on arrays, so NaN equals
  nothing, and ``==`` on host objects, ``numpy.array_equal`` on numpy arrays); the vote picks the
  largest group, ties going to the group whose first member comes first in the population, and
  reports the score of that first member;
- ``diversity``: the mean ``distance_fn`` over the ``N (N - 1)`` ordered pairs of distinct
  members' answers (0 for ``N = 1``). The default distance is the fraction of elements that
  differ (normalized Hamming; 0 or 1 for a scalar or an arbitrary object), so for discrete answers
  diversity is the probability that two random members disagree on a random element (the
  Gini-Simpson index for a scalar answer) and it is 0 exactly when the population has collapsed to
  one answer. For continuous answers exact disagreement is almost always 1: pass a metric
  distance there, e.g. ``lambda a, b: jnp.linalg.norm(a - b)``, and diversity becomes the mean
  pairwise distance;
- ``distinct_fraction``: the number of distinct answers (groups above) over ``N``;
- ``diagnostic``: the population mean of ``diagnostic_fn(candidate)`` (any pytree of scalars, e.g.
  per-step accuracy), ``None`` without one.

Without ``score_fn`` the four score metrics are NaN (``pass_at_n`` is computed when a
``correct_fn`` is given). :func:`population_metrics` computes these with JAX on a pytree whose
leaves have leading axis ``N`` (jit- and vmap-able); :func:`population_metrics_host` computes the
same numbers on a Python list of arbitrary objects (LLM outputs).

References:
    Venkatraman, S. et al. (2025). Recursive Self-Aggregation Unlocks Deep Thinking in Large
    Language Models. arXiv:2509.26626. Reference code: github.com/HyperPotatoNeo/RSA.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "MetricFns",
    "RSAInfo",
    "hamming_distance",
    "population_metrics",
    "population_metrics_host",
]


class RSAInfo(NamedTuple):
    """Metrics of one population (scalars), or of every round stacked (shape ``(T,)``).

    Attributes:
        mean_score: mean score of the population (Pass@1 with 0/1 scores); NaN without
            ``score_fn``.
        best_score: largest score; NaN without ``score_fn``.
        pass_at_n: 1.0 if any candidate is correct, else 0.0 (a float, so that it averages over
            problems); NaN without ``score_fn`` or ``correct_fn``.
        majority_score: score of the majority-vote answer; NaN without ``score_fn``.
        diversity: mean pairwise ``distance_fn`` between members' answers (see the module).
        distinct_fraction: distinct answers over ``N``, in ``(0, 1]``.
        diagnostic: population mean of ``diagnostic_fn``, a pytree of scalars, or ``None``.
    """

    mean_score: Any
    best_score: Any
    pass_at_n: Any
    majority_score: Any
    diversity: Any
    distinct_fraction: Any
    diagnostic: Any = None


class MetricFns(NamedTuple):
    """The functions and threshold that define an :class:`RSAInfo` (see the module).

    Attributes:
        score_fn: ``candidate -> scalar`` (1.0 for a correct answer), or ``None``.
        correct_fn: ``candidate -> bool``, or ``None`` for ``score >= correct_threshold``.
        correct_threshold: the score at which a candidate counts as correct.
        answer_fn: ``candidate -> answer`` compared by the vote and the diversity, or ``None``
            for the candidate itself.
        distance_fn: ``(answer, answer) -> scalar``, or ``None`` for the fraction of elements
            that differ.
        diagnostic_fn: ``candidate -> pytree of scalars`` averaged over the population, or
            ``None``.
    """

    score_fn: Callable | None = None
    correct_fn: Callable | None = None
    correct_threshold: float = 1.0
    answer_fn: Callable | None = None
    distance_fn: Callable | None = None
    diagnostic_fn: Callable | None = None


def hamming_distance(a: Any, b: Any) -> jax.Array:
    """The fraction of elements (over every leaf of two equal-structured pytrees) that differ.

    Returns a float32 scalar in ``[0, 1]``; 0 for pytrees with no elements.
    """
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    num_elements = sum(int(np.size(leaf)) for leaf in leaves_a)
    if num_elements == 0:
        return jnp.zeros((), jnp.float32)
    num_different = sum(
        jnp.sum(jnp.asarray(x) != jnp.asarray(y)) for x, y in zip(leaves_a, leaves_b)
    )
    return num_different.astype(jnp.float32) / num_elements


def _mismatch_counts(answers: Any, num: int) -> tuple[jax.Array, int]:
    """``(N, N)`` int32 counts of differing elements between members' answers (every leaf),
    and the number of elements per answer."""
    counts = jnp.zeros((num, num), jnp.int32)
    num_elements = 0
    for leaf in jax.tree.leaves(answers):
        flat = jnp.reshape(leaf, (num, -1))
        counts += jnp.sum(flat[:, None, :] != flat[None, :, :], axis=-1, dtype=jnp.int32)
        num_elements += flat.shape[1]
    return counts, num_elements


def population_metrics(population: Any, metric_fns: MetricFns = MetricFns()) -> RSAInfo:
    """The metrics of one population of candidates, computed with JAX.

    Args:
        population: a pytree whose leaves have leading axis ``N`` (one candidate per row).
        metric_fns: the score, correctness, answer, distance and diagnostic functions, each
            applied to one unbatched candidate (vmapped here).

    Returns:
        An :class:`RSAInfo` of float32 scalars (``diagnostic`` as ``diagnostic_fn`` returns).
    """
    leaves = jax.tree.leaves(population)
    if not leaves:
        raise ValueError("population: expected a pytree with at least one array leaf, got none.")
    num = int(leaves[0].shape[0])
    nan = jnp.full((), jnp.nan, jnp.float32)
    answer_fn = metric_fns.answer_fn
    answers = population if answer_fn is None else jax.vmap(answer_fn)(population)
    mismatches, num_elements = _mismatch_counts(answers, num)
    same = mismatches == 0
    # argmax takes the first member of a largest group; groups tied in size go to the one whose
    # first member comes first (the first index among their union), as the host variant does.
    majority = jnp.argmax(jnp.sum(same, axis=1))
    is_first = ~jnp.any(jnp.tril(same, -1), axis=1)
    distinct_fraction = jnp.sum(is_first).astype(jnp.float32) / num
    if metric_fns.distance_fn is None:  # hamming_distance, from the counts already made
        pairwise = mismatches.astype(jnp.float32) / max(num_elements, 1)
    else:
        distance_fn = metric_fns.distance_fn
        pairwise = jax.vmap(lambda a: jax.vmap(lambda b: distance_fn(a, b))(answers))(answers)
    off_diagonal = jnp.sum(pairwise) - jnp.sum(jnp.diagonal(pairwise))
    diversity = (off_diagonal / max(num * (num - 1), 1)).astype(jnp.float32)

    if metric_fns.score_fn is None:
        mean_score = best_score = majority_score = nan
        scores = None
    else:
        scores = jax.vmap(metric_fns.score_fn)(population).astype(jnp.float32)
        mean_score, best_score = jnp.mean(scores), jnp.max(scores)
        majority_score = scores[majority]
    if metric_fns.correct_fn is not None:
        pass_at_n = jnp.any(jax.vmap(metric_fns.correct_fn)(population)).astype(jnp.float32)
    elif scores is not None:
        pass_at_n = jnp.any(scores >= metric_fns.correct_threshold).astype(jnp.float32)
    else:
        pass_at_n = nan
    diagnostic = None
    if metric_fns.diagnostic_fn is not None:
        values = jax.vmap(metric_fns.diagnostic_fn)(population)
        diagnostic = jax.tree.map(lambda v: jnp.mean(jnp.asarray(v, jnp.float32), axis=0), values)
    return RSAInfo(
        mean_score, best_score, pass_at_n, majority_score, diversity, distinct_fraction, diagnostic
    )


# ----------------------------------------------------------------------------------- host side
def _host_equal(a: Any, b: Any) -> bool:
    """Exact equality of two host objects: ``numpy.array_equal`` for arrays, else ``==``."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(a, b))
    return bool(a == b)


def _host_distance(a: Any, b: Any) -> float:
    """The default host distance: the fraction of differing elements for two numpy arrays of one
    shape (as :func:`hamming_distance`), else 0 for equal objects and 1 for different ones."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape:
        return float(np.mean(a != b)) if a.size else 0.0
    return 0.0 if _host_equal(a, b) else 1.0


def population_metrics_host(
    population: Sequence[Any], metric_fns: MetricFns = MetricFns()
) -> RSAInfo:
    """The metrics of a list of arbitrary Python candidates (see the module), with numpy.

    The same definitions as :func:`population_metrics`, with answers compared by ``==``
    (``numpy.array_equal`` for numpy arrays). Returns an :class:`RSAInfo` of Python floats
    (``diagnostic``: the population mean of ``diagnostic_fn``'s values, leaf by leaf, or
    ``None``).
    """
    population = list(population)
    num = len(population)
    if num == 0:
        raise ValueError("population: expected at least one candidate, got an empty list.")
    answer_fn = metric_fns.answer_fn
    answers = population if answer_fn is None else [answer_fn(c) for c in population]
    groups: list[list[int]] = []  # member indices by answer, in order of first appearance
    for i, answer in enumerate(answers):
        for group in groups:
            if _host_equal(answers[group[0]], answer):
                group.append(i)
                break
        else:
            groups.append([i])
    majority = max(groups, key=len)[0]  # max keeps the first of equal-sized groups
    distance_fn = _host_distance if metric_fns.distance_fn is None else metric_fns.distance_fn
    total = sum(
        float(distance_fn(answers[i], answers[j])) for i in range(num) for j in range(num) if i != j
    )
    diversity = total / max(num * (num - 1), 1)

    nan = float("nan")
    scores = None
    mean_score = best_score = majority_score = nan
    if metric_fns.score_fn is not None:
        scores = np.array([float(metric_fns.score_fn(c)) for c in population])
        mean_score, best_score = float(scores.mean()), float(scores.max())
        majority_score = float(scores[majority])
    if metric_fns.correct_fn is not None:
        pass_at_n = float(any(bool(metric_fns.correct_fn(c)) for c in population))
    elif scores is not None:
        pass_at_n = float(np.any(scores >= metric_fns.correct_threshold))
    else:
        pass_at_n = nan
    diagnostic = None
    if metric_fns.diagnostic_fn is not None:
        values = [metric_fns.diagnostic_fn(c) for c in population]
        diagnostic = jax.tree.map(lambda *v: np.mean(np.asarray(v, float), axis=0), *values)
    return RSAInfo(
        mean_score,
        best_score,
        pass_at_n,
        majority_score,
        float(diversity),
        len(groups) / num,
        diagnostic,
    )
