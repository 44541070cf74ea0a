"""Diffusion posterior sampling (DPS): guide a prior diffusion with the likelihood's gradient.

DPS (Chung et al., 2023) is the training-free baseline for sampling ``p(x | y) ∝ p(x) r(x)``,
``r(x) = p(y | x)``, with a prior diffusion. On the chain of :mod:`amortized_ppl.diffusion.sampler`
(``x_0`` noise ``-> x_N`` data), the exact posterior kernel is the prior kernel tilted by the
noised likelihood ``p(y | x_{n+1}) = E[r(x_N) | x_{n+1}]``; in the small-step limit its mean is
the prior mean plus ``sigma_n^2 grad log p(y | x_n)``. DPS replaces the intractable
``p(y | x_n)`` by ``r(x0_hat(x_n))``, the likelihood at the denoised estimate (Tweedie's
``x0_hat(x_n) = E[x_N | x_n]``), and differentiates through the denoiser:

``x_{n+1} = a_n x_n + h_n f(x_n, t_n) + scale * s_n * g_n + sigma_n eps``,

with ``g_n = grad_{x_n} log r(x0_hat(x_n))`` and a step size chosen by ``mode``:

- ``"variance"`` (default): ``s_n = sigma_n^2``. With ``scale = 1`` this is the DPS approximation
  of the exact posterior drift. It ignores the spread of ``x_N`` given ``x_n`` (it treats
  ``p(y | x_n)`` as ``r`` at a point, whose precision is too high while much noise is left), so the
  guidance is too strong early in the chain: tuning ``scale`` below 1 often helps.
- ``"normalized"``: Chung et al.'s step for a Gaussian likelihood ``y = A(x) + noise``: the
  gradient of the residual norm, ``x_{n+1} = mean_n - scale * grad_{x_n} ||y - A(x0_hat(x_n))||``
  (their official code; the paper's ``zeta_i = zeta' / ||y - A(x0_hat)||`` applied to the squared
  norm is the same step with ``scale = 2 zeta'``). It needs the residual, not just ``log r``:
  pass ``residual_fn(x0_hat (d,)) -> y - A(x0_hat)`` (any shape); ``log_likelihood`` is then not
  used (it may be ``None``). Its size does not shrink with ``sigma_n``, so its ``scale`` has other
  units and needs its own tuning (about 0.01 to 0.02 on the 2-D toy with 100 bridge steps).

The denoised estimate comes from the drift itself: the generative mean ``a_n x + h_n f(x, t_n)``
approximates the noising chain's ``A_n x + B_n E[x_N | x_n = x]`` (``bridge_x_coef``,
``bridge_data_coef``), hence :func:`denoised_estimate`
``x0_hat(x, n) = (a_n x + h_n f(x, t_n) - A_n x) / B_n`` (``B_n > 0`` for ``n < N`` in both
schedules); for the exact drift of a Gaussian mixture it is the exact posterior mean
(:func:`amortized_ppl.diffusion.prior.gmm_posterior_mean`).

DPS is biased: even with the exact prior drift and infinitely many steps its samples do not follow
the posterior (on the 2-D toy, with ``scale = 1``, the centre mode gets about 0.90 of the mass
instead of 0.64). It is the baseline that relative trajectory balance is compared with;
:func:`dps_scale_sweep` tunes its ``scale`` on a score.

References:
    Chung, H., Kim, J., Mccann, M. T., Klasky, M. L., Ye, J. C. (2023). Diffusion posterior
    sampling for general noisy inverse problems. *ICLR*.
    Efron, B. (2011). Tweedie's formula and selection bias. *Journal of the American Statistical
    Association*.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl._checks import check_int, check_key
from amortized_ppl.diffusion.sampler import (
    DiffusionSchedule,
    Trajectory,
    check_points,
    normal_log_prob,
)

__all__ = [
    "DPS_MODES",
    "DPSSweepResult",
    "denoised_estimate",
    "dps_sample",
    "dps_scale_sweep",
]

DPS_MODES = ("variance", "normalized")
"""The step-size conventions of :func:`dps_sample` (see the module docstring)."""


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def _check_schedule(schedule: DiffusionSchedule) -> DiffusionSchedule:
    """The denoiser divides by ``B_n``: all of them must be positive (checked when concrete)."""
    if isinstance(schedule.bridge_data_coef, jax.core.Tracer):
        return schedule
    coef = np.asarray(schedule.bridge_data_coef)  # numpy: no staging when called under jit
    if not np.all(coef > 0):
        bad = int(np.argmin(coef > 0))
        raise ValueError(
            f"schedule: the denoised estimate needs bridge_data_coef B_n > 0 for every n < N; "
            f"B_{bad} = {float(coef[bad])}."
        )
    return schedule


def _check_step(n, schedule: DiffusionSchedule):
    if isinstance(n, jax.core.Tracer):
        return n
    if jnp.ndim(n) != 0 or not jnp.issubdtype(jnp.asarray(n).dtype, jnp.integer):
        raise ValueError(f"n: expected an integer step in [0, {schedule.num_steps}), got {n!r}.")
    if not 0 <= int(n) < schedule.num_steps:
        raise ValueError(
            f"n: expected a step in [0, N) = [0, {schedule.num_steps}) (the denoiser acts on "
            f"x_0 .. x_(N-1)), got {int(n)}."
        )
    return jnp.asarray(n, jnp.int32)


def _check_scale(scale):
    if isinstance(scale, jax.core.Tracer):
        return scale
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale: expected a finite float >= 0, got {scale!r}.") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"scale: expected a finite float >= 0, got {scale!r}.")
    return jnp.asarray(value, jnp.result_type(float))


def _probe(fn: Callable, name: str, schedule: DiffusionSchedule):
    """Abstract output of ``fn`` on one point ``(d,)``; a clear error when it fails."""
    if not callable(fn):
        raise ValueError(f"{name}: expected a callable of x ({schedule.dim},), got {fn!r}.")
    point = jax.ShapeDtypeStruct((schedule.dim,), schedule.times.dtype)
    try:
        out = jax.eval_shape(fn, point)
    except Exception as err:  # re-raised with the argument's name
        raise ValueError(
            f"{name}: calling it on one point of shape ({schedule.dim},) failed: {err}"
        ) from err
    if not hasattr(out, "shape") or not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"{name}: expected a float array, got {out!r}.")
    return out


def _check_guidance_fns(log_likelihood, residual_fn, mode: str, schedule: DiffusionSchedule):
    if mode not in DPS_MODES:
        raise ValueError(f"mode: expected one of {DPS_MODES}, got {mode!r}.")
    if mode == "variance":
        if residual_fn is not None:
            raise ValueError(
                "residual_fn: only used by mode='normalized'; mode='variance' guides with "
                "log_likelihood. Drop residual_fn or pass mode='normalized'."
            )
        if log_likelihood is None:
            raise ValueError("log_likelihood: required by mode='variance'.")
        out = _probe(log_likelihood, "log_likelihood", schedule)
        if out.shape != ():
            raise ValueError(
                f"log_likelihood: expected x ({schedule.dim},) -> a scalar log p(y | x), got "
                f"shape {out.shape}. Sum over the observations."
            )
    else:
        if residual_fn is None:
            raise ValueError(
                "residual_fn: required by mode='normalized' (Chung et al.'s step is the gradient "
                "of ||y - A(x0_hat)||): pass residual_fn=lambda x: y - forward(x)."
            )
        _probe(residual_fn, "residual_fn", schedule)
        if log_likelihood is not None:
            _probe(log_likelihood, "log_likelihood", schedule)


# ---------------------------------------------------------------------------------------------
# The denoiser and the guidance
# ---------------------------------------------------------------------------------------------


def _denoise(schedule: DiffusionSchedule, n, x, drift):
    """``(a_n x + h_n f - A_n x) / B_n`` for one point and its drift ``f``."""
    a, h = schedule.mean_scale[n], schedule.drift_step[n]
    return ((a - schedule.bridge_x_coef[n]) * x + h * drift) / schedule.bridge_data_coef[n]


def denoised_estimate(drift_fn: Callable, schedule: DiffusionSchedule, x, n) -> jax.Array:
    """Tweedie's estimate ``x0_hat(x, n) ≈ E[x_N | x_n = x]`` implied by a prior drift.

    ``x0_hat = (a_n x + h_n f(x, t_n) - A_n x) / B_n``: the generative mean
    ``a_n x + h_n f(x, t_n)`` stands for the noising chain's ``A_n x + B_n E[x_N | x_n = x]``.
    Exact for the exact drift (:func:`amortized_ppl.diffusion.prior.gmm_exact_drift`). Pure
    ``jnp`` once checked: differentiable in ``x``.

    Args:
        drift_fn: The prior drift ``(x (d,), t) -> (d,)`` (a function or an equinox module).
        schedule: The :class:`~amortized_ppl.diffusion.sampler.DiffusionSchedule`.
        x: States ``x_n``, shape ``(..., d)``.
        n: The step, an int in ``[0, N)`` (may be traced).

    Returns:
        The estimates, shape ``(..., d)``.

    Examples:
        >>> from amortized_ppl.diffusion import brownian_bridge_schedule
        >>> schedule = brownian_bridge_schedule(10, 2)
        >>> denoised_estimate(lambda x, t: -x, schedule, jnp.ones((3, 2)), 4).shape
        (3, 2)
    """
    _check_schedule(schedule)
    n = _check_step(n, schedule)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if x.ndim < 1 or x.shape[-1] != schedule.dim:
        raise ValueError(f"x: expected shape (..., {schedule.dim}), got {x.shape}.")
    flat = x.reshape(-1, schedule.dim)
    t = schedule.times[n]
    out = jax.vmap(lambda xi: _denoise(schedule, n, xi, drift_fn(xi, t)))(flat)
    return out.reshape(x.shape)


def _likelihood_direction(log_likelihood: Callable, x0):
    """``grad log r(x0)``, the ``"variance"`` mode's direction at the denoised estimate."""
    return jax.grad(lambda z: jnp.asarray(log_likelihood(z)).astype(z.dtype))(x0)


