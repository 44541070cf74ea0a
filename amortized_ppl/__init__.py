"""amortized-ppl: amortized and iterative amortized inference for NumPyro models."""

from amortized_ppl._version import __version__
from amortized_ppl.diagnostics import fit_ood_detector, sbc, to_inference_data
from amortized_ppl.guides import (
    AutoAmortizedGuide,
    AutoAmortizedMultivariateNormal,
    AutoAmortizedNormal,
    AutoIterativeAmortizedGuide,
    AutoIterativeAmortizedMultivariateNormal,
    AutoIterativeAmortizedNormal,
)
from amortized_ppl.iterative.refine import RefineResult, refine, refine_stream
from amortized_ppl.iterative.train import IterativeFitResult, fit_iterative
from amortized_ppl.ladder import LadderResult, trust_ladder
from amortized_ppl.losses import (
    AmortizedELBO,
    ForwardKL,
    MixedLoss,
    amortized_elbo,
    forward_kl,
    mixed_loss,
)
from amortized_ppl.reference import ReferenceResult, reference_posterior
from amortized_ppl.train import FitResult, fit

__all__ = [
    "AmortizedELBO",
    "AutoAmortizedGuide",
    "AutoAmortizedMultivariateNormal",
    "AutoAmortizedNormal",
    "AutoIterativeAmortizedGuide",
    "AutoIterativeAmortizedMultivariateNormal",
    "AutoIterativeAmortizedNormal",
    "FitResult",
    "ForwardKL",
    "IterativeFitResult",
    "LadderResult",
    "MixedLoss",
    "RefineResult",
    "ReferenceResult",
    "__version__",
    "amortized_elbo",
    "fit",
    "fit_iterative",
    "fit_ood_detector",
    "forward_kl",
    "mixed_loss",
    "reference_posterior",
    "refine",
    "refine_stream",
    "sbc",
    "to_inference_data",
    "trust_ladder",
]
