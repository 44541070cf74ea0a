"""Hierarchical models: amortized global and local posteriors over groups of observations.

A model with global latents, a plate of groups with local latents and a nested plate of
observations (padded, with a mask) is read by :func:`inspect_hierarchical_problem`; a
:class:`HierarchicalNetwork` (groups as sets of sets) is trained by :func:`fit_hierarchical`;
:func:`sample_hierarchical` draws from it, optionally with per-group Newton steps on the model's
density and importance resampling.
"""

from amortized_ppl.hierarchy.checks import (
    constrained_draws,
    hierarchical_inference_data,
    hierarchical_sbc,
    shrink_draws,
)
from amortized_ppl.hierarchy.groups import pad_groups, unpad_groups
from amortized_ppl.hierarchy.ladder import HierarchicalLadder, hierarchical_trust_ladder
from amortized_ppl.hierarchy.layout import constrain, flatten, log_joint
from amortized_ppl.hierarchy.marginal import (
    GroupLaplace,
    MarginalFit,
    group_laplace,
    log_marginal,
    log_marginal_derivatives,
    marginal_newton,
)
from amortized_ppl.hierarchy.network import HierarchicalNetwork
from amortized_ppl.hierarchy.posterior import (
    HierarchicalDraws,
    check_data,
    conditional_locals,
    fit_marginal,
    network_starts,
    sample_hierarchical,
)
from amortized_ppl.hierarchy.problem import HierarchicalProblem, inspect_hierarchical_problem
from amortized_ppl.hierarchy.streaming import (
    StreamedPosterior,
    group_posteriors,
    stream_posterior,
)
from amortized_ppl.hierarchy.structure import (
    HierarchySite,
    HierarchyStructure,
    inspect_hierarchy,
)
from amortized_ppl.hierarchy.train import fit_hierarchical, hierarchical_nll

__all__ = [
    "HierarchicalDraws",
    "HierarchicalLadder",
    "HierarchicalNetwork",
    "HierarchicalProblem",
    "HierarchySite",
    "StreamedPosterior",
    "HierarchyStructure",
    "check_data",
    "conditional_locals",
    "fit_marginal",
    "GroupLaplace",
    "MarginalFit",
    "group_laplace",
    "group_posteriors",
    "log_marginal",
    "log_marginal_derivatives",
    "marginal_newton",
    "network_starts",
    "constrain",
    "constrained_draws",
    "fit_hierarchical",
    "flatten",
    "hierarchical_inference_data",
    "hierarchical_nll",
    "hierarchical_sbc",
    "hierarchical_trust_ladder",
    "inspect_hierarchical_problem",
    "inspect_hierarchy",
    "log_joint",
    "pad_groups",
    "sample_hierarchical",
    "shrink_draws",
    "stream_posterior",
    "unpad_groups",
]
