"""RSA with a language model: prompts for generation, self-refinement and aggregation.

:class:`LLMAggregator` turns any text-completion client into RSA's two functions for
:func:`~amortized_ppl.rsa.rsa_host`. The client is a plain callable
``complete_fn(prompt: str) -> str`` that the user supplies (an HTTP API, a local vLLM engine, a
cache); this module makes no network call and imports no client library. The three prompts:

- **generation** (round 0): the problem, and a request to reason step by step;
- **self-refinement** (``K = 1``): the problem and one candidate, with a request to review it and
  write an improved solution;
- **aggregation** (``K > 1``): the problem and the ``K`` candidates, numbered, with a warning that
  they may contain errors and a request to combine their correct parts into one better solution
  rather than take the most common answer.

The wording is ours (the paper's is in its reference code); each template is a ``str.format``
pattern with the fields ``{problem}``, ``{candidates}`` and ``{num_candidates}`` and can be
replaced. Majority voting and diversity compare the answers that ``extract_answer_fn`` takes from
each text (the whole text without one): :func:`last_boxed_answer` reads the ``\\boxed{...}``
convention that the default templates ask for.

References:
    Venkatraman, S. et al. (2025). Recursive Self-Aggregation Unlocks Deep Thinking in Large
    Language Models. arXiv:2509.26626. Reference code: github.com/HyperPotatoNeo/RSA.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import numpy as np

from amortized_ppl.rsa.engine import RSAResult, rsa_host

__all__ = [
    "AGGREGATION_TEMPLATE",
    "GENERATION_TEMPLATE",
    "LLMAggregator",
    "REFINEMENT_TEMPLATE",
    "format_candidates",
    "last_boxed_answer",
]

_ANSWER_REQUEST = "End with the final answer alone, written as \\boxed{{answer}}."

GENERATION_TEMPLATE = (
    "Solve the problem below. Work through it step by step, checking each step before you "
    "rely on it. " + _ANSWER_REQUEST + "\n\n"
    "Problem:\n{problem}\n"
)
"""Round 0: one independent attempt at the problem."""

REFINEMENT_TEMPLATE = (
    "Below are a problem and a candidate solution to it. The candidate may be wrong in places. "
    "Review it step by step, correct whatever is mistaken or missing, and write an improved, "
    "complete solution of your own. " + _ANSWER_REQUEST + "\n\n"
    "Problem:\n{problem}\n\n"
    "{candidates}\n"
)
"""``K = 1``: plain self-refinement of one candidate."""

AGGREGATION_TEMPLATE = (
    "Below are a problem and {num_candidates} candidate solutions to it. They may contain "
    "errors and may disagree with each other. Compare their reasoning, decide which steps hold "
    "up, and combine the correct parts into a single solution that is better than any of them. "
    "Do not just adopt the most frequent answer: a minority may be right. "
    + _ANSWER_REQUEST
    + "\n\n"
    "Problem:\n{problem}\n\n"
    "{candidates}\n"
)
"""``K > 1``: aggregation of several candidates into one."""


def format_candidates(candidates: Sequence[str]) -> str:
    """The candidates as numbered blocks (``Candidate 1``, ...), each text verbatim."""
    if len(candidates) == 1:
        return f"--- Candidate solution ---\n{candidates[0]}\n--- End of candidate ---"
    return "\n\n".join(
        f"--- Candidate {i} ---\n{text}\n--- End of candidate {i} ---"
        for i, text in enumerate(candidates, start=1)
    )


def last_boxed_answer(text: str) -> str | None:
    """The contents of the last ``\\boxed{...}`` in ``text`` (braces balanced), stripped, or
    ``None`` when there is none or it is not closed."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            if depth == 0:
                return text[begin:i].strip()
            depth -= 1
    return None


def _check_template(template: Any, name: str, fields: tuple[str, ...]) -> str:
    if not isinstance(template, str):
        raise TypeError(f"{name}: expected a str.format template, got {type(template).__name__}.")
    try:
        template.format(problem="", candidates="", num_candidates=0)
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(
            f"{name}: expected a str.format template with only the fields {{problem}}, "
            f"{{candidates}} and {{num_candidates}}, got one that fails to format ({error!r})."
        ) from None
    missing = [field for field in fields if "{" + field + "}" not in template]
    if missing:
        raise ValueError(f"{name}: expected the field(s) {missing} in the template, got none.")
    return template


