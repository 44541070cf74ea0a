"""A verifiable synthetic reasoning task on which RSA's qualitative behaviour can be measured.

A *problem* is a chain of ``L`` steps whose correct answers lie in ``{0, ..., A - 1}``
(``problem``, int32 ``(L,)``); a *candidate* solution is an int32 vector of ``L`` step answers.
A candidate is correct when every step is (``score``: 1.0 or 0.0, so a population's mean score is
the paper's Pass@1); ``step_accuracy``, the fraction of correct steps, is the diagnostic.

The simulated model:

- **generation**: step ``l`` is correct with probability ``p_gen`` (``p_gen_hard`` for the first
  ``num_hard_steps`` steps); a wrong answer is the step's *trap* ``(answer + 1) mod A`` (the
  tempting mistake) with probability ``p_trap``, else uniform over the ``A - 1`` wrong answers;
- **aggregation** of ``K`` candidates, step by step: each of the ``c`` proposals of the correct
  answer convinces the aggregator with probability ``p_verify``, independently (so with
  probability ``1 - (1 - p_verify)^c``: checking a proposed step is easier than finding it);
  otherwise the aggregator takes the subset's plurality answer, ties broken uniformly at
  random. Then it fixes the step with probability ``p_fix`` (its own reasoning), and finally
  replaces it with probability ``p_err`` by a uniformly random answer (a fresh slip);
- for ``K = 1`` the rule is *plain self-refinement*: the plurality of one candidate, or its
  verified correct step, is the candidate's own step, so each step is copied, fixed with
  ``p_fix`` and corrupted with ``p_err``.

Why verification and a trap. With plurality alone two candidates help no more than one: a pair
agreeing on a step keeps it, a pair disagreeing is a coin flip between the two, so a step
correct with probability ``q`` in each stays correct with probability
``q^2 + q (1 - q) = q``, exactly the ``K = 1`` copy. And with plurality alone the task is either
too easy (a majority of a few candidates is right on every step after one round) or, where the
trap is the most frequent answer, made *worse* by aggregating. Real aggregation can recover a
correct minority answer from the reasoning that supports it, which is the paper's argument that
RSA beats majority voting; ``p_verify`` models that, and the hard step with a trap is where it
matters: majority voting over the first generation fails there, RSA climbs past it round by round.

The defaults (``L = 6``, ``A = 4``, one hard step, ``p_gen = 0.95``, ``p_gen_hard = 0.4``,
``p_trap = 0.9``, ``p_verify = 0.25``, ``p_fix = 0.03``, ``p_err = 0.005``) put the paper's
qualitative curves at its sizes (``N`` 4-64, ``K`` 1-8, ``T`` 1-10; measured by
``benchmarks/bench_rsa.py`` in ``benchmarks/results/rsa_testbed.json``):

- the first generation's Pass@1 is ``0.95^5 x 0.4 = 0.31``, the range of the paper's hard
  benchmarks (27% on HMMT-25 for its 4B model), and on the hard step the trap is the most
  frequent answer (``0.6 x (0.9 + 0.1 / 3) = 0.56`` against ``0.4``), so majority voting over
  a large population scores near 0 on it (0.11 at ``N = 64``);
- self-refinement (``K = 1``) gains a little: per step the wrong fraction ``u`` moves as
  ``u' = (1 - p_err)(1 - p_fix) u + p_err (A - 1) / A``, by 3.5% a round towards
  ``u* = 0.11``, so Pass@1 climbs only from 0.31 to 0.37-0.39 by ``T = 10``;
- ``K > 1`` gains more, and more with ``K``: the more correct proposals a subset holds, the more
  likely one convinces, so the hard step's accuracy grows round by round (faster for larger
  ``K``) until the plurality turns correct and the population converges; ``p_err`` then keeps
  about 2% of the candidates wrong (``1 - (1 - 0.005 x 3 / 4)^6``), the ceiling of Pass@1;
- small populations collapse: with ``N = 4`` the members' subsets overlap almost entirely, every
  member aggregates nearly the same candidates, and the population fixes on one answer per step
  within a few rounds, the trap included, so after a few rounds its diversity is below that of
  ``N = 64`` (0.027 against 0.074 at ``T = 3``, ``K = 4``) and its Pass@1 stays lower (0.78
  against 0.98 at ``T = 10``). Later a large population converges too, on the correct answers,
  and its diversity falls to the ``p_err`` floor, below the stalled small population's.

References:
    Venkatraman, S. et al. (2025). Recursive Self-Aggregation Unlocks Deep Thinking in Large
    Language Models. arXiv:2509.26626.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from amortized_ppl._checks import check_int
from amortized_ppl.rsa.engine import RSAResult, rsa

__all__ = ["SyntheticReasoning"]


def _check_probability(value, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1], got {value!r}.")
    return number


@dataclasses.dataclass(frozen=True)
class SyntheticReasoning:
    """The synthetic reasoning task (see the module): static, hashable parameters.

    Attributes:
        num_steps: ``L``, steps per problem.
        num_answers: ``A >= 2``, possible answers per step.
        num_hard_steps: how many of the steps (the first ones) are hard.
        p_gen: probability that the generator gets an ordinary step right.
        p_gen_hard: the same for a hard step.
        p_trap: probability that a wrong generated step is the step's trap
            ``(answer + 1) mod A`` (else a uniformly random wrong answer).
        p_verify: probability that one proposal of the correct step convinces the aggregator.
        p_fix: probability that an aggregation fixes a step that is still wrong.
        p_err: probability that an aggregation replaces a step by a uniformly random answer.

    Examples:
        >>> testbed = SyntheticReasoning()
        >>> result = testbed.run(jax.random.key(0), population_size=16, subset_size=4,
        ...                      num_rounds=10)
        >>> result.info.mean_score.shape, result.info.diagnostic.shape
        ((10,), (10,))
    """

    num_steps: int = 6
    num_answers: int = 4
    num_hard_steps: int = 1
    p_gen: float = 0.95
    p_gen_hard: float = 0.4
    p_trap: float = 0.9
    p_verify: float = 0.25
    p_fix: float = 0.03
    p_err: float = 0.005

    def __post_init__(self):
        object.__setattr__(self, "num_steps", check_int(self.num_steps, "num_steps"))
        object.__setattr__(self, "num_answers", check_int(self.num_answers, "num_answers", 2))
        hard = check_int(self.num_hard_steps, "num_hard_steps", 0)
        if hard > self.num_steps:
            raise ValueError(
                f"num_hard_steps: expected an int <= num_steps ({self.num_steps}), got {hard}."
            )
        object.__setattr__(self, "num_hard_steps", hard)
        for name in ("p_gen", "p_gen_hard", "p_trap", "p_verify", "p_fix", "p_err"):
            object.__setattr__(self, name, _check_probability(getattr(self, name), name))

    # ---------------------------------------------------------------------- pure functions
    def sample_problem(self, key: jax.Array) -> jax.Array:
        """A problem's correct answers, uniform in ``{0, ..., A - 1}``, int32 ``(L,)``."""
        return jax.random.randint(key, (self.num_steps,), 0, self.num_answers, jnp.int32)

    def _difficulty(self) -> tuple[jax.Array, jax.Array]:
        """Per step: the generator's probability of a correct answer and of the trap."""
        hard = jnp.arange(self.num_steps) < self.num_hard_steps
        p_correct = jnp.where(hard, self.p_gen_hard, self.p_gen)
        return p_correct, (1.0 - p_correct) * self.p_trap

    def generate(self, key: jax.Array, problem: jax.Array) -> jax.Array:
        """One candidate of the generator, int32 ``(L,)``."""
        # One uniform per step decides correct / trap / another wrong answer, a second picks
        # the wrong answer (one random draw compiles faster than several).
        u = jax.random.uniform(key, (2, self.num_steps))
        p_correct, p_trap = self._difficulty()
        shift = 1 + jnp.minimum(
            jnp.floor(u[1] * (self.num_answers - 1)).astype(jnp.int32), self.num_answers - 2
        )
        wrong = jnp.where(u[0] < p_correct + p_trap, 1, shift)
        return jnp.where(u[0] < p_correct, problem, (problem + wrong) % self.num_answers)

    def aggregate(self, key: jax.Array, subset: jax.Array, problem: jax.Array) -> jax.Array:
        """One aggregation of ``subset`` (int ``(K, L)``) into a candidate, int32 ``(L,)``."""
        num_answers = self.num_answers
        u = jax.random.uniform(key, (self.num_steps, num_answers + 4))
        counts = jnp.sum(jax.nn.one_hot(subset, num_answers, dtype=jnp.int32), axis=0)
        # Jitter in [0, 1) breaks ties uniformly without reordering unequal counts.
        plurality = jnp.argmax(counts + u[:, :num_answers], axis=-1).astype(jnp.int32)
        num_correct = jnp.take_along_axis(counts, problem[:, None], axis=-1)[:, 0]
        p_verified = 1.0 - (1.0 - self.p_verify) ** num_correct
        answer = jnp.where(u[:, num_answers] < p_verified, problem, plurality)
        answer = jnp.where(u[:, num_answers + 1] < self.p_fix, problem, answer)
        noise = jnp.floor(u[:, num_answers + 3] * num_answers).astype(jnp.int32)
        noise = jnp.minimum(noise, num_answers - 1)
        return jnp.where(u[:, num_answers + 2] < self.p_err, noise, answer)

    def score(self, candidate: jax.Array, problem: jax.Array) -> jax.Array:
        """1.0 if every step is correct, else 0.0 (float32 scalar)."""
        return jnp.all(candidate == problem).astype(jnp.float32)

    def step_accuracy(self, candidate: jax.Array, problem: jax.Array) -> jax.Array:
        """The fraction of correct steps (float32 scalar)."""
        return jnp.mean(candidate == problem, dtype=jnp.float32)

    # ------------------------------------------------------- the engine's functions, bound
    def generate_fn(self, problem: jax.Array) -> Callable[[jax.Array], jax.Array]:
        """``key -> candidate`` for one problem (RSA's ``generate_fn``)."""
        return lambda key: self.generate(key, problem)

    def aggregate_fn(self, problem: jax.Array) -> Callable[[jax.Array, jax.Array], jax.Array]:
        """``(key, subset) -> candidate`` for one problem (RSA's ``aggregate_fn``)."""
        return lambda key, subset: self.aggregate(key, subset, problem)

    def score_fn(self, problem: jax.Array) -> Callable[[jax.Array], jax.Array]:
        """``candidate -> 0/1`` for one problem (RSA's ``score_fn``)."""
        return lambda candidate: self.score(candidate, problem)

    def step_accuracy_fn(self, problem: jax.Array) -> Callable[[jax.Array], jax.Array]:
        """``candidate -> fraction of correct steps`` (RSA's ``diagnostic_fn``)."""
        return lambda candidate: self.step_accuracy(candidate, problem)

    def run(
        self, key: jax.Array, *, population_size: int, subset_size: int, num_rounds: int
    ) -> RSAResult:
        """Draw a problem from ``key`` and run :func:`~amortized_ppl.rsa.rsa` on it.

        The info's ``diagnostic`` is the population's mean step accuracy per round. Traceable:
        ``jax.vmap`` over keys runs independent problems.
        """
        key_problem, key_rsa = jax.random.split(key)
        problem = self.sample_problem(key_problem)
        return rsa(
            key_rsa,
            self.generate_fn(problem),
            self.aggregate_fn(problem),
            population_size=population_size,
            subset_size=subset_size,
            num_rounds=num_rounds,
            score_fn=self.score_fn(problem),
            diagnostic_fn=self.step_accuracy_fn(problem),
        )
