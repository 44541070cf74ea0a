"""Iterative amortized inference: a learned update refines a posterior over mini-batches.

The engine is :class:`~amortized_ppl.engines.IterativePosterior` (its NumPyro guides are
``AutoIterativeAmortizedNormal`` and ``AutoIterativeAmortizedMultivariateNormal``); this package
holds the update kernel, the passes over a data set, training, streaming refinement, the
plain-SVI baseline and a flow state refined over mini-batches (``flow_refine``).
"""

from amortized_ppl.iterative.flow_state import (
    FlowRefineState,
    default_optimizer,
    flow_refine,
    identity_flow_state,
)
from amortized_ppl.iterative.kernel import (
    IterativeInfo,
    IterativeState,
    base_schedule,
    build_kernel,
    cubature_points,
    curvature,
    natural_gradient_step,
)
from amortized_ppl.iterative.network import UpdateNetwork
from amortized_ppl.iterative.passes import batch_at, pass_order, run_passes, steps_per_pass
from amortized_ppl.iterative.refine import (
    RefineError,
    RefineResult,
    refine,
    refine_stream,
    sample_state,
    state_change,
    warm_start_state,
)
from amortized_ppl.iterative.svi import SVIState, svi_refine
from amortized_ppl.iterative.train import (
    IterativeFitResult,
    IterativeTrainState,
    TrainingSize,
    build_iterative_train_kernel,
    fit_iterative,
    training_sizes,
)

__all__ = [
    "FlowRefineState",
    "IterativeFitResult",
    "IterativeInfo",
    "IterativeState",
    "IterativeTrainState",
    "RefineError",
    "RefineResult",
    "SVIState",
    "TrainingSize",
    "UpdateNetwork",
    "base_schedule",
    "batch_at",
    "build_iterative_train_kernel",
    "build_kernel",
    "cubature_points",
    "curvature",
    "default_optimizer",
    "fit_iterative",
    "flow_refine",
    "identity_flow_state",
    "natural_gradient_step",
    "pass_order",
    "refine",
    "refine_stream",
    "run_passes",
    "sample_state",
    "state_change",
    "steps_per_pass",
    "svi_refine",
    "training_sizes",
    "warm_start_state",
]
