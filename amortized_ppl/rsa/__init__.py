"""Recursive Self-Aggregation (RSA): test-time scaling by aggregating subsets of a population.

The names a user needs, by task:

- the engine over array candidates: :func:`rsa` (``T`` rounds in one scan), or the pure kernel
  :func:`build_kernel` (``init``/``step``) with :class:`RSAState`, :class:`RSAInfo`,
  :class:`RSAResult`;
- the engine over arbitrary Python objects (LLM outputs): :func:`rsa_host`, with the prompts and
  adapter of :class:`LLMAggregator`;
- the metrics alone: :func:`population_metrics`, :func:`population_metrics_host`;
- a verifiable synthetic task with known answers: :class:`SyntheticReasoning`.

References:
    Venkatraman, S. et al. (2025). Recursive Self-Aggregation Unlocks Deep Thinking in Large
    Language Models. arXiv:2509.26626.
"""

from amortized_ppl.rsa.engine import (
    RSAKernel,
    RSAResult,
    RSAState,
    build_kernel,
    host_seed_sequence,
    rsa,
    rsa_host,
    sample_subsets,
)
from amortized_ppl.rsa.llm import (
    AGGREGATION_TEMPLATE,
    GENERATION_TEMPLATE,
    REFINEMENT_TEMPLATE,
    LLMAggregator,
    format_candidates,
    last_boxed_answer,
)
from amortized_ppl.rsa.metrics import (
    MetricFns,
    RSAInfo,
    hamming_distance,
    population_metrics,
    population_metrics_host,
)
from amortized_ppl.rsa.testbed import SyntheticReasoning

__all__ = [
    "AGGREGATION_TEMPLATE",
    "GENERATION_TEMPLATE",
    "LLMAggregator",
    "MetricFns",
    "REFINEMENT_TEMPLATE",
    "RSAInfo",
    "RSAKernel",
    "RSAResult",
    "RSAState",
    "SyntheticReasoning",
    "build_kernel",
    "format_candidates",
    "hamming_distance",
    "host_seed_sequence",
    "last_boxed_answer",
    "population_metrics",
    "population_metrics_host",
    "rsa",
    "rsa_host",
    "sample_subsets",
]
