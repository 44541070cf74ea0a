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

from amortized_ppl._checks import check_int
from amortized_ppl.diffusion.rtb_posterior import (
    LogZNetwork,
    RTBPosterior,
    langevin_scale_network,
    log_rewards,
    reward_gradient,
    sample_posterior,
)
from amortized_ppl.diffusion.sampler import (
    DiffusionSchedule,
    Trajectory,
    as_states,
    check_cond,
    noising_trajectories,
    normal_log_prob,
)
from amortized_ppl.diffusion.sources import OffPolicySource
from amortized_ppl.sharding import constrain_batch

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
