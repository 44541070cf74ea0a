"""The NumPyro-facing guides: one adapter (:class:`AutoAmortized`) over every posterior engine."""

from amortized_ppl.guides.amortized import (
    AutoAmortized,
    AutoAmortizedMultivariateNormal,
    AutoAmortizedNormal,
    AutoIterativeAmortizedMultivariateNormal,
    AutoIterativeAmortizedNormal,
)

__all__ = [
    "AutoAmortized",
    "AutoAmortizedMultivariateNormal",
    "AutoAmortizedNormal",
    "AutoIterativeAmortizedMultivariateNormal",
    "AutoIterativeAmortizedNormal",
]
