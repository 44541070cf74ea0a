"""amortized-ppl: amortized and iterative amortized inference for NumPyro models.

The layers, bottom up (see ARCHITECTURE.md): the problem (:func:`inspect_problem`), encoders and
families (recipes that build modules), engines (:class:`OneShotPosterior`,
:class:`IterativePosterior`), the one driver with its trainers (:func:`fit`,
:func:`fit_iterative`, :func:`refine`), the NumPyro adapter (:class:`AutoAmortized` and its named
variants), and the products on top (calibration, trust ladder, references, checkpoints).

The public names are imported on first use (PEP 562), so that ``import amortized_ppl`` and the
command line's ``--help`` do not start JAX; ``from amortized_ppl import fit`` works as usual.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING

from amortized_ppl._version import __version__

# Public name -> the module that defines it.
_LAZY = {
    "load_guide": "amortized_ppl.checkpoint",
    "load_params": "amortized_ppl.checkpoint",
    "save_params": "amortized_ppl.checkpoint",
    "EvidenceResult": "amortized_ppl.diagnostics",
    "fit_ood_detector": "amortized_ppl.diagnostics",
    "guide_inference_data": "amortized_ppl.diagnostics",
    "log_evidence": "amortized_ppl.diagnostics",
    "reference_inference_data": "amortized_ppl.diagnostics",
    "sbc": "amortized_ppl.diagnostics",
    "to_inference_data": "amortized_ppl.diagnostics",
    "EarlyStopping": "amortized_ppl.early_stopping",
    "PseudoObservations": "amortized_ppl.encoders",
    "SequenceEncoder": "amortized_ppl.encoders",
    "SetEncoder": "amortized_ppl.encoders",
    "IterativePosterior": "amortized_ppl.engines",
    "OneShotPosterior": "amortized_ppl.engines",
    "DiagonalNormal": "amortized_ppl.families",
    "Flow": "amortized_ppl.families",
    "GaussianFactors": "amortized_ppl.families",
    "LaplaceRefined": "amortized_ppl.families",
    "MultivariateNormal": "amortized_ppl.families",
    "AutoAmortized": "amortized_ppl.guides",
    "AutoAmortizedFlow": "amortized_ppl.guides",
    "AutoAmortizedMultivariateNormal": "amortized_ppl.guides",
    "AutoAmortizedNormal": "amortized_ppl.guides",
    "AutoIterativeAmortizedMultivariateNormal": "amortized_ppl.guides",
    "AutoIterativeAmortizedNormal": "amortized_ppl.guides",
    "RefineError": "amortized_ppl.iterative.refine",
    "RefineResult": "amortized_ppl.iterative.refine",
    "refine": "amortized_ppl.iterative.refine",
    "refine_stream": "amortized_ppl.iterative.refine",
    "sample_state": "amortized_ppl.iterative.refine",
    "IterativeFitResult": "amortized_ppl.iterative.train",
    "fit_iterative": "amortized_ppl.iterative.train",
    "LadderResult": "amortized_ppl.ladder",
    "trust_ladder": "amortized_ppl.ladder",
    "AmortizedELBO": "amortized_ppl.losses",
    "ForwardKL": "amortized_ppl.losses",
    "MixedLoss": "amortized_ppl.losses",
    "amortized_elbo": "amortized_ppl.losses",
    "forward_kl": "amortized_ppl.losses",
    "mixed_loss": "amortized_ppl.losses",
    "given": "amortized_ppl.predictive",
    "posterior_predictive": "amortized_ppl.predictive",
    "unobserve": "amortized_ppl.predictive",
    "Problem": "amortized_ppl.problem",
    "inspect_problem": "amortized_ppl.problem",
    "problem_from_data": "amortized_ppl.problem",
    "ReferenceResult": "amortized_ppl.reference",
    "reference_posterior": "amortized_ppl.reference",
    "SimulationBudget": "amortized_ppl.simulation_budget",
    "from_budget": "amortized_ppl.simulation_budget",
    "simulation_budget": "amortized_ppl.simulation_budget",
    "FitResult": "amortized_ppl.train",
    "fit": "amortized_ppl.train",
}

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
    "EvidenceResult",
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
    "ReferenceResult",
    "RefineError",
    "RefineResult",
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
    "given",
    "guide_inference_data",
    "inspect_problem",
    "load_guide",
    "load_params",
    "log_evidence",
    "mixed_loss",
    "posterior_predictive",
    "problem_from_data",
    "reference_inference_data",
    "reference_posterior",
    "refine",
    "refine_stream",
    "sample_state",
    "save_params",
    "sbc",
    "simulation_budget",
    "to_inference_data",
    "trust_ladder",
    "unobserve",
]



class _Package(types.ModuleType):
    """This package, keeping a public function over a submodule of the same name.

    Importing ``amortized_ppl.simulation_budget`` (the module) sets the package attribute of that
    name to the module, which would hide the function ``simulation_budget`` exported here (an
    eager ``__init__`` rebound it afterwards; a lazy one cannot). Such module values are not
    stored; the submodule stays importable through ``sys.modules``.
    """

    def __setattr__(self, name, value):
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        if importlib.util.find_spec(f"{__name__}.{name}") is None:  # a subpackage, as before
            raise AttributeError(f"module 'amortized_ppl' has no attribute {name!r}")
        return importlib.import_module(f"{__name__}.{name}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


if TYPE_CHECKING:  # static checkers and IDEs see the eager imports
    from amortized_ppl.checkpoint import load_guide, load_params, save_params
    from amortized_ppl.diagnostics import (
        EvidenceResult,
        fit_ood_detector,
        guide_inference_data,
        log_evidence,
        reference_inference_data,
        sbc,
        to_inference_data,
    )
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
    from amortized_ppl.predictive import given, posterior_predictive, unobserve
    from amortized_ppl.problem import Problem, inspect_problem, problem_from_data
    from amortized_ppl.reference import ReferenceResult, reference_posterior
    from amortized_ppl.simulation_budget import SimulationBudget, from_budget, simulation_budget
    from amortized_ppl.train import FitResult, fit
