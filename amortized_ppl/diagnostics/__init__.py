"""Diagnostics: ArviZ conversion, accuracy metrics and distances to a reference, simulation-based
calibration (SBC, TARP), a local check at given observations (L-C2ST), importance weights with
PSIS, the evidence by importance sampling, out-of-distribution flags, and plots."""

from amortized_ppl.diagnostics.arviz import LAYOUTS, model_dims, summary, to_inference_data
from amortized_ppl.diagnostics.c2st import c2st, c2st_sbibm
from amortized_ppl.diagnostics.distances import DistanceReport, compare_to_reference
from amortized_ppl.diagnostics.evidence import (
    EvidenceResult,
    evidence_from_log_weights,
    log_evidence,
)
from amortized_ppl.diagnostics.importance import (
    ImportanceResult,
    importance_weights,
    resample_draws,
)
from amortized_ppl.diagnostics.inference_data import (
    guide_inference_data,
    reference_inference_data,
)
from amortized_ppl.diagnostics.lc2st import LC2STResult, lc2st
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
from amortized_ppl.diagnostics.mmd import median_bandwidth, mmd, mmd_test
from amortized_ppl.diagnostics.ood import OODDetector, fit_ood_detector, ood_pvalues
from amortized_ppl.diagnostics.psis import PSISResult, importance_resample, khat_threshold, psis
from amortized_ppl.diagnostics.sbc import SBCResult, perturb_posterior, sbc
from amortized_ppl.diagnostics.tarp import TARPResult, tarp

__all__ = [
    "accuracy_report",
    "AccuracyReport",
    "c2st",
    "c2st_sbibm",
    "compare_to_reference",
    "DistanceReport",
    "evidence_from_log_weights",
    "EvidenceResult",
    "fit_ood_detector",
    "flatten_draws",
    "gaussian_moments_from_draws",
    "GaussianMoments",
    "guide_inference_data",
    "importance_resample",
    "importance_weights",
    "ImportanceResult",
    "interval_coverage",
    "khat_threshold",
    "LAYOUTS",
    "lc2st",
    "LC2STResult",
    "log_evidence",
    "median_bandwidth",
    "mmd",
    "mmd_test",
    "model_dims",
    "moment_errors",
    "MomentErrors",
    "ood_pvalues",
    "OODDetector",
    "perturb_posterior",
    "psis",
    "PSISResult",
    "tarp",
    "TARPResult",
    "reference_inference_data",
    "resample_draws",
    "sbc",
    "SBCResult",
    "SD_RATIO_BOUNDS",
    "summary",
    "to_inference_data",
]