def _residual_direction(residual_fn: Callable, x0):
    """``-grad ||res(x0)||`` (0 where the residual vanishes): the ``"normalized"`` direction."""
    res, pullback = jax.vjp(residual_fn, x0)
    norm = jnp.sqrt(jnp.sum(res**2))
    (grad_half_sq,) = pullback(res)  # grad of ||res||^2 / 2
    return -grad_half_sq / jnp.where(norm > 0, norm, 1.0)


def _drift_and_guidance(drift_fn, schedule, n, x, direction_fn):
    """Prior drift ``f(x, t_n)`` and ``grad_x phi(x0_hat(x))`` for one point, in one VJP."""
    t = schedule.times[n]
    drift, pullback = jax.vjp(lambda xi: drift_fn(xi, t), x)
    g0 = direction_fn(_denoise(schedule, n, x, drift))  # d phi / d x0_hat, (d,)
    a, h = schedule.mean_scale[n], schedule.drift_step[n]
    (through_drift,) = pullback(g0.astype(drift.dtype))
    g = ((a - schedule.bridge_x_coef[n]) * g0 + h * through_drift) / schedule.bridge_data_coef[n]
    return drift, g


@eqx.filter_jit
def _run_dps(key, drift_fn, schedule, x_start, scale, guide_fn, mode):
    idx = jnp.arange(schedule.num_steps)
    keys = jax.random.split(key, idx.shape[0])
    if mode == "variance":
        direction_fn = lambda x0: _likelihood_direction(guide_fn, x0)
    else:
        direction_fn = lambda x0: _residual_direction(guide_fn, x0)

    def body(x, inputs):
        n, step_key = inputs
        per_point = lambda xi: _drift_and_guidance(drift_fn, schedule, n, xi, direction_fn)
        drift, g = jax.vmap(per_point)(x)
        std = schedule.noise_std[n]
        step = scale * std**2 if mode == "variance" else scale
        mean = schedule.mean_scale[n] * x + schedule.drift_step[n] * drift + step * g
        eps = jax.random.normal(step_key, x.shape, x.dtype)
        x_next = mean + std * eps
        return x_next, (x_next, normal_log_prob(x_next, mean, std))

    _, (xs, log_pf) = jax.lax.scan(body, x_start, (idx, keys))
    states = jnp.concatenate([x_start[None], xs], axis=0)
    return Trajectory(jnp.swapaxes(states, 0, 1), jnp.swapaxes(log_pf, 0, 1))


