"""The NumPyro-facing guides: one adapter (:class:`AutoAmortized`) over every posterior engine."""

from amortized_ppl.guides.amortized import (
    AutoAmortized,
    AutoAmortizedFlow,
    AutoAmortizedMultivariateNormal,
    AutoAmortizedNormal,
    AutoIterativeAmortizedMultivariateNormal,
    AutoIterativeAmortizedNormal,
)

__all__ = [
    "AutoAmortized",
    "AutoAmortizedFlow",
    "AutoAmortizedMultivariateNormal",
    "AutoAmortizedNormal",
    "AutoIterativeAmortizedMultivariateNormal",
    "AutoIterativeAmortizedNormal",
]
