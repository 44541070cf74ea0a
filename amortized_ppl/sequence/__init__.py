"""Sequences: HMM filtering, Bayesian oracles over task families, next-token predictors.

The names a user needs, by task:

- a Bayesian HMM in NumPyro: :class:`CategoricalHMM` (a distribution over symbol sequences
  with the hidden states summed out), :func:`forward_filter`;
- the exact Bayesian predictor over a finite family of HMMs: :func:`bayes_oracle`,
  :func:`oracle_batch`;
- learned predictors and their training: :class:`NextTokenTransformer`,
  :class:`MonteCarloPredictor`, :func:`fit_sequence_model` (:func:`fit_with_held_out_loss` also
  scores a held-out batch as it trains);
- the Monte Carlo predictor's posterior head over the task factors, a value passed to it:
  :class:`FactorizedPosterior` (a categorical per factor, the default),
  :class:`AutoregressivePosterior` (the chain rule over factors: correlated factors),
  :class:`EnvironmentPosterior` (a categorical over listed environments);
- an amortized guide over a model's discrete task factors: :class:`AmortizedFactorGuide`;
- evaluation against the oracle: :func:`evaluate_predictors`, :func:`summarize` (plots in
  :mod:`amortized_ppl.sequence.plots`, imported on demand: matplotlib).

The building blocks (attention trunks, metrics by position and ambiguity, sampling helpers)
stay in their modules.
"""

from amortized_ppl.sequence.autoregressive_posterior import AutoregressivePosterior
from amortized_ppl.sequence.distributions import CategoricalHMM
from amortized_ppl.sequence.environment_posterior import EnvironmentPosterior
from amortized_ppl.sequence.factor_guide import AmortizedFactorGuide
from amortized_ppl.sequence.hmm import forward_filter
from amortized_ppl.sequence.monte_carlo import (
    JointPosteriorTargets,
    MonteCarloPredictor,
    PosteriorDrawTargets,
)
from amortized_ppl.sequence.oracle import bayes_oracle, oracle_batch
from amortized_ppl.sequence.posterior_heads import FactorizedPosterior
from amortized_ppl.sequence.study import evaluate_predictors, summarize
from amortized_ppl.sequence.train import fit_sequence_model
from amortized_ppl.sequence.transformer import NextTokenTransformer
from amortized_ppl.sequence.validation import fit_with_held_out_loss

__all__ = [
    "AmortizedFactorGuide",
    "AutoregressivePosterior",
    "CategoricalHMM",
    "EnvironmentPosterior",
    "FactorizedPosterior",
    "JointPosteriorTargets",
    "MonteCarloPredictor",
    "NextTokenTransformer",
    "PosteriorDrawTargets",
    "bayes_oracle",
    "evaluate_predictors",
    "fit_sequence_model",
    "fit_with_held_out_loss",
    "forward_filter",
    "oracle_batch",
    "summarize",
]