def _prepare(key, drift_fn, schedule, log_likelihood, num, scale, mode, residual_fn, x_init):
    """Check the inputs of :func:`dps_sample`; return the runner's arguments."""
    check_key(key, "key")
    num = check_int(num, "num")
    _check_schedule(schedule)
    _check_guidance_fns(log_likelihood, residual_fn, mode, schedule)
    scale = _check_scale(scale)
    key_init, key_chain = jax.random.split(key)  # as sample_trajectories: same key, same noise
    if x_init is None:
        dtype = schedule.times.dtype
        x_init = schedule.init_std * jax.random.normal(key_init, (num, schedule.dim), dtype)
    else:
        x_init = check_points(x_init, schedule, num, "x_init")
    guide_fn = log_likelihood if mode == "variance" else residual_fn
    return key_chain, x_init, scale, guide_fn


def _first_non_finite(states) -> tuple[int, int] | None:
    """``(step, number of trajectories)`` of the first non-finite state, or None."""
    finite = np.asarray(jnp.all(jnp.isfinite(states), axis=-1))  # (num, N + 1)
    if finite.all():
        return None
    bad_steps = ~finite.all(axis=0)
    step = int(np.argmax(bad_steps))
    return step, int(np.sum(~finite[:, step]))


def dps_sample(
    key: jax.Array,
    drift_fn: Callable,
    schedule: DiffusionSchedule,
    log_likelihood: Callable | None,
    num: int,
    *,
    scale=1.0,
    mode: str = "variance",
    residual_fn: Callable | None = None,
    x_init=None,
) -> Trajectory:
    """Sample ``num`` DPS trajectories: the prior chain plus the denoised likelihood's gradient.

    ``x_{n+1} = a_n x_n + h_n f(x_n, t_n) + scale * s_n * g_n + sigma_n eps`` with
    ``g_n = grad_{x_n} log r(x0_hat(x_n))`` (through :func:`denoised_estimate`) and
    ``s_n = sigma_n^2`` (``mode="variance"``), or ``g_n = -grad_{x_n} ||residual_fn(x0_hat)||``
    and ``s_n = 1`` (``mode="normalized"``, Chung et al.'s step); see the module docstring. One
    ``jax.lax.scan``, compiled once per drift, schedule shape, guidance function, mode and ``num``
    (``scale`` is traced: changing it does not recompile). The keys are consumed as by
    :func:`~amortized_ppl.diffusion.sampler.sample_trajectories`: with zero guidance (``scale = 0``
    or a constant ``log_likelihood``) the states equal the prior sampler's for the same key.

    Args:
        key: PRNG key; the result is deterministic given it.
        drift_fn: The prior drift ``(x (d,), t) -> (d,)``, differentiable in ``x`` (a function or
            an equinox module, e.g. a trained ``DriftNetwork``).
        schedule: The :class:`~amortized_ppl.diffusion.sampler.DiffusionSchedule`.
        log_likelihood: ``log r(x) = log p(y | x)`` of one point, ``x (d,) -> ()``,
            differentiable; not used by ``mode="normalized"`` (may be ``None`` there).
        num: Number of trajectories.
        scale: Guidance scale, a finite float ``>= 0`` (0: the prior); 1 is the DPS
            approximation of the posterior drift in ``"variance"`` mode.
        mode: ``"variance"`` or ``"normalized"``.
        residual_fn: ``x (d,) -> y - A(x)`` (any shape), required by and only used in
            ``mode="normalized"``.
        x_init: Start states ``(num, d)`` or ``(d,)``; default a draw from the start
            distribution.

    Returns:
        A :class:`~amortized_ppl.diffusion.sampler.Trajectory`: ``states (num, N + 1, d)``
        (samples ``states[:, -1]``) and ``log_pf (num, N)``, the log-densities of the transitions
        under the guided kernel that drew them (``Normal(guided mean, sigma_n^2 I)``; the prior
        kernel's are ``trajectory_log_prob(drift_fn, schedule, states)``).

    Raises:
        ValueError: On a bad argument, named in the message (``num``, ``scale``, ``mode``,
            ``log_likelihood`` not scalar-valued on ``(d,)``, ``residual_fn``, ``x_init``, a
            schedule with some ``B_n <= 0``).
        FloatingPointError: When a sampled state is NaN or Inf (a too large ``scale``, or a
            log-likelihood whose gradient is not finite at the denoised estimates); nothing is
            clipped. Not checked when called under a JAX transformation.

    Examples:
        >>> from amortized_ppl.diffusion import brownian_bridge_schedule
        >>> schedule = brownian_bridge_schedule(20, 2)
        >>> log_r = lambda x: -0.5 * jnp.sum((x - 1.0) ** 2)
        >>> traj = dps_sample(jax.random.key(0), lambda x, t: -x, schedule, log_r, 8)
        >>> traj.states.shape, traj.log_pf.shape
        ((8, 21, 2), (8, 20))
    """
    key_chain, x_init, scale, guide_fn = _prepare(
        key, drift_fn, schedule, log_likelihood, num, scale, mode, residual_fn, x_init
    )
    traj = _run_dps(key_chain, drift_fn, schedule, x_init, scale, guide_fn, mode)
    if not isinstance(traj.states, jax.core.Tracer):
        bad = _first_non_finite(traj.states)
        if bad is not None:
            raise FloatingPointError(
                f"dps_sample: non-finite states from step {bad[0]} on ({bad[1]} of {num} "
                f"trajectories), with mode={mode!r} and scale={float(scale)}. Lower the scale "
                "or check that the log-likelihood's gradient is finite at the denoised estimates."
            )
    return traj


