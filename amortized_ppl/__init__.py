"""amortized-ppl: amortized and iterative amortized inference for NumPyro models.

The layers, bottom up (see ARCHITECTURE.md): the problem (:func:`inspect_problem`), encoders and
families (recipes that build modules), engines (:class:`OneShotPosterior`,
:class:`IterativePosterior`), the one driver with its trainers (:func:`fit`,
:func:`fit_iterative`, :func:`refine`), the NumPyro adapter (:class:`AutoAmortized` and its named
variants), and the products on top (calibration, trust ladder, references, checkpoints).
"""

from amortized_ppl._version import __version__
from amortized_ppl.checkpoint import load_guide, load_params, save_params
from amortized_ppl.diagnostics import fit_ood_detector, sbc, to_inference_data
from amortized_ppl.early_stopping import EarlyStopping
from amortized_ppl.encoders import PseudoObservations, SequenceEncoder, SetEncoder
from amortized_ppl.engines import IterativePosterior, OneShotPosterior
from amortized_ppl.families import (
    DiagonalNormal,
    Flow,
    GaussianFactors,
    LaplaceRefined,
    MultivariateNormal,
)
from amortized_ppl.guides import (
    AutoAmortized,
    AutoAmortizedFlow,
    AutoAmortizedMultivariateNormal,
    AutoAmortizedNormal,
    AutoIterativeAmortizedMultivariateNormal,
    AutoIterativeAmortizedNormal,
)
from amortized_ppl.iterative.refine import (
    RefineError,
    RefineResult,
    refine,
    refine_stream,
    sample_state,
)
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
from amortized_ppl.problem import Problem, inspect_problem, problem_from_data
from amortized_ppl.reference import ReferenceResult, reference_posterior
from amortized_ppl.simulation_budget import SimulationBudget, from_budget, simulation_budget
from amortized_ppl.train import FitResult, fit

__all__ = [
    "AmortizedELBO",
    "AutoAmortized",
    "AutoAmortizedFlow",
    "AutoAmortizedMultivariateNormal",
    "AutoAmortizedNormal",
    "AutoIterativeAmortizedMultivariateNormal",
    "AutoIterativeAmortizedNormal",
    "DiagonalNormal",
    "EarlyStopping",
    "FitResult",
    "Flow",
    "ForwardKL",
    "GaussianFactors",
    "IterativeFitResult",
    "IterativePosterior",
    "LadderResult",
    "LaplaceRefined",
    "MixedLoss",
    "MultivariateNormal",
    "OneShotPosterior",
    "Problem",
    "PseudoObservations",
    "RefineError",
    "RefineResult",
    "ReferenceResult",
    "SequenceEncoder",
    "SetEncoder",
    "SimulationBudget",
    "__version__",
    "amortized_elbo",
    "fit",
    "fit_iterative",
    "fit_ood_detector",
    "forward_kl",
    "from_budget",
    "inspect_problem",
    "load_guide",
    "load_params",
    "mixed_loss",
    "problem_from_data",
    "reference_posterior",
    "refine",
    "refine_stream",
    "sample_state",
    "save_params",
    "sbc",
    "simulation_budget",
    "to_inference_data",
    "trust_ladder",
]
