"""Diagnostics: ArviZ conversion of guide and reference draws, and accuracy metrics."""

from amortized_ppl.diagnostics.arviz import LAYOUTS, model_dims, to_inference_data
from amortized_ppl.diagnostics.metrics import (
    SD_RATIO_BOUNDS,
    AccuracyReport,
    GaussianMoments,
    MomentErrors,
    accuracy_report,
    flatten_draws,
    gaussian_moments_from_draws,
    interval_coverage,
    moment_errors,
)

__all__ = [
    "LAYOUTS",
    "SD_RATIO_BOUNDS",
    "AccuracyReport",
    "GaussianMoments",
    "MomentErrors",
    "accuracy_report",
    "flatten_draws",
    "gaussian_moments_from_draws",
    "interval_coverage",
    "model_dims",
    "moment_errors",
    "to_inference_data",
]
