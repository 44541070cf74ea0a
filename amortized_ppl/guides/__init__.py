"""NumPyro guides whose posterior is amortized over data sets."""

from amortized_ppl.guides.amortized import (
    AutoAmortizedGuide,
    AutoAmortizedMultivariateNormal,
    AutoAmortizedNormal,
)

__all__ = ["AutoAmortizedGuide", "AutoAmortizedMultivariateNormal", "AutoAmortizedNormal"]
