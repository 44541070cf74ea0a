"""Diffusion posteriors for inverse problems: prior diffusions, RTB fine-tuning, DPS, ground truth.

Trajectories run ``x_0`` (noise) ``-> ... -> x_N`` (data), the GFlowNet convention.

- :mod:`~amortized_ppl.diffusion.sampler`: schedules, kernels, trajectory sampling and log-probs;
- :mod:`~amortized_ppl.diffusion.prior`: prior diffusions (exact Gaussian-mixture drift, training
  on prior samples);
- :mod:`~amortized_ppl.diffusion.rtb`: relative trajectory balance (the posterior, the loss, the
  pure training kernel, :func:`tempering`, :func:`sample_posterior` for a posterior with learned
  noise); :mod:`~amortized_ppl.diffusion.sources`: its off-policy sources (a prioritized replay
  buffer, :mod:`~amortized_ppl.diffusion.buffer`, or joint samples);
  :mod:`~amortized_ppl.diffusion.fit`: build and run it; :mod:`~amortized_ppl.diffusion.checkpoint`;
- :mod:`~amortized_ppl.diffusion.kl_rl`: the on-policy KL-regularized RL baseline on RTB's
  posterior (``build_rtb(..., kernel=build_kl_rl_kernel)``);
- :mod:`~amortized_ppl.diffusion.dps`: the diffusion-posterior-sampling baseline;
- :mod:`~amortized_ppl.diffusion.ground_truth`: blackjax tempered SMC references;
- :mod:`~amortized_ppl.diffusion.metrics` and :mod:`~amortized_ppl.diffusion.plots` (imported on
  demand: matplotlib).

This package exports what a user needs; the building blocks (loss pieces, kernels, buffers,
trajectory log-probabilities) are imported from their modules.

Examples:
    >>> import jax
    >>> from amortized_ppl.diffusion import (
    ...     GuidanceConfig, build_rtb, brownian_bridge_schedule, fit_rtb, gmm_exact_drift)
    >>> from amortized_ppl.models.inverse_problems import toy_2d_problem
    >>> problem, schedule = toy_2d_problem(), brownian_bridge_schedule(100, 2)
    >>> key_build, key_fit = jax.random.split(jax.random.key(0))
    >>> algorithm = build_rtb(key_build, gmm_exact_drift(problem.prior, schedule), schedule,
    ...                       problem.log_likelihood, guidance=GuidanceConfig())  # doctest: +SKIP
    >>> posterior = fit_rtb(key_fit, algorithm, num_steps=2000).posterior  # doctest: +SKIP
"""

from amortized_ppl.diffusion.checkpoint import load_posterior, save_posterior
from amortized_ppl.diffusion.dps import dps_sample, dps_scale_sweep
from amortized_ppl.diffusion.fit import (
    GuidanceConfig,
    NetworkConfig,
    RTBResult,
    build_rtb,
    fit_rtb,
    importance_log_z,
)
from amortized_ppl.diffusion.ground_truth import problem_reference
from amortized_ppl.diffusion.kl_rl import build_kl_rl_kernel
from amortized_ppl.diffusion.metrics import log_evidence_estimate, mode_weights, posterior_report
from amortized_ppl.diffusion.prior import fit_prior_diffusion, gmm_exact_drift
from amortized_ppl.diffusion.rtb import RTBConfig, RTBPosterior, sample_posterior, tempering
from amortized_ppl.diffusion.sampler import (
    DiffusionSchedule,
    DriftNetwork,
    brownian_bridge_schedule,
    sample_trajectories,
    vp_schedule,
)
from amortized_ppl.diffusion.sources import joint_samples, prioritized_replay

__all__ = [
    # RTB: build, run, save
    "GuidanceConfig",
    "NetworkConfig",
    "RTBConfig",
    "RTBPosterior",
    "RTBResult",
    "build_kl_rl_kernel",
    "build_rtb",
    "fit_rtb",
    "importance_log_z",
    "joint_samples",
    "load_posterior",
    "prioritized_replay",
    "sample_posterior",
    "save_posterior",
    "tempering",
    # schedules, sampling, prior diffusions
    "DiffusionSchedule",
    "DriftNetwork",
    "brownian_bridge_schedule",
    "fit_prior_diffusion",
    "gmm_exact_drift",
    "sample_trajectories",
    "vp_schedule",
    # baseline, references, reports
    "dps_sample",
    "dps_scale_sweep",
    "log_evidence_estimate",
    "mode_weights",
    "posterior_report",
    "problem_reference",
]
