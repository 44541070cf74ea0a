"""KL-regularized RL on RTB's parametrization: the on-policy reverse-KL baseline of RTB.

Fine-tuning a prior diffusion to maximize ``E[beta log r(x_N)]`` with a KL penalty to the
prior's path measure is minimizing the reverse KL between path measures,

    ``KL(p_post || p_prior r^beta / Z) = E_post[log p_post(tau) - log p_prior(tau)
    - beta log r(x_N)] + log Z``,

whose minimizer is RTB's target. :func:`build_kl_rl_kernel` trains the same
:class:`~amortized_ppl.diffusion.rtb.RTBPosterior` (prior drift, correction network, Langevin
term) on it with the score-function (REINFORCE) gradient on the posterior's own trajectories:
with ``l(tau) = log p_post(tau) - log p_prior(tau) - beta log r(x_N)`` (minus the importance
log-weight),

    ``grad KL = E_post[(l(tau) - b) grad log p_post(tau)]``,

for any baseline ``b``; the kernel uses the leave-one-out mean of ``l`` over the batch (per
observation when amortized, where ``b = -log Z(y)`` comes from the learned ``log Z`` network,
trained by least squares on ``l``). The gradient is that of on-policy RTB with its optimal
``log Z``, so this kernel is RTB without its off-policy machinery (exploration, replay,
backtracking): Trust-PCL without the replay, in the terms of Deleu et al. (2025). ``-mean l`` is
a lower bound of ``log Z`` (the ELBO); the learned ``log Z`` follows it.

Pass it to :func:`~amortized_ppl.diffusion.fit.build_rtb` as ``kernel=build_kl_rl_kernel``: the
same posterior, optimizer and driver as RTB, so a comparison changes only the objective.
``config.replay_size``, ``backtrack_*`` and ``explore_*`` are ignored (on-policy), and the
source only supplies the observations of amortized training.

References:
    Deleu, T., Nouri, P., Bengio, Y., Precup, D. (2025). Relative trajectory balance
    is equivalent to Trust-PCL. arXiv:2509.01632.
    Fan, Y., Watkins, O., Du, Y., et al. (2023). DPOK: Reinforcement learning for fine-tuning
    text-to-image diffusion models. *NeurIPS*. (KL-regularized policy gradient for diffusions.)
    Richter, L., Boustati, A., Nüsken, N., Ruiz, F., Akyildiz, Ö. D. (2020). VarGrad: a
    low-variance gradient estimator for variational inference. *NeurIPS*.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from amortized_ppl.diffusion.rtb import (
    RTBConfig,
    RTBInfo,
    RTBState,
    beta_at,
    log_ratio,
    log_rewards,
    sample_posterior,
)
from amortized_ppl.diffusion.sampler import DiffusionSchedule
from amortized_ppl.diffusion.sources import OffPolicySource
from amortized_ppl.sharding import constrain_batch

__all__ = ["build_kl_rl_kernel", "kl_rl_surrogate"]


def kl_rl_surrogate(ratio: jax.Array, log_reward: jax.Array, *, beta=1.0,
                    log_z: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """The surrogate whose gradient is the reverse KL's, and the per-trajectory ``l``.

    Args:
        ratio: ``log p_post(tau) - log p_prior(tau)`` of on-policy trajectories, ``(B,)``, with
            gradients (:func:`~amortized_ppl.diffusion.rtb.log_ratio`).
        log_reward: ``log r(x_N)``, ``(B,)``.
        beta: The constraint's exponent.
        log_z: ``None`` (baseline: the leave-one-out mean of ``l``) or ``(B,)`` learned
            ``log Z(y)`` per trajectory (baseline ``-log Z``; it gets the least-squares gradient
            of ``0.5 (l + log Z)^2``).

    Returns:
        ``(surrogate (), l (B,))``; ``l`` is detached.
    """
    ell = jax.lax.stop_gradient(ratio - beta * log_reward)
    if log_z is None:
        num = ell.shape[0]
        baseline = (jnp.sum(ell) - ell) / max(num - 1, 1)
        return jnp.mean((ell - baseline) * ratio), ell
    advantage = ell + jax.lax.stop_gradient(log_z)
    return jnp.mean(advantage * ratio) + 0.5 * jnp.mean((ell + log_z) ** 2), ell


def build_kl_rl_kernel(
    static,
    schedule: DiffusionSchedule,
    log_reward_fn: Callable,
    optimizer: optax.GradientTransformation,
    config: RTBConfig,
    source: OffPolicySource,
    mesh=None,
):
    """``(init, step)`` of KL-regularized RL (on-policy reverse KL); RTB's kernel signature.

    Each ``step(key, state) -> (state, RTBInfo)`` samples ``config.batch_size`` trajectories
    from the current posterior (noise factor 1: on-policy), conditioned on the observations of a
    draw from ``source`` when amortized, and follows :func:`kl_rl_surrogate`. One observation:
    the baseline is the leave-one-out batch mean and ``log Z`` is fitted to ``-mean l`` by
    least squares (its own step size), a running ELBO; amortized: the ``log Z(y)`` network is
    the baseline. ``RTBInfo.on_policy_loss`` is the mean ``l`` (the reverse KL minus ``log Z``);
    the replay and backtracking parts are 0.

    Args:
        static: Non-trainable leaves of the posterior.
        schedule: The diffusion schedule.
        log_reward_fn: ``log r``, as for :func:`~amortized_ppl.diffusion.rtb.build_rtb_kernel`.
        optimizer: An optax transformation of the params.
        config: A validated :class:`~amortized_ppl.diffusion.rtb.RTBConfig` (``batch_size``,
            ``beta``; the off-policy fields are ignored).
        source: Supplies observations (``joint_samples``) or nothing (``prioritized_replay``,
            whose buffer stays empty).
        mesh: ``None`` or a :class:`jax.sharding.Mesh`: the trajectories split over its devices.

    Returns:
        ``init(params) -> RTBState`` and ``step(key, state) -> (RTBState, RTBInfo)``.
    """

    def loss_of(params, key, source_state, step):
        beta = beta_at(config.beta, step)
        posterior = eqx.combine(params, static)
        frozen = eqx.combine(jax.lax.stop_gradient(params), static)
        key_y, key_traj = jax.random.split(key)
        y = constrain_batch(source.sample(key_y, source_state, config.batch_size).cond, mesh,
                            config.batch_size)
        traj = sample_posterior(key_traj, frozen, schedule, config.batch_size, cond=y)
        traj = constrain_batch(traj, mesh, config.batch_size)
        log_r = log_rewards(log_reward_fn, traj.states[:, -1], y)
        ratio = log_ratio(posterior, schedule, traj.states, cond=y)
        if y is None:
            surrogate, ell = kl_rl_surrogate(ratio, log_r, beta=beta)
            log_z = posterior.log_normalizer()
            surrogate = surrogate + 0.5 * (log_z + jax.lax.stop_gradient(jnp.mean(ell))) ** 2
        else:
            surrogate, ell = kl_rl_surrogate(ratio, log_r, beta=beta,
                                             log_z=posterior.log_normalizer(y))
        bad = jnp.sum(~jnp.isfinite(log_r))
        return surrogate, (jnp.mean(ell), y, bad, beta)

    def init(params) -> RTBState:
        return RTBState(params, optimizer.init(params),
                        source.init(schedule.dim, schedule.times.dtype),
                        jnp.zeros((), jnp.int32))

    def step(key, state: RTBState):
        (loss, (mean_ell, y, bad, beta)), grads = jax.value_and_grad(loss_of, has_aux=True)(
            state.params, key, state.source, state.step)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        log_z = jnp.mean(eqx.combine(params, static).log_normalizer(y))
        zero = jnp.zeros((), loss.dtype)
        # The loop's non-finite policy reads `loss`: report the mean l (finite iff the step is).
        info = RTBInfo(mean_ell, mean_ell, zero, zero, log_z, bad, jnp.asarray(beta, loss.dtype))
        return RTBState(params, opt_state, state.source, state.step + 1), info

    return init, step
