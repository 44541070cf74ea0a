"""In-context learners in the three regimes, bottleneck latents, and prequential code length.

- :mod:`~amortized_ppl.icl.tasks`: task families as values and a sampler of padded task batches
  (in-distribution, *wide* and *far* queries).
- :mod:`~amortized_ppl.icl.predictor`: the predictor protocol and the exact Bayesian linear
  predictive.
- :mod:`~amortized_ppl.icl.parametric`: the parametric regime, a guide's posterior predicting
  through the model's likelihood.
- :mod:`~amortized_ppl.icl.prequential`: prequential code length of any predictor.
- :mod:`~amortized_ppl.icl.iterative`: the explicit learner refined over mini-batches of context.
- :mod:`~amortized_ppl.icl.sgd_learner`: the baseline, MLPs trained by Adam on each prefix.
- :mod:`~amortized_ppl.icl.transformer`: a Transformer under an explicit mask, and the masks.
- :mod:`~amortized_ppl.icl.implicit`: the implicit learner (a Transformer over context and
  queries).
- :mod:`~amortized_ppl.icl.explicit`: the explicit learner (a CLS bottleneck ``z``, predictors
  from ``z``, a linear probe).
- :mod:`~amortized_ppl.icl.train`: a pure training kernel on the one driver, and evaluation.
"""

from amortized_ppl.icl.explicit import (
    PREDICTORS,
    ContextEncoder,
    ExplicitLearner,
    KnownLinearPredictor,
    MLPPredictor,
    TransformerPredictor,
    build_explicit_learner,
)
from amortized_ppl.icl.implicit import ImplicitLearner
from amortized_ppl.icl.iterative import (
    ContextState,
    IterativeExplicitLearner,
    build_iterative_learner,
    stream_context,
)
from amortized_ppl.icl.parametric import parametric_moments
from amortized_ppl.icl.predictor import (
    LogPredictiveFn,
    as_log_predictive,
    bayesian_linear_predictor,
    gaussian_log_density,
)
from amortized_ppl.icl.prequential import PrequentialResult, prequential_code_length
from amortized_ppl.icl.sgd_learner import (
    SGDLearner,
    log_spaced_boundaries,
    sgd_prequential_code_length,
)
from amortized_ppl.icl.tasks import (
    QUERY_SHIFTS,
    TaskBatch,
    TaskFamily,
    linear_regression,
    logistic_classification,
    random_mlp,
    sample_tasks,
    shift_queries,
    sinusoid,
)
from amortized_ppl.icl.train import (
    ICLFitResult,
    ICLTrainInfo,
    ICLTrainState,
    build_icl_train_kernel,
    evaluate_learner,
    fit_icl,
    icl_loss,
)
from amortized_ppl.icl.transformer import (
    MaskedTransformer,
    bottleneck_attention_mask,
    implicit_attention_mask,
    latent_query_attention_mask,
)

__all__ = [
    "ContextState",
    "IterativeExplicitLearner",
    "build_iterative_learner",
    "stream_context",
    "PREDICTORS",
    "QUERY_SHIFTS",
    "ContextEncoder",
    "ExplicitLearner",
    "ICLFitResult",
    "ICLTrainInfo",
    "ICLTrainState",
    "ImplicitLearner",
    "KnownLinearPredictor",
    "LogPredictiveFn",
    "MLPPredictor",
    "MaskedTransformer",
    "PrequentialResult",
    "TaskBatch",
    "TaskFamily",
    "TransformerPredictor",
    "as_log_predictive",
    "bayesian_linear_predictor",
    "bottleneck_attention_mask",
    "build_explicit_learner",
    "build_icl_train_kernel",
    "evaluate_learner",
    "fit_icl",
    "icl_loss",
    "implicit_attention_mask",
    "latent_query_attention_mask",
    "gaussian_log_density",
    "linear_regression",
    "logistic_classification",
    "parametric_moments",
    "prequential_code_length",
    "SGDLearner",
    "log_spaced_boundaries",
    "sgd_prequential_code_length",
    "random_mlp",
    "sample_tasks",
    "shift_queries",
    "sinusoid",
]
