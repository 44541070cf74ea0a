"""Posterior families: recipes that build a context -> q(latents) module, and stages on top.

- :class:`DiagonalNormal`, :class:`MultivariateNormal`: Gaussian families over the flat
  unconstrained latents;
- :class:`LaplaceRefined`: a stage wrapping any family, which reads the model's density (Newton
  steps to a Laplace fit) and lets the inner family correct that fit;
- :class:`Flow`: a normalizing flow (flowjax) in the whitened frame of a Gaussian family, which
  composes with :class:`LaplaceRefined` (the untrained flow is the Laplace fit); its
  ``layers="elementwise"`` uses :class:`ContextSplines` and :class:`ContextMixing`, layers set
  per data set (fast sampling);
- :class:`GaussianFactors`: a stage that solves for the Gaussian a
  :class:`~amortized_ppl.encoders.PseudoObservations` encoder's summed factors imply (network
  alone, no model density) and lets the inner family correct it;
- :class:`PriorWhitened`: a stage putting the network alone in the prior's standardized frame;
- :class:`FactorizedCategorical`: independent categoricals over discrete task factors.

See :mod:`amortized_ppl.families.base` for the interface every family module follows.
"""

from amortized_ppl.families.base import FamilyOutput, gaussian_moments, positive_scale
from amortized_ppl.families.categorical import FactorizedCategorical
from amortized_ppl.families.context_flow import ContextMixing, ContextSplines
from amortized_ppl.families.flow import Flow, FlowHead
from amortized_ppl.families.flow_posterior import FlowPosterior
from amortized_ppl.families.gaussian_factors import GaussianFactors, GaussianFactorsHead
from amortized_ppl.families.laplace import LaplaceRefined, LaplaceRefinedHead
from amortized_ppl.families.mixture_posterior import MixturePosterior
from amortized_ppl.families.mvn import MultivariateNormal, MultivariateNormalHead
from amortized_ppl.families.normal import DiagonalNormal, DiagonalNormalHead
from amortized_ppl.families.prior_whitened import PriorWhitened, PriorWhitenedHead

__all__ = [
    "ContextMixing",
    "ContextSplines",
    "DiagonalNormal",
    "DiagonalNormalHead",
    "FactorizedCategorical",
    "FamilyOutput",
    "Flow",
    "FlowHead",
    "FlowPosterior",
    "GaussianFactors",
    "GaussianFactorsHead",
    "LaplaceRefined",
    "LaplaceRefinedHead",
    "MixturePosterior",
    "MultivariateNormal",
    "MultivariateNormalHead",
    "PriorWhitened",
    "PriorWhitenedHead",
    "gaussian_moments",
    "positive_scale",
]
