"""Recursive Self-Aggregation (RSA): test-time scaling by aggregating subsets of a population.

The names a user needs, by task:

- the engine over array candidates: :func:`rsa` (``T`` rounds in one scan), or the pure kernel
  :func:`build_kernel` (``init``/``step``) with :class:`RSAState`, :class:`RSAInfo`,
  :class:`RSAResult`;
- the engine over arbitrary Python objects (LLM outputs): :func:`rsa_host`, with the prompts and
  adapter of :class:`LLMAggregator`;
- the metrics alone: :func:`population_metrics`, :func:`population_metrics_host`;
- a verifiable synthetic task with known answers: :class:`SyntheticReasoning`;
- posterior candidates (Gaussian states over a model's latents): :class:`GaussianCandidate`,
  the first generation from an iterative guide (:func:`iterative_generator`), the density-based
  base aggregator (:func:`base_aggregate`), scores (:func:`build_score_fn`), the comparisons
  (:func:`mixture_moments`, :func:`pooled_importance`, :func:`best_by_score`,
  :func:`laplace_candidate`, :func:`moment_errors`), and the learned set aggregator
  (:class:`SetAggregator`, :func:`build_aggregate_fn`) with its aggregation-aware training
  (:func:`fit_aggregator`).

References:
    Venkatraman, S. et al. (2025). Recursive Self-Aggregation Unlocks Deep Thinking in Large
    Language Models. arXiv:2509.26626.
"""

from amortized_ppl.rsa.aggregator import (
    AggregatorFitResult,
    SetAggregator,
    TrainingSets,
    build_aggregate_fn,
    fit_aggregator,
    forward_kl,
    learned_aggregate,
)
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
from amortized_ppl.rsa.posterior import (
    GaussianCandidate,
    base_aggregate,
    best_by_score,
    build_score_fn,
    importance_moments,
    iterative_generator,
    laplace_candidate,
    mixture_moments,
    moment_errors,
    pooled_importance,
)
from amortized_ppl.rsa.testbed import SyntheticReasoning

__all__ = [
    "AGGREGATION_TEMPLATE",
    "AggregatorFitResult",
    "GENERATION_TEMPLATE",
    "GaussianCandidate",
    "LLMAggregator",
    "MetricFns",
    "REFINEMENT_TEMPLATE",
    "RSAInfo",
    "RSAKernel",
    "RSAResult",
    "RSAState",
    "SetAggregator",
    "SyntheticReasoning",
    "TrainingSets",
    "base_aggregate",
    "best_by_score",
    "build_aggregate_fn",
    "build_kernel",
    "build_score_fn",
    "fit_aggregator",
    "format_candidates",
    "forward_kl",
    "hamming_distance",
    "host_seed_sequence",
    "importance_moments",
    "iterative_generator",
    "laplace_candidate",
    "last_boxed_answer",
    "learned_aggregate",
    "mixture_moments",
    "moment_errors",
    "pooled_importance",
    "population_metrics",
    "population_metrics_host",
    "rsa",
    "rsa_host",
    "sample_subsets",
]
