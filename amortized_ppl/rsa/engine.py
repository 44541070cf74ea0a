"""Recursive Self-Aggregation (RSA): a population of candidates improved by aggregating subsets.

RSA (Venkatraman et al., 2025) scales test-time compute in two directions at once. The first
generation draws ``N`` candidates independently from a generator (``generate_fn``). Each later
round makes ``N`` new candidates: member ``i`` draws its own subset of ``K`` indices of the
previous population, *without replacement within the subset and independently across members*,
and an aggregator (``aggregate_fn``) turns those ``K`` candidates into one, ideally keeping the
correct parts of each. ``K = 1`` is plain self-refinement; ``K = N`` lets every member see the
whole population (in its own random order). ``T`` rounds count the first generation, so they
make ``T - 1`` aggregation steps and ``N T`` calls in all. The paper's defaults are ``N = 16``,
``K = 4``, ``T = 10``; gains grow with ``K`` and ``T``, and a small ``N`` collapses the
population's diversity.

Nothing here knows what a candidate is. :func:`build_kernel` returns the blackjax-style pure pair
``init(key) -> RSAState`` and ``step(key, state) -> (RSAState, RSAInfo)`` over candidates that are
pytrees of arrays (vmapped over the population, jit-able, traced once per shape), and
:func:`rsa` runs it for ``T`` rounds with :func:`jax.lax.scan`. :func:`rsa_host` runs the same
rule in a plain Python loop over arbitrary objects (strings from an LLM: see
:mod:`amortized_ppl.rsa.llm`). Both report the metrics of :mod:`amortized_ppl.rsa.metrics` for
every round, the first generation included.

References:
    Venkatraman, S., Jain, V., Mittal, S., Shah, V., Obando-Ceron, J., Bengio, Y., Bartoldson,
    B. R., Kailkhura, B., Lajoie, G., Berseth, G., Malkin, N. and Jain, M. (2025). Recursive
    Self-Aggregation Unlocks Deep Thinking in Large Language Models. arXiv:2509.26626.
    Reference code: github.com/HyperPotatoNeo/RSA.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl._checks import check_int, check_key
from amortized_ppl.rsa.metrics import (
    MetricFns,
    RSAInfo,
    population_metrics,
    population_metrics_host,
)

__all__ = [
    "RSAKernel",
    "RSAResult",
    "RSAState",
    "build_kernel",
    "host_seed_sequence",
    "rsa",
    "rsa_host",
    "sample_subsets",
]


class RSAState(NamedTuple):
    """The population after a round.

    Attributes:
        population: a pytree whose leaves have leading axis ``N``, one candidate per row.
        round: rounds done so far minus one, int32 scalar (0 after the first generation).
    """

    population: Any
    round: jax.Array


class RSAKernel(NamedTuple):
    """The pure functions of RSA (see :func:`build_kernel`).

    Attributes:
        init: ``key -> RSAState``, the first generation.
        step: ``(key, state) -> (RSAState, RSAInfo)``, one aggregation round and the metrics of
            its new population.
        metrics: ``population -> RSAInfo``, the metrics of any population (the first
            generation's, for instance).
    """

    init: Callable[[jax.Array], RSAState]
    step: Callable[[jax.Array, RSAState], tuple[RSAState, RSAInfo]]
    metrics: Callable[[Any], RSAInfo]


class RSAResult(NamedTuple):
    """The outcome of ``T`` rounds.

    Attributes:
        population: the last round's population (a pytree with leading axis ``N`` from
            :func:`rsa`, a list of ``N`` objects from :func:`rsa_host`).
        info: an :class:`RSAInfo` whose fields have shape ``(T,)``, round 0 (the first
            generation) first.
    """

    population: Any
    info: RSAInfo


def _check_sizes(population_size: Any, subset_size: Any) -> tuple[int, int]:
    num = check_int(population_size, "population_size")
    size = check_int(subset_size, "subset_size")
    if size > num:
        raise ValueError(f"subset_size: expected an int <= population_size ({num}), got {size}.")
    return num, size


def _check_callable(fn: Any, name: str, *, optional: bool = False) -> None:
    if (fn is None and not optional) or (fn is not None and not callable(fn)):
        raise TypeError(f"{name}: expected a callable, got {type(fn).__name__}.")


def _metric_fns(
    score_fn, correct_fn, correct_threshold, answer_fn, distance_fn, diagnostic_fn
) -> MetricFns:
    for fn, name in (
        (score_fn, "score_fn"),
        (correct_fn, "correct_fn"),
        (answer_fn, "answer_fn"),
        (distance_fn, "distance_fn"),
        (diagnostic_fn, "diagnostic_fn"),
    ):
        _check_callable(fn, name, optional=True)
    try:
        threshold = float(correct_threshold)
    except (TypeError, ValueError):
        raise TypeError(
            f"correct_threshold: expected a float, got {correct_threshold!r}."
        ) from None
    return MetricFns(score_fn, correct_fn, threshold, answer_fn, distance_fn, diagnostic_fn)


def sample_subsets(key: jax.Array, population_size: int, subset_size: int) -> jax.Array:
    """Draw each of ``N`` members' subset of ``K`` parent indices.

    Row ``i`` holds the indices of the ``K`` largest of ``N`` independent uniforms (one row of an
    ``(N, N)`` draw): a uniformly random ``K``-subset in random order, the same law as
    ``jax.random.choice(key_i, N, (K,), replace=False)``. No index repeats within a row (``top_k``
    returns distinct positions even for equal values), and rows are independent. One uniform
    draw and one ``top_k`` compile faster than ``N`` vmapped ``choice`` calls (their sort-based
    shuffles): 1.0 s against 1.6 s with XLA's default optimization, 0.05 s with the test suite's
    fast-compile flags (``N = 16``, ``K = 4``, vmapped over 256 problems, 2 busy CPUs).

    Returns:
        int32 indices in ``{0, ..., N - 1}``, shape ``(N, K)``.
    """
    num, size = _check_sizes(population_size, subset_size)
    _, indices = jax.lax.top_k(jax.random.uniform(key, (num, num)), size)
    return indices.astype(jnp.int32)


def _signature(tree: Any) -> tuple:
    return jax.tree.structure(tree), tuple(
        (leaf.shape, leaf.dtype) for leaf in jax.tree.leaves(tree)
    )


def build_kernel(
    generate_fn: Callable[[jax.Array], Any],
    aggregate_fn: Callable[[jax.Array, Any], Any],
    *,
    population_size: int,
    subset_size: int,
    score_fn: Callable[[Any], jax.Array] | None = None,
    correct_fn: Callable[[Any], jax.Array] | None = None,
    correct_threshold: float = 1.0,
    answer_fn: Callable[[Any], Any] | None = None,
    distance_fn: Callable[[Any, Any], jax.Array] | None = None,
    diagnostic_fn: Callable[[Any], Any] | None = None,
) -> RSAKernel:
    """Build the pure ``init``/``step`` pair of RSA over array candidates.

    Args:
        generate_fn: ``key -> candidate``, one draw of the base generator; a candidate is a
            pytree of arrays of fixed shapes.
        aggregate_fn: ``(key, subset) -> candidate``, where ``subset`` is the candidates' pytree
            with a leading axis of ``K``; it must return a candidate of the generator's
            structure, shapes and dtypes.
        population_size: ``N``, candidates per round.
        subset_size: ``K`` in ``{1, ..., N}``, candidates each aggregation reads.
        score_fn, correct_fn, correct_threshold, answer_fn, distance_fn, diagnostic_fn: what
            the metrics compute (:mod:`amortized_ppl.rsa.metrics`); each takes one candidate.

    Returns:
        An :class:`RSAKernel`. Its functions are pure and not jitted; ``jax.jit(kernel.step)``
        traces once per population shape.

    Raises:
        ValueError: ``N < 1``, ``K < 1`` or ``K > N``.
        TypeError: a function is not callable; at trace time, ``aggregate_fn`` returns another
            structure, shape or dtype than the population's candidates.

    Examples:
        >>> kernel = build_kernel(lambda k: jax.random.bernoulli(k, 0.6, (5,)),
        ...                       lambda k, s: jnp.mean(s, 0) > 0.5,
        ...                       population_size=8, subset_size=3,
        ...                       score_fn=lambda c: jnp.all(c).astype(float))
        >>> state = kernel.init(jax.random.key(0))
        >>> state, info = jax.jit(kernel.step)(jax.random.key(1), state)
    """
    _check_callable(generate_fn, "generate_fn")
    _check_callable(aggregate_fn, "aggregate_fn")
    num, size = _check_sizes(population_size, subset_size)
    fns = _metric_fns(
        score_fn, correct_fn, correct_threshold, answer_fn, distance_fn, diagnostic_fn
    )

    def metrics(population: Any) -> RSAInfo:
        return population_metrics(population, fns)

    def init(key: jax.Array) -> RSAState:
        population = jax.vmap(generate_fn)(jax.random.split(key, num))
        return RSAState(population, jnp.zeros((), jnp.int32))

    def step(key: jax.Array, state: RSAState) -> tuple[RSAState, RSAInfo]:
        leaves = jax.tree.leaves(state.population)
        if not leaves or any(leaf.shape[:1] != (num,) for leaf in leaves):
            raise ValueError(
                f"state.population: expected leaves with leading axis population_size = {num}, "
                f"got shapes {[leaf.shape for leaf in leaves]}."
            )
        key_subsets, key_aggregate = jax.random.split(key)
        indices = sample_subsets(key_subsets, num, size)  # (N, K)
        subsets = jax.tree.map(lambda leaf: leaf[indices], state.population)  # (N, K, ...)
        population = jax.vmap(aggregate_fn)(jax.random.split(key_aggregate, num), subsets)
        expected, got = _signature(state.population), _signature(population)
        if expected != got:
            raise TypeError(
                "aggregate_fn: expected a candidate of the generator's structure, shapes and "
                f"dtypes ({expected[0]}, {[(s[1:], str(d)) for s, d in expected[1]]}), got "
                f"({got[0]}, {[(s[1:], str(d)) for s, d in got[1]]})."
            )
        return RSAState(population, state.round + 1), metrics(population)

    return RSAKernel(init, step, metrics)


def _check_num_rounds(num_rounds: Any) -> int:
    return check_int(num_rounds, "num_rounds")


def rsa(
    key: jax.Array,
    generate_fn: Callable[[jax.Array], Any],
    aggregate_fn: Callable[[jax.Array, Any], Any],
    *,
    population_size: int,
    subset_size: int,
    num_rounds: int,
    score_fn: Callable[[Any], jax.Array] | None = None,
    correct_fn: Callable[[Any], jax.Array] | None = None,
    correct_threshold: float = 1.0,
    answer_fn: Callable[[Any], Any] | None = None,
    distance_fn: Callable[[Any, Any], jax.Array] | None = None,
    diagnostic_fn: Callable[[Any], Any] | None = None,
) -> RSAResult:
    """Run RSA for ``num_rounds`` rounds over array candidates.

    The first generation uses one half of ``key`` (:meth:`RSAKernel.init`), the ``T - 1``
    aggregation rounds a key each from the other half, in one :func:`jax.lax.scan`. The same key
    gives the same result. The function is traceable: ``jax.jit`` or ``jax.vmap`` it (over keys,
    or over problems the functions close over) to run many problems in one compiled program.

    Args:
        key: a JAX PRNG key.
        generate_fn, aggregate_fn: as in :func:`build_kernel`.
        population_size: ``N >= 1``.
        subset_size: ``K`` in ``{1, ..., N}``.
        num_rounds: ``T >= 1``, counting the first generation (``T - 1`` aggregation steps).
        score_fn, correct_fn, correct_threshold, answer_fn, distance_fn, diagnostic_fn: the
            metrics' functions (:mod:`amortized_ppl.rsa.metrics`).

    Returns:
        An :class:`RSAResult`: the final population and the metrics of every round, shape
        ``(T,)``.

    Examples:
        >>> result = rsa(jax.random.key(0), lambda k: jax.random.bernoulli(k, 0.6, (5,)),
        ...              lambda k, s: jnp.mean(s, 0) > 0.5, population_size=16,
        ...              subset_size=4, num_rounds=10,
        ...              score_fn=lambda c: jnp.all(c).astype(float))
        >>> result.info.mean_score.shape
        (10,)
    """
    key = check_key(key, "key")
    num_rounds = _check_num_rounds(num_rounds)
    kernel = build_kernel(
        generate_fn,
        aggregate_fn,
        population_size=population_size,
        subset_size=subset_size,
        score_fn=score_fn,
        correct_fn=correct_fn,
        correct_threshold=correct_threshold,
        answer_fn=answer_fn,
        distance_fn=distance_fn,
        diagnostic_fn=diagnostic_fn,
    )
    key_init, key_rounds = jax.random.split(key)
    state = kernel.init(key_init)
    first = jax.tree.map(lambda v: jnp.asarray(v)[None], kernel.metrics(state.population))
    if num_rounds == 1:
        return RSAResult(state.population, first)

    def body(state, round_key):
        return kernel.step(round_key, state)

    state, infos = jax.lax.scan(body, state, jax.random.split(key_rounds, num_rounds - 1))
    info = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), first, infos)
    return RSAResult(state.population, info)


# ----------------------------------------------------------------------------------- host side
def host_seed_sequence(key: jax.Array) -> np.random.SeedSequence:
    """The numpy ``SeedSequence`` whose entropy is a JAX key's raw words.

    The words are ``jax.random.key_data(key)`` (two uint32 for the default threefry key), so one
    JAX key seeds both variants and a key split in JAX seeds different host runs.
    """
    key = check_key(key, "key")
    words = np.asarray(jax.random.key_data(key), dtype=np.uint32).ravel()
    return np.random.SeedSequence([int(w) for w in words])


def rsa_host(
    key: jax.Array,
    generate_fn: Callable[[np.random.Generator], Any],
    aggregate_fn: Callable[[np.random.Generator, list], Any],
    *,
    population_size: int,
    subset_size: int,
    num_rounds: int,
    score_fn: Callable[[Any], float] | None = None,
    correct_fn: Callable[[Any], bool] | None = None,
    correct_threshold: float = 1.0,
    answer_fn: Callable[[Any], Any] | None = None,
    distance_fn: Callable[[Any, Any], float] | None = None,
    diagnostic_fn: Callable[[Any], Any] | None = None,
) -> RSAResult:
    """Run RSA in a Python loop over arbitrary candidates (text from an LLM, for instance).

    Randomness comes from numpy, seeded from the JAX key (:func:`host_seed_sequence`): its
    ``SeedSequence`` spawns one child per round; round 0 spawns one child per member, whose
    ``Generator`` is passed to ``generate_fn``; each later round spawns two, the first a
    ``Generator`` from which member ``i`` in turn draws its subset with
    ``rng.choice(N, K, replace=False)`` (the rule of :func:`sample_subsets`), the second one
    child per member for ``aggregate_fn``. The same key gives the same subsets and the same
    generators; the results are then deterministic if the functions are.

    Args:
        key: a JAX PRNG key (concrete, not traced).
        generate_fn: ``rng -> candidate`` with ``rng`` a ``numpy.random.Generator`` (which the
            function may ignore).
        aggregate_fn: ``(rng, subset) -> candidate`` with ``subset`` a list of ``K``
            candidates.
        population_size, subset_size, num_rounds: ``N``, ``K`` and ``T`` as in :func:`rsa`.
        score_fn, correct_fn, correct_threshold, answer_fn, distance_fn, diagnostic_fn: the
            metrics' functions, on host objects (:func:`population_metrics_host`).

    Returns:
        An :class:`RSAResult` whose population is a list of ``N`` candidates and whose info
        fields are numpy arrays of shape ``(T,)`` (``diagnostic``: leaves of shape ``(T, ...)``).
    """
    seeds = host_seed_sequence(key)
    _check_callable(generate_fn, "generate_fn")
    _check_callable(aggregate_fn, "aggregate_fn")
    num, size = _check_sizes(population_size, subset_size)
    num_rounds = _check_num_rounds(num_rounds)
    fns = _metric_fns(
        score_fn, correct_fn, correct_threshold, answer_fn, distance_fn, diagnostic_fn
    )
    round_seeds = seeds.spawn(num_rounds)
    population = [generate_fn(np.random.default_rng(s)) for s in round_seeds[0].spawn(num)]
    infos = [population_metrics_host(population, fns)]
    for round_seed in round_seeds[1:]:
        subset_seed, call_seed = round_seed.spawn(2)
        chooser = np.random.default_rng(subset_seed)
        subsets = [chooser.choice(num, size, replace=False) for _ in range(num)]
        population = [
            aggregate_fn(np.random.default_rng(s), [population[j] for j in subset])
            for s, subset in zip(call_seed.spawn(num), subsets)
        ]
        infos.append(population_metrics_host(population, fns))
    stacked = {
        name: np.asarray([getattr(info, name) for info in infos], dtype=float)
        for name in RSAInfo._fields
        if name != "diagnostic"
    }
    diagnostic = None
    if fns.diagnostic_fn is not None:
        diagnostic = jax.tree.map(lambda *v: np.stack(v), *[info.diagnostic for info in infos])
    return RSAResult(population, RSAInfo(**stacked, diagnostic=diagnostic))