@dataclasses.dataclass(frozen=True)
class LLMAggregator:
    """RSA's generator and aggregator for one problem, through a user-supplied LLM client.

    Attributes:
        complete_fn: ``prompt -> completion``, the user's client (called once per candidate,
            ``N T`` times per run; sampling settings such as the temperature are the client's).
        problem: the problem statement.
        extract_answer_fn: ``completion -> answer`` compared by majority voting and diversity
            (e.g. :func:`last_boxed_answer`), or ``None`` to compare whole completions.
        generation_template, refinement_template, aggregation_template: the prompts (see the
            module); the two last are chosen by ``K``.

    Examples:
        >>> def complete_fn(prompt):  # a stand-in for a real client
        ...     return "... so the answer is \\\\boxed{4}"
        >>> llm = LLMAggregator(complete_fn, "What is 2 + 2?",
        ...                     extract_answer_fn=last_boxed_answer)
        >>> result = llm.run(jax.random.key(0), population_size=4, subset_size=2, num_rounds=3,
        ...                  score_fn=lambda text: float(last_boxed_answer(text) == "4"))
        >>> result.info.mean_score.tolist()
        [1.0, 1.0, 1.0]
    """

    complete_fn: Callable[[str], str]
    problem: str
    extract_answer_fn: Callable[[str], Any] | None = None
    generation_template: str = GENERATION_TEMPLATE
    refinement_template: str = REFINEMENT_TEMPLATE
    aggregation_template: str = AGGREGATION_TEMPLATE

    def __post_init__(self):
        if not callable(self.complete_fn):
            raise TypeError(
                f"complete_fn: expected a callable prompt -> str, got "
                f"{type(self.complete_fn).__name__}."
            )
        if not isinstance(self.problem, str):
            raise TypeError(f"problem: expected a str, got {type(self.problem).__name__}.")
        if self.extract_answer_fn is not None and not callable(self.extract_answer_fn):
            raise TypeError(
                f"extract_answer_fn: expected a callable or None, got "
                f"{type(self.extract_answer_fn).__name__}."
            )
        _check_template(self.generation_template, "generation_template", ("problem",))
        _check_template(self.refinement_template, "refinement_template", ("problem", "candidates"))
        _check_template(
            self.aggregation_template, "aggregation_template", ("problem", "candidates")
        )

    # ---------------------------------------------------------------------------- prompts
    def generation_prompt(self) -> str:
        """The prompt of a first-generation candidate."""
        return self.generation_template.format(
            problem=self.problem, candidates="", num_candidates=0
        )

    def aggregation_prompt(self, candidates: Sequence[str]) -> str:
        """The prompt that turns ``candidates`` into one: self-refinement for one candidate,
        aggregation for several."""
        candidates = list(candidates)
        if not candidates:
            raise ValueError("candidates: expected at least one candidate, got none.")
        template = self.refinement_template if len(candidates) == 1 else self.aggregation_template
        return template.format(
            problem=self.problem,
            candidates=format_candidates(candidates),
            num_candidates=len(candidates),
        )

    # ------------------------------------------------------------- RSA's host functions
    def _complete(self, prompt: str) -> str:
        text = self.complete_fn(prompt)
        if not isinstance(text, str):
            raise TypeError(f"complete_fn: expected a str completion, got {type(text).__name__}.")
        return text

    def generate_fn(self, rng: np.random.Generator | None = None) -> str:
        """One first-generation candidate (``rsa_host``'s ``generate_fn``; ``rng`` unused)."""
        return self._complete(self.generation_prompt())

    def aggregate_fn(self, rng: np.random.Generator | None, subset: Sequence[str]) -> str:
        """One candidate from ``subset`` (``rsa_host``'s ``aggregate_fn``; ``rng`` unused)."""
        return self._complete(self.aggregation_prompt(subset))

    def run(
        self,
        key: jax.Array,
        *,
        population_size: int = 16,
        subset_size: int = 4,
        num_rounds: int = 10,
        score_fn: Callable[[str], float] | None = None,
        correct_fn: Callable[[str], bool] | None = None,
    ) -> RSAResult:
        """Run :func:`~amortized_ppl.rsa.rsa_host` on this problem (the paper's defaults
        ``N = 16``, ``K = 4``, ``T = 10``), voting on ``extract_answer_fn``'s answers.

        ``key`` fixes the subsets; the completions are as random as the client makes them.
        """
        return rsa_host(
            key,
            self.generate_fn,
            self.aggregate_fn,
            population_size=population_size,
            subset_size=subset_size,
            num_rounds=num_rounds,
            score_fn=score_fn,
            correct_fn=correct_fn,
            answer_fn=self.extract_answer_fn,
        )
