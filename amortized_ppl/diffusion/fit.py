"""The RTB driver: validate the problem, build the posterior, train, check, save.

:func:`fit_rtb` wraps :func:`~amortized_ppl.diffusion.rtb.build_rtb_kernel` in the shared chunked
loop (progress bar, time budget, Ctrl-C, stop on a non-finite loss keeping the last good
parameters). It probes the constraint before training, so a likelihood whose observation shape
disagrees with ``y``, or one returning NaN, fails at once with a message naming the problem; it
writes a checkpoint only when training ended with finite parameters, so a diverged run never
replaces a good checkpoint. :func:`importance_log_z` estimates ``log Z`` from posterior
trajectories, the check on the learned ``log Z``.
"""

from __future__ import annotations

import math
import pathlib
import warnings
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl._checks import check_key
from amortized_ppl.diffusion.checkpoint import save_posterior
from amortized_ppl.diffusion.rtb import (
    LogZNetwork,
    RTBConfig,
    RTBInfo,
    RTBPosterior,
    build_rtb_kernel,
    check_config,
    langevin_scale_network,
    make_optimizer,
    posterior_log_weights,
    reward_gradient,
    trainable_filter,
)
from amortized_ppl.diffusion.sampler import DiffusionSchedule, DriftNetwork, sample_trajectories
from amortized_ppl.loop import run_chunked_loop

__all__ = ["RTBResult", "fit_rtb", "importance_log_z"]


class RTBResult(NamedTuple):
    """What :func:`fit_rtb` returns.

    Attributes:
        posterior: The trained :class:`RTBPosterior` (a drift function; ``.log_normalizer()``).
        history: Loss per completed step, ``(steps,)``.
        infos: :class:`RTBInfo` of per-step arrays (loss parts, ``log Z``, bad rewards).
        seconds: Wall time of the training loop.
        reason: ``"done"``, ``"time"``, ``"nonfinite"`` or ``"interrupt"``.
        checkpoint: Where the posterior was saved, or ``None``.
    """

    posterior: RTBPosterior
    history: np.ndarray
    infos: RTBInfo | None
    seconds: float
    reason: str
    checkpoint: pathlib.Path | None


def _rewards(log_reward_fn, x, y):
    return log_reward_fn(x) if y is None else log_reward_fn(x, y)


def _probe_rewards(log_reward_fn, x, y) -> jax.Array:
    """Evaluate the constraint on probe points; raise on a wrong shape or NaN."""
    try:
        out = _rewards(log_reward_fn, x, y)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"log_reward_fn: failed on a batch x of shape {x.shape}"
            + ("" if y is None else f" with y of shape {y.shape}") + f": {err}"
        ) from err
    out = jnp.asarray(out)
    if out.shape != (x.shape[0],):
        raise ValueError(
            f"log_reward_fn: expected one log reward per sample, shape ({x.shape[0]},), for x of "
            f"shape {x.shape}; got shape {out.shape}. Does the likelihood's observation shape "
            "match y?"
        )
    bad = int(jnp.sum(~jnp.isfinite(out)))
    if bad:
        raise ValueError(
            f"log_reward_fn: returned NaN or +-inf for {bad} of {x.shape[0]} prior samples; "
            "RTB needs a finite log-likelihood wherever the sampler can go (a zero likelihood, "
            "-inf, makes the balance infinite)."
        )
    return out


def _explain(infos) -> str | None:
    bad = int(np.sum(infos.bad_rewards))
    if bad:
        return (f"log_reward_fn returned a non-finite value for {bad} sampled states: the "
                "likelihood is NaN or zero where the posterior went. Check it (or its "
                "observation) before retraining.")
    return ("The loss diverged; lower config.learning_rate or config.log_z_learning_rate, or "
            "raise config.grad_clip's strictness (a smaller value).")


def importance_log_z(key: jax.Array, posterior: RTBPosterior, schedule: DiffusionSchedule,
                     log_reward_fn: Callable, num: int, *, beta: float = 1.0, cond=None):
    """``log Z`` by importance sampling posterior trajectories, and the log-weights ``(num,)``.

    ``log Z ~= logmeanexp(log p_prior(tau) + beta log r(x_N) - log p_post(tau))``, unbiased in
    ``Z`` under the prior diffusion, and exact with equal weights when the balance holds. ``cond``
    is one observation ``(m,)`` for an amortized posterior.
    """
    check_key(key, "key")
    traj = sample_trajectories(key, posterior, schedule, num, cond=cond)
    x = traj.states[:, -1]
    y = None if cond is None else jnp.broadcast_to(cond, (num,) + jnp.shape(cond))
    log_w = posterior_log_weights(posterior, schedule, traj, _rewards(log_reward_fn, x, y),
                                  beta=beta, cond=y)
    return jax.nn.logsumexp(log_w) - math.log(num), log_w


