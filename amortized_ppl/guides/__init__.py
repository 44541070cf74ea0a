"""NumPyro guides whose posterior is amortized over data sets."""

from amortized_ppl.guides.amortized import (
    AutoAmortizedGuide,
    AutoAmortizedMultivariateNormal,
    AutoAmortizedNormal,
)
from amortized_ppl.guides.discrete import AmortizedFactorGuide
from amortized_ppl.guides.iterative import (
    AutoIterativeAmortizedGuide,
    AutoIterativeAmortizedMultivariateNormal,
    AutoIterativeAmortizedNormal,
)

__all__ = [
    "AmortizedFactorGuide",
    "AutoAmortizedGuide",
    "AutoAmortizedMultivariateNormal",
    "AutoAmortizedNormal",
    "AutoIterativeAmortizedGuide",
    "AutoIterativeAmortizedMultivariateNormal",
    "AutoIterativeAmortizedNormal",
]
