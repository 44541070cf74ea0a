"""Diffusion samplers for diffusion-posterior inference (relative trajectory balance).

Trajectories run ``x_0`` (noise) ``-> ... -> x_N`` (data), the GFlowNet convention; see
:mod:`amortized_ppl.diffusion.sampler` for the kernels and schedules and
:mod:`amortized_ppl.diffusion.prior` for prior diffusions (exact Gaussian-mixture drift,
training on prior samples).
"""

from amortized_ppl.diffusion.prior import (
    PriorFitResult,
    PriorTrainState,
    build_prior_kernel,
    denoising_loss,
    fit_prior_diffusion,
    gmm_exact_drift,
    gmm_posterior_mean,
)
from amortized_ppl.diffusion.sampler import (
    DiffusionSchedule,
    DriftNetwork,
    Trajectory,
    backtrack,
    backward_log_prob,
    brownian_bridge_schedule,
    initial_log_prob,
    noising_trajectories,
    sample_trajectories,
    trajectory_log_prob,
    vp_schedule,
)

__all__ = [
    "DiffusionSchedule",
    "DriftNetwork",
    "PriorFitResult",
    "PriorTrainState",
    "Trajectory",
    "backtrack",
    "backward_log_prob",
    "brownian_bridge_schedule",
    "build_prior_kernel",
    "denoising_loss",
    "fit_prior_diffusion",
    "gmm_exact_drift",
    "gmm_posterior_mean",
    "initial_log_prob",
    "noising_trajectories",
    "sample_trajectories",
    "trajectory_log_prob",
    "vp_schedule",
]