def fit_rtb(
    key: jax.Array,
    prior_drift: Callable,
    schedule: DiffusionSchedule,
    log_reward_fn: Callable,
    *,
    num_steps: int = 2000,
    config: RTBConfig | None = None,
    correction: DriftNetwork | None = None,
    width: int = 128,
    depth: int = 2,
    input_scale: float = 1.0,
    guidance: str | None = None,
    guidance_init: float = 0.0,
    guidance_clip: float = 100.0,
    log_prior_fn: Callable | None = None,
    sample_pair_fn: Callable | None = None,
    init_log_z: float | None = None,
    num_init_samples: int = 2048,
    chunk_size: int = 50,
    max_seconds: float | None = None,
    progress: bool = True,
    checkpoint=None,
    checkpoint_metadata: dict | None = None,
) -> RTBResult:
    """Fine-tune a prior diffusion into the posterior ``∝ prior(x) r(x)^beta`` by RTB.

    Args:
        key: PRNG key; the result is deterministic given it.
        prior_drift: The prior diffusion's drift ``(x (d,), t) -> (d,)``: a trained
            :class:`DriftNetwork` or the exact ``gmm_exact_drift(prior, schedule)``; frozen.
        schedule: The diffusion schedule shared by prior and posterior.
        log_reward_fn: ``log r``, batched: ``(x (B, d)) -> (B,)``, or ``(x (B, d), y (B, m)) ->
            (B,)`` for amortized RTB. ``InverseProblem.log_likelihood`` or
            ``amortized_ppl.models.inverse_problems.numpyro_likelihood(model, y)`` for a NumPyro model.
        num_steps: Optimizer steps.
        config: :class:`RTBConfig` (defaults otherwise).
        correction: The correction network (default a :class:`DriftNetwork` of ``width`` x
            ``depth`` with ``input_scale``, conditioned on ``y`` when amortized).
        guidance: Add the Langevin term ``g(t) * grad log r`` to the learned drift (see
            :class:`RTBPosterior`), with the likelihood's gradient by ``jax.grad`` of
            ``log_reward_fn``: ``"plain"`` takes it at ``x``, ``"denoised"`` at the prior's
            denoised estimate (the DPS direction; needs a trainable-free, differentiable
            ``prior_drift``); ``None`` for none. Advised for sharp likelihoods.
        guidance_init: Starting value of the learned scale ``g`` (0: start at the prior).
        guidance_clip: Clip the guidance gradient's norm to this (sharp likelihoods).
        log_prior_fn: ``(x (B, d)) -> (B,)``, used to rank the replay buffer by the target
            density (by the reward alone without it).
        sample_pair_fn: ``(key, B) -> (x (B, d), y (B, m))`` from the joint: amortized RTB.
        init_log_z: Starting ``log Z``; default ``logmeanexp(beta log r)`` over
            ``num_init_samples`` prior-diffusion samples (for amortized RTB, the mean of that
            over simulated ``y``).
        chunk_size, max_seconds, progress: The training loop's chunking, time budget, progress.
        checkpoint: A directory to save the trained posterior in, written only when training
            ended with finite parameters (see :mod:`amortized_ppl.diffusion.checkpoint`).
        checkpoint_metadata: JSON-serializable dict saved with it (e.g. the problem's name).

    Returns:
        An :class:`RTBResult`.

    Raises:
        ValueError: invalid settings, or a constraint that returns the wrong shape, NaN or +inf
            on prior samples.
    """
    check_key(key, "key")
    config = check_config(RTBConfig() if config is None else config, schedule)
    for name, value, minimum in (("num_steps", num_steps, 1), ("chunk_size", chunk_size, 1),
                                 ("num_init_samples", num_init_samples, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}.")
    key_net, key_probe, key_pairs, key_train = jax.random.split(key, 4)
    dim = schedule.dim
    amortized = sample_pair_fn is not None

    # Probe the prior diffusion and the constraint on prior samples.
    probe_x = sample_trajectories(key_probe, prior_drift, schedule, num_init_samples).states[:, -1]
    cond_dim, cond_scale, y_probe = 0, 1.0, None
    if amortized:
        x_pairs, y_pairs = sample_pair_fn(key_pairs, num_init_samples)
        if (jnp.shape(x_pairs) != (num_init_samples, dim) or jnp.ndim(y_pairs) != 2
                or jnp.shape(y_pairs)[0] != num_init_samples):
            raise ValueError(
                f"sample_pair_fn: expected (x ({num_init_samples}, {dim}), y ({num_init_samples},"
                f" m)), got shapes {jnp.shape(x_pairs)} and {jnp.shape(y_pairs)}."
            )
        if not bool(jnp.all(jnp.isfinite(y_pairs))):
            raise ValueError("sample_pair_fn: simulated y has NaN or Inf entries.")
        cond_dim = int(y_pairs.shape[1])
        cond_scale = float(jnp.maximum(jnp.std(y_pairs), 1e-6))
        y_probe = y_pairs
    rewards = _probe_rewards(log_reward_fn, probe_x, y_probe)

    if init_log_z is None:
        if amortized:
            # log p(y_j) ~= logmeanexp_i log r(x_i; y_j) over prior samples x_i, averaged over j.
            num_y = min(64, num_init_samples)
            per_y = jax.vmap(lambda yj: jax.nn.logsumexp(config.beta * _rewards(
                log_reward_fn, probe_x, jnp.broadcast_to(yj, (num_init_samples, cond_dim)))))(
                y_probe[:num_y])
            finite = per_y[jnp.isfinite(per_y)]
            init_log_z = (float(jnp.mean(finite) - math.log(num_init_samples)) if finite.size
                          else 0.0)
        else:
            init_log_z = float(jax.nn.logsumexp(config.beta * rewards) - math.log(num_init_samples))
    if not math.isfinite(init_log_z):
        raise ValueError(f"init_log_z: expected a finite float, got {init_log_z!r}.")

    key_corr, key_z, key_lp = jax.random.split(key_net, 3)
    if correction is None:
        correction = DriftNetwork(dim, width=width, depth=depth, cond_dim=cond_dim,
                                  input_scale=input_scale, key=key_corr)
    if correction.dim != dim or correction.cond_dim != cond_dim:
        raise ValueError(
            f"correction: expected a network with dim={dim} and cond_dim={cond_dim}, got "
            f"dim={correction.dim}, cond_dim={correction.cond_dim}."
        )
    dtype = schedule.times.dtype
    log_z = (LogZNetwork(cond_dim, init=init_log_z, key=key_z) if amortized
             else jnp.asarray(init_log_z, dtype))
    lp_net, reward_grad = None, None
    lp_unit = float(jnp.mean(schedule.noise_std**2 / schedule.drift_step))
    if guidance not in (None, "plain", "denoised"):
        raise ValueError(f"guidance: expected None, 'plain' or 'denoised', got {guidance!r}.")
    if guidance is not None:
        reward_grad = reward_gradient(
            log_reward_fn, amortized, prior_drift=prior_drift if guidance == "denoised" else None,
            schedule=schedule)
        lp_net = langevin_scale_network(correction.time_features(0.0).shape[0], dim,
                                        init=float(guidance_init), key=key_lp)
    if not guidance_clip > 0:
        raise ValueError(f"guidance_clip: expected a positive float, got {guidance_clip!r}.")
    posterior = RTBPosterior(prior_drift, correction, log_z, cond_scale, reward_grad, lp_net,
                             lp_unit, float(guidance_clip))
    params, static = eqx.partition(posterior, trainable_filter(posterior))
    optimizer = make_optimizer(config, params)
    init, step = build_rtb_kernel(static, schedule, log_reward_fn, optimizer, config,
                                  log_prior_fn=log_prior_fn, sample_pair_fn=sample_pair_fn)
    out = run_chunked_loop(key_train, init(params), step, num_steps=num_steps,
                           chunk_size=chunk_size, max_seconds=max_seconds, progress=progress,
                           desc="rtb", explain_nonfinite=_explain)
    posterior = eqx.combine(out.state.params, static)

    saved = None
    if checkpoint is not None:
        if out.reason == "nonfinite":
            warnings.warn(f"Training diverged; the checkpoint at {checkpoint} was not written "
                          "(an existing one is kept).", RuntimeWarning, stacklevel=2)
        else:
            try:
                saved = save_posterior(checkpoint, posterior, schedule,
                                       metadata=checkpoint_metadata)
            except ValueError as err:  # non-finite parameters after the last update
                warnings.warn(f"Checkpoint not written: {err}", RuntimeWarning, stacklevel=2)
    return RTBResult(posterior, out.history, out.infos, out.seconds, out.reason, saved)