class DPSSweepResult(NamedTuple):
    """What :func:`dps_scale_sweep` returns, one entry per scale.

    Attributes:
        scales: The scales, shape ``(S,)``.
        samples: Final states ``x_N``, shape ``(S, num, d)`` (NaN/Inf where the run diverged).
        scores: ``score_fn(samples[i])``, shape ``(S,)``; NaN where the run diverged.
        is_finite: Whether all of a run's states were finite, bool ``(S,)``.
    """

    scales: np.ndarray
    samples: jax.Array
    scores: np.ndarray
    is_finite: np.ndarray


def dps_scale_sweep(
    key: jax.Array,
    drift_fn: Callable,
    schedule: DiffusionSchedule,
    log_likelihood: Callable | None,
    num: int,
    scales,
    score_fn: Callable,
    *,
    mode: str = "variance",
    residual_fn: Callable | None = None,
    x_init=None,
) -> DPSSweepResult:
    """Run :func:`dps_sample` at several scales with the same key and score each run.

    The same key (common random numbers) for every scale makes the comparison less noisy; the
    sampler is compiled once. A diverged run (non-finite states) does not raise: its score is NaN
    and ``is_finite`` False. Pick the best scale from ``scores`` by the score's own sense (e.g.
    ``scales[np.nanargmin(scores)]`` for a distance to a reference).

    Args:
        key, drift_fn, schedule, log_likelihood, num, mode, residual_fn, x_init: As for
            :func:`dps_sample`.
        scales: Guidance scales, a non-empty 1-D sequence of finite floats ``>= 0``.
        score_fn: ``samples (num, d) -> scalar`` (e.g. a distance to reference samples).

    Returns:
        A :class:`DPSSweepResult`.

    Examples:
        >>> from amortized_ppl.diffusion import brownian_bridge_schedule
        >>> schedule = brownian_bridge_schedule(20, 1)
        >>> log_r = lambda x: -0.5 * jnp.sum((x - 1.0) ** 2)
        >>> out = dps_scale_sweep(jax.random.key(0), lambda x, t: -x, schedule, log_r, 64,
        ...                       [0.0, 1.0], lambda s: float(jnp.mean(s)))
        >>> out.scores.shape
        (2,)
    """
    scales = np.asarray(scales, dtype=np.float64)
    if scales.ndim != 1 or scales.size == 0:
        raise ValueError(f"scales: expected a non-empty 1-D sequence, got shape {scales.shape}.")
    for value in scales:
        _check_scale(value)
    if not callable(score_fn):
        raise ValueError(f"score_fn: expected a callable samples (num, d) -> scalar, got "
                         f"{score_fn!r}.")
    key_chain, x_init, _, guide_fn = _prepare(
        key, drift_fn, schedule, log_likelihood, num, 0.0, mode, residual_fn, x_init
    )
    samples, scores, is_finite = [], [], []
    for value in scales:
        scale = jnp.asarray(value, jnp.result_type(float))
        states = _run_dps(key_chain, drift_fn, schedule, x_init, scale, guide_fn, mode).states
        finite = _first_non_finite(states) is None
        samples.append(states[:, -1])
        is_finite.append(finite)
        scores.append(float(score_fn(states[:, -1])) if finite else math.nan)
    return DPSSweepResult(scales, jnp.stack(samples), np.asarray(scores), np.asarray(is_finite))
