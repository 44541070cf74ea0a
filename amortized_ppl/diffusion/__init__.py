"""Diffusion posteriors for inverse problems: prior diffusions, RTB fine-tuning, DPS, ground truth.

Trajectories run ``x_0`` (noise) ``-> ... -> x_N`` (data), the GFlowNet convention.

- :mod:`~amortized_ppl.diffusion.sampler`: schedules, kernels, trajectory sampling and log-probs;
- :mod:`~amortized_ppl.diffusion.prior`: prior diffusions (exact Gaussian-mixture drift, training
  on prior samples);
- :mod:`~amortized_ppl.diffusion.rtb`, :mod:`~amortized_ppl.diffusion.fit`,
  :mod:`~amortized_ppl.diffusion.buffer`, :mod:`~amortized_ppl.diffusion.checkpoint`: relative
  trajectory balance (loss, off-policy training kernel, driver, replay buffer, checkpoints);
- :mod:`~amortized_ppl.diffusion.dps`: the diffusion-posterior-sampling baseline;
- :mod:`~amortized_ppl.diffusion.ground_truth`: blackjax tempered SMC references;
- :mod:`~amortized_ppl.diffusion.metrics` and :mod:`~amortized_ppl.diffusion.plots` (imported on
  demand: matplotlib).
"""

from amortized_ppl.diffusion.buffer import ReplayBuffer, buffer_add, buffer_init, buffer_sample
from amortized_ppl.diffusion.checkpoint import load_posterior, save_posterior
from amortized_ppl.diffusion.dps import (
    DPSSweepResult,
    denoised_estimate,
    dps_sample,
    dps_scale_sweep,
)
from amortized_ppl.diffusion.fit import RTBResult, fit_rtb, importance_log_z
from amortized_ppl.diffusion.ground_truth import (
    SMCResult,
    mixture_log_density,
    problem_reference,
    tempered_smc_posterior,
)
from amortized_ppl.diffusion.metrics import (
    PosteriorReport,
    energy_distance,
    log_evidence_estimate,
    mode_weights,
    modes_found,
    posterior_report,
    total_variation,
)
from amortized_ppl.diffusion.prior import (
    PriorFitResult,
    PriorTrainState,
    build_prior_kernel,
    denoising_loss,
    fit_prior_diffusion,
    gmm_exact_drift,
    gmm_posterior_mean,
)
from amortized_ppl.diffusion.rtb import (
    RTBConfig,
    RTBInfo,
    RTBPosterior,
    RTBState,
    build_rtb_kernel,
    log_ratio,
    posterior_log_weights,
    rtb_loss,
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
    "DPSSweepResult",
    "DiffusionSchedule",
    "DriftNetwork",
    "PosteriorReport",
    "PriorFitResult",
    "PriorTrainState",
    "RTBConfig",
    "RTBInfo",
    "RTBPosterior",
    "RTBResult",
    "RTBState",
    "ReplayBuffer",
    "SMCResult",
    "Trajectory",
    "backtrack",
    "backward_log_prob",
    "brownian_bridge_schedule",
    "buffer_add",
    "buffer_init",
    "buffer_sample",
    "build_prior_kernel",
    "build_rtb_kernel",
    "denoised_estimate",
    "denoising_loss",
    "dps_sample",
    "dps_scale_sweep",
    "energy_distance",
    "fit_prior_diffusion",
    "fit_rtb",
    "gmm_exact_drift",
    "gmm_posterior_mean",
    "importance_log_z",
    "initial_log_prob",
    "load_posterior",
    "log_evidence_estimate",
    "log_ratio",
    "mixture_log_density",
    "mode_weights",
    "modes_found",
    "noising_trajectories",
    "posterior_log_weights",
    "posterior_report",
    "problem_reference",
    "rtb_loss",
    "sample_trajectories",
    "save_posterior",
    "tempered_smc_posterior",
    "total_variation",
    "trajectory_log_prob",
    "vp_schedule",
]
