"""The posterior sampler that relative trajectory balance trains, and how to draw from it.

:class:`RTBPosterior` is a diffusion sampler whose drift is the prior's plus a learned
correction (and, optionally, a learned scale on the constraint's gradient and a learned noise),
with a learned ``log Z`` (:class:`LogZNetwork` when amortized over observations);
:func:`sample_posterior` runs its chain; :func:`reward_gradient` and
:func:`langevin_scale_network` build the gradient guidance it may use. The objective and the
training kernel are in :mod:`~amortized_ppl.diffusion.rtb`, which re-exports these names.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from amortized_ppl._checks import check_int, check_key
from amortized_ppl.diffusion.sampler import (
    DiffusionSchedule,
    DriftNetwork,
    Trajectory,
    check_cond,
    check_points,
    normal_log_prob,
    sample_trajectories,
)
from amortized_ppl.linalg import solve_lower

_LOG_2PI = math.log(2.0 * math.pi)

__all__ = [
    "LogZNetwork",
    "RTBPosterior",
    "langevin_scale_network",
    "log_rewards",
    "reward_gradient",
    "sample_posterior",
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
