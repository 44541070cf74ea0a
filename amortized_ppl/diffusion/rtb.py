"""Relative trajectory balance (RTB): fine-tune a prior diffusion into a posterior diffusion.

Given a prior diffusion ``p_prior`` (a drift ``f_prior`` on a :class:`DiffusionSchedule`) and a
constraint ``r(x) >= 0``, RTB trains a posterior diffusion ``p_post`` with the same schedule and
start so that its terminal law is ``p_post(x_N) ∝ p_prior(x_N) r(x_N)^beta``. For a trajectory
``tau = (x_0, ..., x_N)`` it asks for

    ``Z p_post(tau) = p_prior(tau) r(x_N)^beta``,

and minimizes the squared log-ratio ``0.5 delta(tau)^2`` with
``delta = log Z + sum_n log p_post(x_{n+1} | x_n) - sum_n log p_prior(x_{n+1} | x_n)
- beta log r(x_N)`` (the start densities cancel), jointly over the posterior drift and the scalar
``log Z``. At the optimum the balance holds for every trajectory, so the posterior is exact and
``Z = E_{p_prior}[r(x_N)^beta]``: with ``r = p(y | x)`` and ``beta = 1``, ``log Z`` is the log
evidence ``log p(y)`` under the prior diffusion.

The loss is valid for trajectories from any full-support distribution, so training is
off-policy (:func:`build_rtb_kernel`):

- **exploration**: trajectories from the current posterior with sampling noise inflated by a
  factor that decays to 1 over the first part of training;
- **replay**: terminal states from an off-policy source
  (:mod:`~amortized_ppl.diffusion.sources`: a prioritized replay buffer of explored states, or
  simulated joint samples), turned into whole trajectories by the fixed noising kernel ``q``;
- **backtracking**: noise a replayed state ``x_N`` back ``k`` steps with ``q`` and regenerate it
  with the posterior; the noised segment and the regenerated one share ``x_{N-k}``, so the
  difference of their ``delta`` s cancels ``log Z`` and the shared prefix: a partial-trajectory
  balance on the last ``k`` steps.

The posterior drift is the prior's plus a learned correction (:class:`RTBPosterior`) whose last
layer starts near zero, so training starts from the prior, as fine-tuning does. Its transitions
may also learn their noise (``log_noise``, one factor per step and coordinate): where the
constraint is as sharp as the last steps' noise, the true posterior's transitions are narrower
than the prior's, and a posterior with the prior's noise cannot reach balance. On inpainting
``d = 8`` (``sigma_y = 0.05``) that was the cause of RTB's mode collapse: the badly fitted mode's
trajectories carry larger residuals, and the squared loss moved mass away from it (1,500 steps:
mode-weight TV 0.119 with the prior's noise, 0.012 with learned noise; log-weight SD 6.4 and
2.3). Sample such a posterior with :func:`sample_posterior`.

The constraint's exponent ``beta`` may follow a schedule (:func:`tempering`): from a small value,
at which the untrained posterior is near balance, up to its final value.

**Amortized (conditional) RTB.** With the source
:func:`~amortized_ppl.diffusion.sources.joint_samples` of pairs ``(x, y)`` from the joint
``p(x) p(y | x)``, the correction and ``log Z`` take ``y`` as input and the constraint is
``r(x; y)``; each step trains on simulated ``y`` s. The simulated ``x`` is an exact posterior
sample for its own ``y``, so it replaces the buffer: its noising trajectory is the replayed one.

References:
    Venkatraman, S., Jain, M., Scimeca, L., et al. (2024). Amortizing intractable inference in
    diffusion models for vision, language, and control. *NeurIPS*. (RTB, its off-policy training
    and the 25-mode toy.)
    Sendera, M., Kim, M., Mittal, S., et al. (2024). Improved off-policy training of diffusion
    samplers. *NeurIPS*. (Replay buffers and local search by backtracking.)
    Malkin, N., Jain, M., Bengio, E., Sun, C., Bengio, Y. (2022). Trajectory balance: improved
    credit assignment in GFlowNets. *NeurIPS*.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from amortized_ppl._checks import check_int, check_key
from amortized_ppl.diffusion.sampler import (
    DiffusionSchedule,
    DriftNetwork,
    Trajectory,
    as_states,
    check_cond,
    check_points,
    noising_trajectories,
    normal_log_prob,
    sample_trajectories,
)
from amortized_ppl.diffusion.sources import OffPolicySource
from amortized_ppl.linalg import solve_lower
from amortized_ppl.sharding import constrain_batch

_LOG_2PI = math.log(2.0 * math.pi)

__all__ = [
    "LogZNetwork",
    "RTBConfig",
    "RTBInfo",
    "RTBPosterior",
    "RTBState",
    "beta_at",
    "build_rtb_kernel",
    "check_config",
    "langevin_scale_network",
    "log_ratio",
    "log_rewards",
    "make_optimizer",
    "posterior_log_weights",
    "reward_gradient",
    "rtb_loss",
    "sample_posterior",
    "tempering",
    "trainable_filter",
]


# ---------------------------------------------------------------------------------------------
# The posterior
# ---------------------------------------------------------------------------------------------


class LogZNetwork(eqx.Module):
    """``log Z(y)`` of amortized RTB: an MLP ``(m,) -> ()`` whose output bias starts at ``init``."""

    mlp: eqx.nn.MLP

    def __init__(self, cond_dim: int, *, width: int = 64, depth: int = 2, init: float = 0.0,
                 key: jax.Array):
        mlp = eqx.nn.MLP(cond_dim, "scalar", width, depth, activation=jax.nn.silu, key=key)
        last = mlp.layers[-1]
        self.mlp = eqx.tree_at(lambda m: (m.layers[-1].weight, m.layers[-1].bias), mlp,
                               (last.weight * 1e-2, jnp.full_like(last.bias, init)))

    def __call__(self, cond) -> jax.Array:
        return self.mlp(cond)


class RTBPosterior(eqx.Module):
    """A posterior diffusion: the frozen prior drift plus a learned correction, and ``log Z``.

    ``drift(x, t[, cond]) = prior_drift(x, t) + learned_drift(x, t[, cond])`` with
    ``learned_drift = correction(x, t[, cond / cond_scale]) + lp_unit g(t) * grad log r(x)``:
    the second term, present when ``reward_grad`` is given, is the Langevin parameterization of
    path-integral samplers (Zhang & Chen, 2022): a learned per-dimension time scale ``g`` (zero
    at the start) on the constraint's gradient. It uses the likelihood's gradient, which a NumPyro
    model provides, and carries most of the drift a sharp likelihood needs near the data end
    (where the posterior's extra drift tends to ``sigma^2 grad log r``; ``lp_unit`` is
    ``sigma_n^2 / h_n``, averaged over steps, so ``g`` is of order 1). ``log_z`` is a scalar
    array (one observation) or a :class:`LogZNetwork` of ``cond / cond_scale`` (amortized over
    observations).

    Call it as a drift function: ``posterior(x (d,), t)`` or ``posterior(x, t, cond (c,))``; pass
    it to :func:`sample_posterior` to sample (or to
    :func:`~amortized_ppl.diffusion.sampler.sample_trajectories` when it has no ``log_noise``).

    Attributes:
        prior_drift: ``(x, t) -> (d,)``; not trained (excluded by :func:`trainable_filter`).
        correction: A :class:`DriftNetwork` (``cond_dim > 0`` when amortized).
        log_z: ``()`` array or :class:`LogZNetwork`.
        cond_scale: Observations enter the networks divided by it.
        reward_grad: ``None`` or ``(x (d,), t, cond (c,) | None) -> (d,)``: the direction of
            the Langevin term (:func:`reward_gradient`).
        lp_net: ``None`` or an MLP from the time features to ``g(t) (d,)``.
        lp_unit: The constant ``sigma^2 / h`` of the schedule.
        guidance_clip: The gradient's norm is clipped to this before scaling by ``g``.
        log_noise: ``None`` (the prior's noise) or ``(N, d)``: the posterior's transition
            ``n`` has noise SD ``sigma_n exp(log_noise[n])`` per coordinate. A sharp constraint
            needs it: where the likelihood's width is comparable to the last steps' noise,
            the true posterior transitions are narrower than the prior's, and a posterior
            with the prior's noise cannot balance (see :func:`sample_posterior`; measured on
            inpainting ``d = 8``, ``sigma_y = 0.05``: the exact posterior mixture's own drift,
            with the prior's noise, is 2 nats of KL from the target, log-weight SD 2.3).
        correction_clip: The correction network's output is squashed into
            ``(-clip, clip)`` per coordinate (``clip tanh(out / clip)``; ``inf``: not at all).
            An MLP extrapolates linearly in ``x``: a trajectory pushed past where it was trained
            met a correction larger than the prior's restoring drift and ran away (measured:
            phase retrieval, ``|x|`` from 4 to 1e4 within one trajectory; the loss then
            overflowed). Bounded, the prior's drift wins far out.
        noise_tril: ``None`` or ``(N, d, d)`` (with ``log_noise``): correlated noise. The
            transition's noise is then ``sigma_n L_n eps`` with the lower-triangular
            ``L_n = diag(exp(log_noise[n])) + strictly_lower(noise_tril[n])``, for posteriors
            whose transitions are narrow along directions that are not coordinates (a
            constraint through a dense ``A``).
    """

    prior_drift: Callable
    correction: DriftNetwork
    log_z: jax.Array | LogZNetwork
    cond_scale: float = eqx.field(static=True, default=1.0)
    reward_grad: Callable | None = None
    lp_net: eqx.nn.MLP | None = None
    lp_unit: float = eqx.field(static=True, default=1.0)
    guidance_clip: float = eqx.field(static=True, default=math.inf)
    log_noise: jax.Array | None = None
    correction_clip: float = eqx.field(static=True, default=math.inf)
    noise_tril: jax.Array | None = None

    @property
    def amortized(self) -> bool:
        """Whether the posterior is conditioned on observations (its correction takes them)."""
        return self.correction.cond_dim > 0

    def learned_drift(self, x, t, cond=None) -> jax.Array:
        """What the posterior adds to the prior drift at one state ``x (d,)``, shape ``(d,)``."""
        scaled = None if cond is None else cond / self.cond_scale
        out = self.correction(x, t, scaled)
        if math.isfinite(self.correction_clip):
            out = self.correction_clip * jnp.tanh(out / self.correction_clip)
        if self.reward_grad is not None and self.lp_net is not None:
            grad = jax.lax.stop_gradient(self.reward_grad(x, t, cond))
            grad = jnp.where(jnp.isfinite(grad), grad, 0.0)
            # Sharp likelihoods have huge gradients far from the data (and through the denoiser
            # at high noise); a norm clip keeps early steps and early training stable.
            norm = jnp.sqrt(jnp.sum(grad**2))
            grad = grad * jnp.minimum(1.0, self.guidance_clip / jnp.maximum(norm, 1e-30))
            out = out + self.lp_unit * self.lp_net(self.correction.time_features(t)) * grad
        return out

    def __call__(self, x, t, cond=None) -> jax.Array:
        prior = jax.lax.stop_gradient(self.prior_drift(x, t))
        return prior + self.learned_drift(x, t, cond)

    def noise_factor(self, n) -> jax.Array:
        """The factor on the prior's noise SD at transition(s) ``n``: ``(..., d)`` (1 without a
        learned noise, shape ``(..., 1)``); the diagonal of ``L_n`` with ``noise_tril``."""
        n = jnp.asarray(n)
        if self.log_noise is None:
            return jnp.ones(n.shape + (1,), self.correction.layers[-1].weight.dtype)
        return jnp.exp(self.log_noise[n])

    def noise_matrix(self, n) -> jax.Array:
        """``L_n`` of transition(s) ``n``, ``(..., d, d)`` (needs ``noise_tril``)."""
        n = jnp.asarray(n)
        lower = jnp.tril(self.noise_tril[n], -1)
        return lower + self.noise_factor(n)[..., None] * jnp.eye(lower.shape[-1],
                                                                  dtype=lower.dtype)

    def transition_noise(self, n, eps) -> jax.Array:
        """The noise of transition ``n`` (an int) relative to ``sigma_n``, ``(B, d)``, from
        standard normal ``eps (B, d)``."""
        if self.noise_tril is None:
            return self.noise_factor(n) * eps
        return eps @ self.noise_matrix(n).T

    def transition_log_prob(self, x_next, mean, std, n) -> jax.Array:
        """``log p_post(x_next | .)`` with mean ``mean`` and the noise of transition(s) ``n``.

        ``x_next`` and ``mean`` are ``(B, d)`` with ``n`` an int and ``std`` a scalar, or
        ``(B, M, d)`` with ``n (M,)`` and ``std (M, 1)``. Returns ``(B,)`` or ``(B, M)``.
        """
        if self.noise_tril is None:
            return normal_log_prob(x_next, mean, std * self.noise_factor(n))
        matrix = self.noise_matrix(n)  # (d, d) or (M, d, d)
        diff = (x_next - mean) / std
        if matrix.ndim == 2:
            z = solve_lower(matrix, diff.T).T
        else:  # per transition m: L_m z = diff[:, m].T, as (M, d, B)
            z = jax.vmap(solve_lower)(matrix, jnp.transpose(diff, (1, 2, 0)))
            z = jnp.transpose(z, (2, 0, 1))
        log_det = jnp.sum(jnp.log(std * self.noise_factor(n)), axis=-1)  # () or (M,)
        return jnp.sum(-0.5 * z**2, axis=-1) - 0.5 * diff.shape[-1] * _LOG_2PI - log_det

    def log_normalizer(self, cond=None) -> jax.Array:
        """``log Z`` (shape ``()``), or ``log Z(cond)`` with shape ``(B,)`` for ``cond (B, c)``."""
        if not self.amortized:
            return self.log_z
        cond = jnp.asarray(cond) / self.cond_scale
        return jax.vmap(self.log_z)(cond) if cond.ndim == 2 else self.log_z(cond)


def log_rewards(log_reward_fn: Callable, x, cond=None) -> jax.Array:
    """``log r`` of a batch: ``log_reward_fn(x (B, d))``, or ``log_reward_fn(x, cond (B, m))``
    when there are observations to condition on (amortized RTB)."""
    return log_reward_fn(x) if cond is None else log_reward_fn(x, cond)


@eqx.filter_jit
def _run_posterior_chain(key, posterior, schedule, x_start, noise_scale, cond, start_step):
    idx = jnp.arange(start_step, schedule.num_steps)
    keys = jax.random.split(key, idx.shape[0])
    cond_axis = 0 if cond is not None and cond.ndim == 2 else None

    def body(x, inputs):
        n, step_key = inputs
        t = schedule.times[n]
        drift = jax.vmap(lambda xi, ci: posterior(xi, t, ci), in_axes=(0, cond_axis))(x, cond)
        mean = schedule.mean_scale[n] * x + schedule.drift_step[n] * drift
        eps = jax.random.normal(step_key, x.shape, x.dtype)
        if posterior.noise_tril is None:  # diagonal: a per-coordinate SD
            std = schedule.noise_std[n] * posterior.noise_factor(n)
            x_next = mean + noise_scale * std * eps
            return x_next, (x_next, normal_log_prob(x_next, mean, std))
        std = schedule.noise_std[n]
        x_next = mean + noise_scale * std * posterior.transition_noise(n, eps)
        return x_next, (x_next, posterior.transition_log_prob(x_next, mean, std, n))

    _, (xs, log_pf) = jax.lax.scan(body, x_start, (idx, keys))
    states = jnp.concatenate([x_start[None], xs], axis=0)
    return Trajectory(jnp.swapaxes(states, 0, 1), jnp.swapaxes(log_pf, 0, 1))


def sample_posterior(key: jax.Array, posterior, schedule: DiffusionSchedule, num: int, *,
                     noise_scale=1.0, x_init=None, cond=None, start_step: int = 0) -> Trajectory:
    """Sample trajectories of a posterior diffusion, with its learned noise if it has one.

    :func:`~amortized_ppl.diffusion.sampler.sample_trajectories` with the same arguments and
    keys, except that an :class:`RTBPosterior` with ``log_noise`` draws transition ``n`` with
    noise SD ``noise_scale sigma_n exp(log_noise[n])`` (``sample_trajectories`` knows only the
    schedule's noise: it would sample such a posterior with the prior's noise). ``log_pf`` is
    under the posterior's nominal kernel. Anything else (a drift function, a posterior without
    learned noise) goes to ``sample_trajectories`` unchanged.
    """
    if not isinstance(posterior, RTBPosterior) or posterior.log_noise is None:
        return sample_trajectories(key, posterior, schedule, num, noise_scale=noise_scale,
                                   x_init=x_init, cond=cond, start_step=start_step)
    check_key(key, "key")
    num = check_int(num, "num")
    start_step = check_int(start_step, "start_step", 0)
    if start_step >= schedule.num_steps:
        raise ValueError(f"start_step: expected < num_steps = {schedule.num_steps}, got "
                         f"{start_step}.")
    if posterior.log_noise.shape != (schedule.num_steps, schedule.dim):
        raise ValueError(f"posterior.log_noise: expected shape ({schedule.num_steps}, "
                         f"{schedule.dim}) for this schedule, got {posterior.log_noise.shape}.")
    want = (schedule.num_steps, schedule.dim, schedule.dim)
    if posterior.noise_tril is not None and posterior.noise_tril.shape != want:
        raise ValueError(f"posterior.noise_tril: expected shape {want} for this schedule, got "
                         f"{posterior.noise_tril.shape}.")
    key_init, key_chain = jax.random.split(key)
    if x_init is None:
        if start_step > 0:
            raise ValueError("x_init: required when start_step > 0 (the states x_start_step).")
        x_init = schedule.init_std * jax.random.normal(key_init, (num, schedule.dim),
                                                       schedule.times.dtype)
    else:
        x_init = check_points(x_init, schedule, num, "x_init")
    cond = check_cond(cond, num)
    noise_scale = jnp.asarray(noise_scale, schedule.times.dtype)
    return _run_posterior_chain(key_chain, posterior, schedule, x_init, noise_scale, cond,
                                start_step)


def langevin_scale_network(num_time_features: int, dim: int, *, width: int = 64,
                           init: float = 0.0, key: jax.Array) -> eqx.nn.MLP:
    """The MLP ``time features -> g(t) (d,)`` of the Langevin term; its output starts at ``init``.

    ``init`` is the starting guidance scale: 0 starts at the prior; about 0.5 with
    ``GuidanceConfig("denoised")`` starts near a tuned DPS.
    """
    mlp = eqx.nn.MLP(num_time_features, dim, width, 2, activation=jax.nn.silu, key=key)
    last = mlp.layers[-1]
    return eqx.tree_at(lambda m: (m.layers[-1].weight, m.layers[-1].bias), mlp,
                       (jnp.zeros_like(last.weight), jnp.full_like(last.bias, init)))


def reward_gradient(log_reward_fn: Callable, *, prior_drift: Callable | None = None,
                    schedule: DiffusionSchedule | None = None) -> Callable:
    """``(x (d,), t, cond) -> grad_x log r(.)`` from a batched ``log_reward_fn``.

    Without ``prior_drift`` the gradient is taken at ``x`` itself ("plain", the path-integral
    samplers' choice). With it, at the prior's denoised estimate ``x0_hat(x, t)`` and through it
    (``GuidanceConfig("denoised")``, the DPS direction): informative at every noise level, not only
    near the data end. ``t`` must be one of ``schedule.times[:-1]``. ``cond`` is ``None`` (then
    ``log_reward_fn(x (B, d))``) or one observation ``(m,)`` (``log_reward_fn(x, y (B, m))``).
    """
    def log_r(z, cond):
        return log_rewards(log_reward_fn, z[None], None if cond is None else cond[None])[0]

    if prior_drift is None:
        def plain(x, t, cond):
            return jax.grad(log_r)(x, cond)

        plain.guidance = "plain"  # recorded in checkpoints
        return plain
    if schedule is None:
        raise ValueError("schedule: required with prior_drift (the denoised guidance).")

    def denoised(x, t):
        n = jnp.clip(jnp.round(t * schedule.num_steps).astype(jnp.int32), 0,
                     schedule.num_steps - 1)
        mean = schedule.mean_scale[n] * x + schedule.drift_step[n] * prior_drift(x, t)
        return (mean - schedule.bridge_x_coef[n] * x) / schedule.bridge_data_coef[n]

    def through_denoiser(x, t, cond):
        return jax.grad(lambda z: log_r(denoised(z, t), cond))(x)

    through_denoiser.guidance = "denoised"
    return through_denoiser


# ---------------------------------------------------------------------------------------------
# Loss pieces
# ---------------------------------------------------------------------------------------------


def log_ratio(posterior: RTBPosterior, schedule: DiffusionSchedule, states, *, cond=None,
              start_step: int = 0) -> jax.Array:
    """``sum_n [log p_post(x_{n+1} | x_n) - log p_prior(x_{n+1} | x_n)]`` per trajectory.

    Args:
        posterior: The :class:`RTBPosterior`.
        schedule: Its schedule.
        states: ``(B, M + 1, d)``: states ``x_s .. x_{s+M}`` (``s = start_step``).
        cond: ``None``, ``(c,)`` or ``(B, c)``.
        start_step: Index ``s`` of the first state.

    Returns:
        ``(B,)``. Gradients flow into the correction only (the states and the prior are constants).
    """
    states, start_step = as_states(states, schedule, start_step)
    if states.ndim != 3:
        raise ValueError(f"states: expected shape (B, M + 1, {schedule.dim}), got {states.shape}.")
    states = jax.lax.stop_gradient(states)
    num_trans = states.shape[1] - 1
    idx = start_step + jnp.arange(num_trans)
    x, x_next = states[:, :-1], states[:, 1:]
    times = schedule.times[idx]
    cond = check_cond(cond, states.shape[0])
    cond_axis = 0 if cond is not None and cond.ndim == 2 else None

    def per_trajectory(xs, c):
        prior = jax.vmap(posterior.prior_drift)(xs, times)
        corr = jax.vmap(lambda xi, ti: posterior.learned_drift(xi, ti, c))(xs, times)
        return jax.lax.stop_gradient(prior), corr

    prior, corr = jax.vmap(per_trajectory, in_axes=(0, cond_axis))(x, cond)
    base = schedule.mean_scale[idx, None] * x + schedule.drift_step[idx, None] * prior
    step = schedule.drift_step[idx, None]
    std = schedule.noise_std[idx, None]
    post = posterior.transition_log_prob(x_next, base + step * corr, std, idx)
    prior_lp = normal_log_prob(x_next, base, std)
    return jnp.sum(post - prior_lp, axis=-1)


def rtb_loss(posterior: RTBPosterior, schedule: DiffusionSchedule, states, log_reward, *,
             beta: float = 1.0, cond=None) -> tuple[jax.Array, jax.Array]:
    """Relative trajectory balance on whole trajectories: ``(mean 0.5 delta^2, delta (B,))``.

    Args:
        posterior: The :class:`RTBPosterior` being trained.
        schedule: Its schedule.
        states: ``(B, N + 1, d)`` whole trajectories, from any sampler (off-policy).
        log_reward: ``log r(x_N)``, shape ``(B,)``.
        beta: The constraint's exponent (inverse temperature).
        cond: ``None``, or ``(B, c)`` observations for amortized RTB.
    """
    if states.shape[1] != schedule.num_steps + 1:
        raise ValueError(
            f"states: expected whole trajectories of {schedule.num_steps + 1} states, "
            f"got {states.shape[1]}."
        )
    delta = (posterior.log_normalizer(cond)
             + log_ratio(posterior, schedule, states, cond=cond)
             - beta * log_reward)
    return 0.5 * jnp.mean(delta**2), delta


def posterior_log_weights(posterior: RTBPosterior, schedule: DiffusionSchedule, trajectory,
                          log_reward, *, beta: float = 1.0, cond=None) -> jax.Array:
    """Importance log-weights ``log p_prior(tau) + beta log r(x_N) - log p_post(tau)``, ``(B,)``.

    For trajectories sampled from the posterior, ``logmeanexp`` of these estimates ``log Z``
    (unbiased in ``Z``), and their spread says how far the posterior is from balance (all equal
    at the optimum). ``trajectory`` is a :class:`Trajectory` or its states ``(B, N + 1, d)``.
    """
    states = trajectory.states if isinstance(trajectory, Trajectory) else trajectory
    if jnp.shape(states)[-2] != schedule.num_steps + 1:
        raise ValueError(
            f"trajectory: expected whole trajectories of {schedule.num_steps + 1} states (the "
            f"balance needs x_0 .. x_N), got {jnp.shape(states)[-2]}."
        )
    return beta * log_reward - log_ratio(posterior, schedule, states, cond=cond)


# ---------------------------------------------------------------------------------------------
# Training kernel
# ---------------------------------------------------------------------------------------------


class RTBConfig(NamedTuple):
    """Settings of RTB training (see :func:`build_rtb_kernel`).

    Attributes:
        batch_size: On-policy (exploratory) trajectories per step.
        replay_size: Trajectories per step from the off-policy source's terminal states (0: none).
        backtrack_size: Backtracked states per step for the partial balance (0: none).
        backtrack_steps: ``k``, how many steps back a backtracked state is noised.
        backtrack_weight: Weight of the partial-balance loss.
        beta: Exponent of the constraint: a float, or a schedule ``step -> beta`` (e.g.
            :func:`tempering`, which raises it from small to its final value: the target is
            then ``prior r^beta(step)`` at each step, and the last value is the target of the
            trained posterior).
        explore_noise: Initial factor on the sampling noise of on-policy trajectories.
        explore_steps: Steps over which that factor decays linearly to 1.
        learning_rate: Adam step of the drift correction.
        log_z_learning_rate: Adam step of ``log Z`` (RTB uses a larger one).
        grad_clip: Global-norm clip of the gradients.
        decay_steps: Cosine decay of both learning rates to 1% over this many steps (0: constant).
            Decaying matters: with a constant step the mode weights plateau in the gradient
            noise, a little off the target, even as the loss stays small.

    The replay buffer's size and priority belong to its source
    (:func:`~amortized_ppl.diffusion.sources.prioritized_replay`).
    """

    batch_size: int = 128
    replay_size: int = 64
    backtrack_size: int = 64
    backtrack_steps: int = 20
    backtrack_weight: float = 1.0
    beta: float | Callable = 1.0
    explore_noise: float = 1.5
    explore_steps: int = 1000
    learning_rate: float = 1e-3
    log_z_learning_rate: float = 1e-1
    grad_clip: float = 10.0
    decay_steps: int = 0


def check_config(config: RTBConfig, schedule: DiffusionSchedule) -> RTBConfig:
    """Validate every field of ``config`` against ``schedule``; return it."""
    if not isinstance(config, RTBConfig):
        raise TypeError(f"config: expected an RTBConfig, got {type(config).__name__}.")
    ints = {"batch_size": 1, "replay_size": 0, "backtrack_size": 0, "backtrack_steps": 1,
            "explore_steps": 0, "decay_steps": 0}
    for name, minimum in ints.items():
        check_int(getattr(config, name), f"config.{name}", minimum)
    if config.backtrack_steps > schedule.num_steps:
        raise ValueError(f"config.backtrack_steps: expected <= num_steps = {schedule.num_steps}, "
                         f"got {config.backtrack_steps}.")
    floats = {"backtrack_weight": 0.0, "learning_rate": 0.0, "log_z_learning_rate": 0.0,
              "grad_clip": 0.0}
    for step in (0, 1 << 30):  # the first and the final exponent
        beta = beta_at(config.beta, step)
        if not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"config.beta: expected a float > 0 or a schedule step -> float > 0, "
                             f"got {beta!r} at step {step}.")
    for name, lower in floats.items():
        value = getattr(config, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= lower):
            raise ValueError(f"config.{name}: expected a finite float >= {lower}, got {value!r}.")
    if config.learning_rate <= 0:
        raise ValueError(f"config.learning_rate: expected > 0, got {config.learning_rate!r}.")
    if not (math.isfinite(config.explore_noise) and config.explore_noise >= 1.0):
        raise ValueError(f"config.explore_noise: expected a float >= 1, got {config.explore_noise!r}.")
    return config


def beta_at(beta: float | Callable, step):
    """The constraint's exponent at ``step``: ``beta`` itself, or ``beta(step)`` for a schedule.

    A concrete ``step`` gives a Python float; a traced one, a traced scalar.
    """
    if not callable(beta):
        return float(beta)
    value = beta(step)
    return float(value) if isinstance(step, int) else value


def tempering(num_steps: int, *, start: float = 1e-3, end: float = 1.0) -> Callable:
    """A schedule ``step -> beta`` for :attr:`RTBConfig.beta`: geometric from ``start`` to ``end``.

    ``beta(step) = start (end / start)^(step / num_steps)`` until ``num_steps``, then ``end``.
    For a Gaussian likelihood of noise ``s``, ``r^beta`` is one of noise ``s / sqrt(beta)`` (up
    to a constant): tempering widens a sharp observation at the start (where the untrained
    posterior, the prior, is far from balance: ``log r`` in the thousands) and narrows it to its
    true width, so each step's target is close to what the posterior already samples.
    """
    num_steps = check_int(num_steps, "num_steps")
    for name, value in (("start", start), ("end", end)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name}: expected a float > 0, got {value!r}.")
    log_start, log_end = math.log(start), math.log(end)

    def schedule(step):
        frac = jnp.clip(jnp.asarray(step, jnp.float32) / num_steps, 0.0, 1.0)
        return jnp.exp(log_start + (log_end - log_start) * frac)

    return schedule


class RTBState(NamedTuple):
    """Training state.

    Attributes:
        params: The trainable part of the :class:`RTBPosterior` (``eqx.partition`` by
            :func:`trainable_filter`).
        opt_state: The optimizer's state.
        source: The off-policy source's state (a ``ReplayBuffer``; ``()`` for joint samples).
        step: Steps taken, an int32 scalar.
    """

    params: RTBPosterior
    opt_state: optax.OptState
    source: Any
    step: jax.Array


class RTBInfo(NamedTuple):
    """Per-step diagnostics (scalars).

    Attributes:
        loss: The total loss.
        on_policy_loss, replay_loss, backtrack_loss: Its parts.
        log_z: ``log Z``; amortized, the mean of ``log Z(y)`` over the step's observations.
        bad_rewards: How many sampled states got a non-finite log reward.
        beta: The constraint's exponent at this step (see :attr:`RTBConfig.beta`).
    """

    loss: jax.Array
    on_policy_loss: jax.Array
    replay_loss: jax.Array
    backtrack_loss: jax.Array
    log_z: jax.Array
    bad_rewards: jax.Array
    beta: jax.Array


def trainable_filter(posterior: RTBPosterior):
    """The pytree mask of what RTB trains: the correction, ``log Z``, the Langevin scale
    network and the learned noise; never the prior drift (a network or a closure) nor the
    reward gradient."""
    mask = jax.tree.map(lambda _: False, posterior)
    mask = eqx.tree_at(
        lambda p: (p.correction, p.log_z), mask,
        (jax.tree.map(eqx.is_inexact_array, posterior.correction),
         jax.tree.map(eqx.is_inexact_array, posterior.log_z)),
    )
    if posterior.lp_net is not None:
        mask = eqx.tree_at(lambda p: p.lp_net, mask,
                           jax.tree.map(eqx.is_inexact_array, posterior.lp_net))
    if posterior.log_noise is not None:
        mask = eqx.tree_at(lambda p: p.log_noise, mask, True)
    if posterior.noise_tril is not None:
        mask = eqx.tree_at(lambda p: p.noise_tril, mask, True)
    return mask


def make_optimizer(config: RTBConfig, posterior: RTBPosterior) -> optax.GradientTransformation:
    """Adam for the correction and ``log Z`` with their own steps, after a global-norm clip.

    ``posterior`` is the trainable part (``eqx.partition(..., trainable_filter(...))[0]``).
    """
    labels = jax.tree.map(lambda _: "net", posterior)
    if isinstance(posterior.log_z, LogZNetwork):
        # Only the output bias (the overall level of log Z) gets the large step.
        labels = eqx.tree_at(lambda p: p.log_z.mlp.layers[-1].bias, labels, "log_z")
    else:
        labels = eqx.tree_at(lambda p: p.log_z, labels, "log_z")
    clip = [optax.clip_by_global_norm(config.grad_clip)] if config.grad_clip > 0 else []

    def rate(value):
        if config.decay_steps == 0:
            return value
        return optax.cosine_decay_schedule(value, config.decay_steps, alpha=0.01)

    return optax.chain(*clip, optax.multi_transform(
        {"net": optax.adam(rate(config.learning_rate)),
         "log_z": optax.adam(rate(config.log_z_learning_rate))},
        lambda _: labels,  # a callable: the labels tree is itself a callable module
    ))


def build_rtb_kernel(
    static,
    schedule: DiffusionSchedule,
    log_reward_fn: Callable,
    optimizer: optax.GradientTransformation,
    config: RTBConfig,
    source: OffPolicySource,
    mesh=None,
):
    """``(init, step)`` of RTB training; ``static`` is the non-trainable part of the posterior.

    Each ``step(key, state) -> (state, RTBInfo)``:

    1. samples ``batch_size`` trajectories from the posterior with noise factor
       ``1 + (explore_noise - 1) max(0, 1 - step / explore_steps)``, conditioned on the
       observations of a draw from ``source`` (none for a posterior of one observation), and
       scores them by RTB;
    2. draws ``max(replay_size, backtrack_size)`` terminal states from ``source`` and replays
       ``replay_size`` of them through ``q`` (with their own observations, if any);
    3. backtracks ``backtrack_size`` of them ``backtrack_steps`` back and scores the partial
       balance;
    4. offers the on-policy and regenerated terminal states to ``source.add`` with their
       tempered log rewards (a replay buffer keeps them; joint samples ignore them).

    The loss is the sum of the parts' means (the backtracking part times ``backtrack_weight``).
    Placeholder rows of a draw (``valid`` False: an empty buffer) never reach the loss.

    Args:
        static: Non-trainable leaves (``eqx.partition(posterior, trainable_filter(posterior))``).
        schedule: The diffusion schedule.
        log_reward_fn: ``log r``: ``(x (B, d)) -> (B,)``, or ``(x (B, d), y (B, m)) -> (B,)``
            when the source's draws carry observations.
        optimizer: From :func:`make_optimizer` (or any optax transformation of the params).
        config: A validated :class:`RTBConfig`.
        source: An :class:`~amortized_ppl.diffusion.sources.OffPolicySource`.
        mesh: ``None`` (one device) or a :class:`jax.sharding.Mesh` from
            :func:`~amortized_ppl.sharding.data_mesh`: the trajectories of every part are split
            over its devices (the losses' means all-reduce); ``build_rtb(mesh=)`` passes it.

    Returns:
        ``init(params) -> RTBState`` and ``step(key, state) -> (RTBState, RTBInfo)``.
    """
    k = config.backtrack_steps
    start = schedule.num_steps - k
    num_pick = max(config.replay_size, config.backtrack_size)

    def explore_factor(step):
        frac = jnp.maximum(0.0, 1.0 - step / max(config.explore_steps, 1))
        return 1.0 + (config.explore_noise - 1.0) * frac * (config.explore_steps > 0)

    final_beta = beta_at(config.beta, 1 << 30)

    def loss_of(params, key, source_state, step):
        beta = beta_at(config.beta, step)
        posterior = eqx.combine(params, static)
        frozen = eqx.combine(jax.lax.stop_gradient(params), static)
        keys = jax.random.split(key, 6)
        # The observations the on-policy batch is conditioned on (None: one observation).
        y = constrain_batch(source.sample(keys[0], source_state, config.batch_size).cond, mesh,
                            config.batch_size)
        traj = sample_posterior(keys[1], frozen, schedule, config.batch_size,
                                noise_scale=explore_factor(step), cond=y)
        traj = constrain_batch(traj, mesh, config.batch_size)
        x_on = traj.states[:, -1]
        r_on = log_rewards(log_reward_fn, x_on, y)
        on_loss, _ = rtb_loss(posterior, schedule, traj.states, r_on, beta=beta, cond=y)
        zero = jnp.zeros((), on_loss.dtype)
        new_states, new_rewards = [x_on], [r_on]
        bad = jnp.sum(~jnp.isfinite(r_on))

        replay_loss, back_loss = zero, zero
        if num_pick:
            draw = constrain_batch(source.sample(keys[2], source_state, num_pick), mesh, num_pick)
            weights = draw.valid.astype(on_loss.dtype)

            def rows(n):  # the first n of the split draw, split over the mesh again
                return constrain_batch((draw.x[:n], None if draw.cond is None else
                                        draw.cond[:n], weights[:n]), mesh, n)

            if config.replay_size:
                xr, yr, w = rows(config.replay_size)
                states = noising_trajectories(keys[3], schedule, xr)
                r_replay = jnp.where(w > 0, log_rewards(log_reward_fn, xr, yr), 0.0)
                _, delta = rtb_loss(posterior, schedule, states, r_replay, beta=beta,
                                    cond=yr)
                # Mask before squaring: an empty buffer's placeholder rows never reach the loss.
                delta = jnp.where(w > 0, delta, 0.0)
                replay_loss = 0.5 * jnp.sum(delta**2) / jnp.maximum(jnp.sum(w), 1.0)
            if config.backtrack_size:
                xb, yb, w = rows(config.backtrack_size)
                old = noising_trajectories(keys[4], schedule, xb, num_back=k)
                new = sample_posterior(keys[5], frozen, schedule, xb.shape[0],
                                       x_init=old[:, 0], cond=yb, start_step=start).states
                r_old = jnp.where(w > 0, log_rewards(log_reward_fn, xb, yb), 0.0)
                r_new = log_rewards(log_reward_fn, new[:, -1], yb)
                bad = bad + jnp.sum((w > 0) & ~jnp.isfinite(r_new))
                diff = (log_ratio(posterior, schedule, old, cond=yb, start_step=start)
                        - log_ratio(posterior, schedule, new, cond=yb, start_step=start)
                        - beta * (r_old - jnp.where(w > 0, r_new, 0.0)))
                diff = jnp.where(w > 0, diff, 0.0)
                back_loss = 0.5 * jnp.sum(diff**2) / jnp.maximum(jnp.sum(w), 1.0)
                new_states.append(new[:, -1])
                new_rewards.append(jnp.where(w > 0, r_new, -jnp.inf))
        loss = on_loss + replay_loss + config.backtrack_weight * back_loss
        aux = (on_loss, replay_loss, back_loss, y, jnp.concatenate(new_states),
               jnp.concatenate(new_rewards), bad, beta)
        return loss, aux

    def init(params) -> RTBState:
        return RTBState(params, optimizer.init(params),
                        source.init(schedule.dim, schedule.times.dtype),
                        jnp.zeros((), jnp.int32))

    def step(key, state: RTBState):
        (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(
            state.params, key, state.source, state.step)
        on_loss, replay_loss, back_loss, y, x_new, r_new, bad, beta = aux
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        log_z = jnp.mean(eqx.combine(params, static).log_normalizer(y))
        # Ranked by the final target's reward: scores stay comparable while beta is scheduled.
        source_state = source.add(state.source, jax.lax.stop_gradient(x_new),
                                  jax.lax.stop_gradient(final_beta * r_new))
        info = RTBInfo(loss, on_loss, replay_loss, back_loss, log_z, bad,
                       jnp.asarray(beta, on_loss.dtype))
        return RTBState(params, opt_state, source_state, state.step + 1), info

    return init, step
