"""A discrete-time diffusion sampler: Gaussian generative kernels, a fixed noising kernel, scans.

Convention (the GFlowNet one, as in relative trajectory balance): a trajectory is
``x_0 -> x_1 -> ... -> x_N``, with ``x_0`` the noise end and ``x_N`` the data end, and time
``t_n = n / N`` runs from 0 (noise) to 1 (data). Two kernels act on it:

- the **generative** (forward, denoising) kernel, the policy that a network parameterizes:
  ``p(x_{n+1} | x_n) = Normal(a_n x_n + h_n f(x_n, t_n), sigma_n^2 I)`` with a drift network
  ``f`` and a fixed schedule ``(a_n, h_n, sigma_n)``; the start is
  ``x_0 ~ Normal(0, init_std^2 I)`` (a point mass at the origin when ``init_std = 0``);
- the fixed **noising** (backward) kernel ``q(x_n | x_{n+1}) = Normal(c_n x_{n+1}, tau_n^2 I)``,
  which takes a data point ``x_N`` back to noise. A zero ``tau_n`` is a point mass: its log-density
  counts as 0, as does that of a point-mass start, so that the two cancel in trajectory balance.

Under the noising chain, ``x_n | x_N ~ Normal(m_n x_N, v_n I)`` (``marginal_scale``,
``marginal_std``), and ``E[x_{n+1} | x_n, x_N] = A_n x_n + B_n x_N`` (``bridge_x_coef``,
``bridge_data_coef``). The drift ``f`` whose mean ``a_n x + h_n f(x, t_n)`` equals
``E_q[x_{n+1} | x_n = x]`` is the maximum-likelihood policy for data pushed through ``q``; for a
Gaussian-mixture data distribution it is available in closed form
(:func:`amortized_ppl.diffusion.prior.gmm_exact_drift`).

Two schedules are provided:

- :func:`brownian_bridge_schedule`: the PIS / GFlowNet schedule of the RTB toy: ``x_0 = 0``,
  ``a_n = 1``, ``h_n = dt``, ``sigma_n = sigma sqrt(dt)`` (Euler-Maruyama of
  ``dx = f dt + sigma dW``), and the Brownian bridge pinned at 0 as the noising kernel:
  ``c_n = t_n / t_{n+1}``, ``tau_n^2 = sigma^2 dt t_n / t_{n+1}``; marginals ``m_n = t_n``,
  ``v_n = sigma^2 t_n (1 - t_n)``.
- :func:`vp_schedule`: DDPM (variance preserving, linear or cosine ``beta``) with generative
  step ``n`` undoing DDPM step ``k = N - n``: ``q(x_n | x_{n+1}) = Normal(sqrt(1 - beta_k)
  x_{n+1}, beta_k I)``, ``x_0 ~ Normal(0, I)``, ``a_n = 1 / sqrt(1 - beta_k)``,
  ``h_n = beta_k / sqrt(1 - beta_k)``, ``sigma_n^2 = beta_k`` (so ``f`` is a score).

A drift function is ``drift_fn(x (d,), t ()) -> (d,)``, or ``drift_fn(x, t, cond (c,))`` when a
conditioning vector is passed; it sees one state (the functions here ``vmap`` it).

References:
    Venkatraman, S., Jain, M., Scimeca, L., et al. (2024). Amortizing intractable inference in
    diffusion models for vision, language, and control. *NeurIPS*.
    Zhang, Q., Chen, Y. (2022). Path integral sampler: a stochastic control approach for sampling.
    *ICLR*.
    Ho, J., Jain, A., Abbeel, P. (2020). Denoising diffusion probabilistic models. *NeurIPS*.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl._checks import check_int, check_key, check_positive_float

__all__ = [
    "DiffusionSchedule",
    "DriftNetwork",
    "Trajectory",
    "backtrack",
    "backward_log_prob",
    "brownian_bridge_schedule",
    "initial_log_prob",
    "noising_trajectories",
    "sample_trajectories",
    "trajectory_log_prob",
    "vp_schedule",
]

_LOG_2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------


class DiffusionSchedule(NamedTuple):
    """Fixed coefficients of the generative and noising kernels of an ``N``-step chain.

    Index ``n`` runs over transitions ``x_n -> x_{n+1}`` (arrays of shape ``(N,)``) or states
    (shape ``(N + 1,)``); see the module docstring for the kernels. Build one with
    :func:`brownian_bridge_schedule` or :func:`vp_schedule`. It is a pytree: close over it in
    jitted code (``dim`` is a Python int).

    Attributes:
        times: ``t_n = n / N``, shape ``(N + 1,)``: 0 at the noise end, 1 at the data end.
        mean_scale: ``a_n``, shape ``(N,)``.
        drift_step: ``h_n``, shape ``(N,)``.
        noise_std: ``sigma_n > 0``, shape ``(N,)``.
        back_scale: ``c_n``, shape ``(N,)``.
        back_std: ``tau_n >= 0``, shape ``(N,)``.
        marginal_scale: ``m_n`` with ``x_n | x_N ~ Normal(m_n x_N, v_n I)`` under the noising
            chain, shape ``(N + 1,)``; ``m_N = 1``.
        marginal_std: ``sqrt(v_n)``, shape ``(N + 1,)``; ``v_N = 0``.
        bridge_x_coef: ``A_n`` in ``E[x_{n+1} | x_n, x_N] = A_n x_n + B_n x_N``, shape ``(N,)``.
        bridge_data_coef: ``B_n``, shape ``(N,)``.
        init_std: SD of the start ``x_0 ~ Normal(0, init_std^2 I)``; 0 for a point mass at 0.
        dim: State dimension ``d``.
    """

    times: jax.Array
    mean_scale: jax.Array
    drift_step: jax.Array
    noise_std: jax.Array
    back_scale: jax.Array
    back_std: jax.Array
    marginal_scale: jax.Array
    marginal_std: jax.Array
    bridge_x_coef: jax.Array
    bridge_data_coef: jax.Array
    init_std: jax.Array
    dim: int

    @property
    def num_steps(self) -> int:
        """The number of transitions ``N``."""
        return self.mean_scale.shape[0]




def _build_schedule(times, mean_scale, drift_step, noise_std, back_scale, back_std, init_std, dim):
    """Complete the kernels with the noising marginals and bridge coefficients (float64 numpy)."""
    num_steps = len(mean_scale)
    m = np.ones(num_steps + 1)
    v = np.zeros(num_steps + 1)
    for n in range(num_steps - 1, -1, -1):
        m[n] = back_scale[n] * m[n + 1]
        v[n] = back_scale[n] ** 2 * v[n + 1] + back_std[n] ** 2
    # x_{n+1} | x_N ~ N(m_{n+1} x_N, v_{n+1}), x_n = c_n x_{n+1} + tau_n eps: Gaussian conditioning.
    tau2, c, v_next = back_std**2, back_scale, v[1:]
    denom = tau2 + c**2 * v_next
    informative = denom > 0
    safe = np.where(informative, denom, 1.0)
    x_coef = np.where(informative, c * v_next / safe, 0.0)
    data_coef = np.where(informative, tau2 * m[1:] / safe, m[1:])
    dtype = jnp.result_type(float)
    arrays = [times, mean_scale, drift_step, noise_std, back_scale, back_std, m, np.sqrt(v),
              x_coef, data_coef, np.asarray(init_std)]
    return DiffusionSchedule(*(jnp.asarray(a, dtype) for a in arrays), dim)


def brownian_bridge_schedule(
    num_steps: int, dim: int, *, sigma: float = math.sqrt(5.0)
) -> DiffusionSchedule:
    """The PIS / GFlowNet schedule: start at 0, Euler steps of ``dx = f dt + sigma dW``.

    The noising kernel is the Brownian bridge from ``x_N`` back to ``x_0 = 0``, so
    ``x_n | x_N ~ Normal(t_n x_N, sigma^2 t_n (1 - t_n) I)``. The RTB toy uses ``sigma^2 = 5``
    and 100 steps.

    Args:
        num_steps: Number of transitions ``N >= 1``.
        dim: State dimension ``d >= 1``.
        sigma: Diffusion coefficient (positive).

    Examples:
        >>> brownian_bridge_schedule(100, 2).num_steps
        100
    """
    num_steps = check_int(num_steps, "num_steps")
    dim = check_int(dim, "dim")
    sigma = check_positive_float(sigma, "sigma")
    times = np.arange(num_steps + 1) / num_steps
    dt = 1.0 / num_steps
    ones = np.ones(num_steps)
    ratio = times[:-1] / times[1:]
    return _build_schedule(
        times, ones, dt * ones, sigma * math.sqrt(dt) * ones, ratio,
        sigma * np.sqrt(dt * ratio), 0.0, dim,
    )


def vp_schedule(
    num_steps: int,
    dim: int,
    *,
    kind: str = "linear",
    beta_min: float = 0.1,
    beta_max: float = 20.0,
) -> DiffusionSchedule:
    """A DDPM (variance-preserving) schedule, run from noise ``x_0 ~ Normal(0, I)`` to data.

    ``alpha_bar(s) = exp(-(beta_min s + (beta_max - beta_min) s^2 / 2))`` for ``kind="linear"``
    (the discretized VP SDE) or the cosine schedule of Nichol & Dhariwal for ``kind="cosine"``;
    ``beta_k = 1 - alpha_bar(k / N) / alpha_bar((k - 1) / N)`` (at most 0.999), and generative step
    ``n`` undoes DDPM step ``k = N - n``. Data should be scaled to about unit variance.

    Args:
        num_steps: Number of transitions ``N >= 1``.
        dim: State dimension ``d >= 1``.
        kind: ``"linear"`` or ``"cosine"``.
        beta_min, beta_max: The linear schedule's rates at the data and noise ends.

    Examples:
        >>> vp_schedule(50, 3, kind="cosine").init_std
        Array(1., dtype=float32)
    """
    num_steps = check_int(num_steps, "num_steps")
    dim = check_int(dim, "dim")
    s = np.arange(num_steps + 1) / num_steps
    if kind == "linear":
        beta_min = check_positive_float(beta_min, "beta_min")
        beta_max = check_positive_float(beta_max, "beta_max")
        if beta_max < beta_min:
            raise ValueError(f"beta_max: expected >= beta_min = {beta_min}, got {beta_max}.")
        alpha_bar = np.exp(-(beta_min * s + 0.5 * (beta_max - beta_min) * s**2))
    elif kind == "cosine":
        f = np.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        alpha_bar = f / f[0]
    else:
        raise ValueError(f"kind: expected 'linear' or 'cosine', got {kind!r}.")
    beta = np.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 1e-8, 0.999)  # beta_k, k = 1..N
    beta = beta[::-1]  # generative step n undoes DDPM step k = N - n
    keep = np.sqrt(1.0 - beta)
    return _build_schedule(
        np.arange(num_steps + 1) / num_steps, 1.0 / keep, beta / keep, np.sqrt(beta), keep,
        np.sqrt(beta), 1.0, dim,
    )


# ---------------------------------------------------------------------------------------------
# Drift network
# ---------------------------------------------------------------------------------------------


class DriftNetwork(eqx.Module):
    """A time-conditioned MLP ``(x (d,), t (), cond (c,) | None) -> drift (d,)``.

    The input is ``x / input_scale``, sinusoidal features of ``t`` (``sin`` and ``cos`` of
    ``pi 2^j t`` for ``j < num_frequencies``, and ``t`` itself) and ``cond`` when ``cond_dim > 0``
    (the amortized drift of a posterior conditioned on an observation). The last layer's weights
    and bias start at ``final_init_scale`` times their default, so the drift starts near 0.

    Examples:
        >>> net = DriftNetwork(2, key=jax.random.key(0))
        >>> net(jnp.zeros(2), 0.5).shape
        (2,)
    """

    layers: tuple[eqx.nn.Linear, ...]
    dim: int = eqx.field(static=True)
    cond_dim: int = eqx.field(static=True)
    num_frequencies: int = eqx.field(static=True)
    input_scale: float = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        *,
        width: int = 64,
        depth: int = 2,
        num_frequencies: int = 6,
        cond_dim: int = 0,
        input_scale: float = 1.0,
        final_init_scale: float = 1e-2,
        activation: Callable = jax.nn.silu,
        key: jax.Array,
    ):
        self.dim = check_int(dim, "dim")
        width = check_int(width, "width")
        depth = check_int(depth, "depth")
        self.num_frequencies = check_int(num_frequencies, "num_frequencies", 0)
        self.cond_dim = check_int(cond_dim, "cond_dim", 0)
        self.input_scale = check_positive_float(input_scale, "input_scale")
        self.activation = activation
        sizes = [dim + 2 * self.num_frequencies + 1 + self.cond_dim] + [width] * depth + [dim]
        keys = jax.random.split(key, len(sizes) - 1)
        layers = [eqx.nn.Linear(i, o, key=k) for i, o, k in zip(sizes[:-1], sizes[1:], keys)]
        last = layers[-1]
        last = eqx.tree_at(lambda lin: (lin.weight, lin.bias), last,
                           (last.weight * final_init_scale, last.bias * final_init_scale))
        self.layers = tuple(layers[:-1]) + (last,)

    def time_features(self, t) -> jax.Array:
        """``(t, sin(pi 2^j t), cos(pi 2^j t))``, shape ``(2 num_frequencies + 1,)``."""
        t = jnp.asarray(t, self.layers[0].weight.dtype)
        freqs = math.pi * 2.0 ** jnp.arange(self.num_frequencies, dtype=t.dtype)
        return jnp.concatenate([t[None], jnp.sin(freqs * t), jnp.cos(freqs * t)])

    def __call__(self, x, t, cond=None) -> jax.Array:
        if jnp.shape(x) != (self.dim,):
            raise ValueError(f"x: expected shape ({self.dim},), got {jnp.shape(x)}.")
        if jnp.ndim(t) != 0:
            raise ValueError(f"t: expected a scalar time, got shape {jnp.shape(t)}.")
        parts = [x / self.input_scale, self.time_features(t)]
        if self.cond_dim:
            if cond is None or jnp.shape(cond) != (self.cond_dim,):
                got = None if cond is None else jnp.shape(cond)
                raise ValueError(f"cond: expected shape ({self.cond_dim},), got {got}.")
            parts.append(cond)
        elif cond is not None:
            raise ValueError("cond: this network has cond_dim=0; build it with cond_dim=c.")
        h = jnp.concatenate(parts)
        for layer in self.layers[:-1]:
            h = self.activation(layer(h))
        return self.layers[-1](h)


# ---------------------------------------------------------------------------------------------
# Log-densities
# ---------------------------------------------------------------------------------------------


class Trajectory(NamedTuple):
    """Sampled trajectories and their generative log-probabilities.

    Attributes:
        states: ``(num, M + 1, d)``: states ``x_s .. x_{s+M}`` (``s`` the start step; ``M = N``
            for a full trajectory from ``x_0``).
        log_pf: ``(num, M)``: ``log p(x_{n+1} | x_n)`` under the nominal generative kernel
            (``noise_scale = 1``), whatever noise the states were sampled with.
    """

    states: jax.Array
    log_pf: jax.Array


def normal_log_prob(x, mean, std):
    """``log Normal(x; mean, std^2 I)`` summed over the last axis (``std`` broadcasts)."""
    z = (x - mean) / std
    return jnp.sum(-0.5 * z**2 - jnp.log(std) - 0.5 * _LOG_2PI, axis=-1)


def as_states(states, schedule: DiffusionSchedule, start_step: int, name: str = "states"):
    states = jnp.asarray(states)
    if not jnp.issubdtype(states.dtype, jnp.floating):
        states = states.astype(jnp.result_type(float))
    if states.ndim < 2 or states.shape[-1] != schedule.dim or states.shape[-2] < 2:
        raise ValueError(
            f"{name}: expected shape (..., M + 1, {schedule.dim}) with M >= 1 transitions, "
            f"got {states.shape}."
        )
    start_step = check_int(start_step, "start_step", 0)
    if start_step + states.shape[-2] - 1 > schedule.num_steps:
        raise ValueError(
            f"{name}: {states.shape[-2] - 1} transitions from start_step={start_step} run past "
            f"the schedule's num_steps={schedule.num_steps}."
        )
    return states, start_step


def drift_call(drift_fn: Callable, x, t, cond):
    return drift_fn(x, t) if cond is None else drift_fn(x, t, cond)


def check_cond(cond, num: int | None):
    """``cond`` as ``None``, a shared ``(c,)`` vector or one per trajectory ``(num, c)``."""
    if cond is None:
        return None
    cond = jnp.asarray(cond)
    if cond.ndim == 1 or (cond.ndim == 2 and (num is None or cond.shape[0] == num)):
        return cond
    raise ValueError(f"cond: expected shape (c,) or ({num}, c), got {cond.shape}.")


@eqx.filter_jit
def _transition_log_probs(drift_fn, schedule, flat, cond, start_step):
    idx = start_step + jnp.arange(flat.shape[1] - 1)
    x, x_next = flat[:, :-1], flat[:, 1:]
    times = schedule.times[idx]

    def per_trajectory(xs, c):
        return jax.vmap(lambda xi, ti: drift_call(drift_fn, xi, ti, c))(xs, times)

    cond_axis = 0 if cond is not None and cond.ndim == 2 else None
    drift = jax.vmap(per_trajectory, in_axes=(0, cond_axis))(x, cond)
    mean = schedule.mean_scale[idx, None] * x + schedule.drift_step[idx, None] * drift
    return normal_log_prob(x_next, mean, schedule.noise_std[idx, None])


def trajectory_log_prob(
    drift_fn: Callable, schedule: DiffusionSchedule, states, *, cond=None, start_step: int = 0
) -> jax.Array:
    """Per-transition log-probabilities under the generative kernel, shape ``(..., M)``.

    ``out[..., m] = log Normal(x_{s+m+1}; a x_{s+m} + h f(x_{s+m}, t_{s+m}), sigma^2 I)`` with
    ``s = start_step``, for any given trajectories (sampled by this policy or not: off-policy
    evaluation). Pure ``jnp``: jit- and vmap-able.

    Args:
        drift_fn: ``(x (d,), t) -> (d,)`` or ``(x, t, cond) -> (d,)``.
        schedule: The :class:`DiffusionSchedule`.
        states: ``(..., M + 1, d)``: states ``x_s .. x_{s+M}``.
        cond: ``None``, ``(c,)`` shared, or ``(B, c)`` with ``states`` of shape ``(B, M + 1, d)``.
        start_step: Index ``s`` of ``states[..., 0, :]`` in the chain.

    Examples:
        >>> schedule = brownian_bridge_schedule(10, 2)
        >>> states = jnp.zeros((3, 11, 2))
        >>> trajectory_log_prob(lambda x, t: -x, schedule, states).shape
        (3, 10)
    """
    states, start_step = as_states(states, schedule, start_step)
    num_trans = states.shape[-2] - 1
    batch_shape = states.shape[:-2]
    flat = states.reshape((-1,) + states.shape[-2:])
    cond = check_cond(cond, flat.shape[0] if batch_shape else None)
    if cond is not None and cond.ndim == 2 and len(batch_shape) != 1:
        raise ValueError("cond: a per-trajectory (B, c) cond needs states of shape (B, M + 1, d).")
    out = _transition_log_probs(drift_fn, schedule, flat, cond, start_step)
    return out.reshape(batch_shape + (num_trans,))


def backward_log_prob(schedule: DiffusionSchedule, states, *, start_step: int = 0) -> jax.Array:
    """Per-transition log-probabilities under the fixed noising kernel, shape ``(..., M)``.

    ``out[..., m] = log Normal(x_{s+m}; c x_{s+m+1}, tau^2 I)``; a transition with ``tau = 0``
    (the Brownian bridge's step into ``x_0 = 0``) is a point mass and counts as 0.

    Examples:
        >>> backward_log_prob(brownian_bridge_schedule(10, 2), jnp.zeros((3, 11, 2))).shape
        (3, 10)
    """
    states, start_step = as_states(states, schedule, start_step)
    return _backward_log_probs(schedule, states, start_step)


@eqx.filter_jit
def _backward_log_probs(schedule, states, start_step):
    idx = start_step + jnp.arange(states.shape[-2] - 1)
    tau = schedule.back_std[idx, None]
    random = tau > 0
    mean = schedule.back_scale[idx, None] * states[..., 1:, :]
    out = normal_log_prob(states[..., :-1, :], mean, jnp.where(random, tau, 1.0))
    return jnp.where(random[:, 0], out, 0.0)


def initial_log_prob(schedule: DiffusionSchedule, x0) -> jax.Array:
    """``log Normal(x_0; 0, init_std^2 I)``, shape ``(...)`` for ``x0 (..., d)``; 0 for a point start.

    The full log-density of a trajectory is ``initial_log_prob + sum(log_pf)``.
    """
    x0 = jnp.asarray(x0)
    if x0.ndim < 1 or x0.shape[-1] != schedule.dim:
        raise ValueError(f"x0: expected shape (..., {schedule.dim}), got {x0.shape}.")
    std = schedule.init_std
    random = std > 0
    out = normal_log_prob(x0, 0.0, jnp.where(random, std, 1.0))
    return jnp.where(random, out, jnp.zeros_like(out))


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def check_points(x, schedule: DiffusionSchedule, num: int | None, name: str) -> jax.Array:
    """``x`` as ``(num, d)`` (a ``(d,)`` point is repeated), finite when concrete."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if x.ndim == 1 and num is not None:
        x = jnp.broadcast_to(x, (num,) + x.shape)
    expected = f"({'num' if num is None else num}, {schedule.dim})"
    if x.ndim != 2 or x.shape[-1] != schedule.dim or (num is not None and x.shape[0] != num):
        raise ValueError(f"{name}: expected shape {expected} or ({schedule.dim},), got {x.shape}.")
    if not isinstance(x, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"{name}: expected finite values, got NaN or Inf entries.")
    return x


@eqx.filter_jit
def _run_chain(key, drift_fn, schedule, x_start, noise_scale, cond, start_step):
    idx = jnp.arange(start_step, schedule.num_steps)
    keys = jax.random.split(key, idx.shape[0])
    cond_axis = 0 if cond is not None and cond.ndim == 2 else None

    def drift(x, t):
        per_point = lambda xi, ci: drift_call(drift_fn, xi, t, ci)
        return jax.vmap(per_point, in_axes=(0, cond_axis))(x, cond)

    def body(x, inputs):
        n, step_key = inputs
        mean = schedule.mean_scale[n] * x + schedule.drift_step[n] * drift(x, schedule.times[n])
        std = schedule.noise_std[n]
        eps = jax.random.normal(step_key, x.shape, x.dtype)
        x_next = mean + noise_scale * std * eps
        return x_next, (x_next, normal_log_prob(x_next, mean, std))

    _, (xs, log_pf) = jax.lax.scan(body, x_start, (idx, keys))
    states = jnp.concatenate([x_start[None], xs], axis=0)
    return Trajectory(jnp.swapaxes(states, 0, 1), jnp.swapaxes(log_pf, 0, 1))


def _check_noise_scale(noise_scale):
    if isinstance(noise_scale, jax.core.Tracer):
        return noise_scale
    value = float(noise_scale)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"noise_scale: expected a finite float >= 0, got {noise_scale!r}.")
    return jnp.asarray(value, jnp.result_type(float))


def sample_trajectories(
    key: jax.Array,
    drift_fn: Callable,
    schedule: DiffusionSchedule,
    num: int,
    *,
    noise_scale=1.0,
    x_init=None,
    cond=None,
    start_step: int = 0,
) -> Trajectory:
    """Sample ``num`` trajectories of the generative chain with a ``jax.lax.scan``.

    ``x_{n+1} = a_n x_n + h_n f(x_n, t_n) + noise_scale sigma_n eps``. With ``noise_scale != 1``
    (e.g. > 1 to explore) the states come from that wider kernel but ``log_pf`` is still
    evaluated under the nominal one, as off-policy training needs; it equals
    ``trajectory_log_prob(drift_fn, schedule, states)``.

    Args:
        key: PRNG key; the result is deterministic given it.
        drift_fn: ``(x (d,), t) -> (d,)``, or ``(x, t, cond) -> (d,)`` when ``cond`` is given
            (e.g. a :class:`DriftNetwork`).
        schedule: The :class:`DiffusionSchedule`.
        num: Number of trajectories.
        noise_scale: Multiplies the sampling noise (a scalar, may be traced).
        x_init: Start states ``(num, d)`` or ``(d,)``; default a draw from the start distribution
            (required when ``start_step > 0``).
        cond: Conditioning vector for the drift: ``(c,)`` shared or ``(num, c)``.
        start_step: Run transitions ``start_step .. N - 1`` only (regeneration from a noised
            state, as in backtracking).

    Returns:
        A :class:`Trajectory` with ``states (num, N - start_step + 1, d)`` and
        ``log_pf (num, N - start_step)``.

    Examples:
        >>> schedule = brownian_bridge_schedule(20, 2)
        >>> traj = sample_trajectories(jax.random.key(0), lambda x, t: -x, schedule, 8)
        >>> traj.states.shape, traj.log_pf.shape
        ((8, 21, 2), (8, 20))
    """
    check_key(key, "key")
    num = check_int(num, "num")
    start_step = check_int(start_step, "start_step", 0)
    if start_step >= schedule.num_steps:
        raise ValueError(
            f"start_step: expected < num_steps = {schedule.num_steps}, got {start_step}."
        )
    noise_scale = _check_noise_scale(noise_scale)
    key_init, key_chain = jax.random.split(key)
    if x_init is None:
        if start_step > 0:
            raise ValueError("x_init: required when start_step > 0 (the states x_start_step).")
        dtype = schedule.times.dtype
        x_init = schedule.init_std * jax.random.normal(key_init, (num, schedule.dim), dtype)
    else:
        x_init = check_points(x_init, schedule, num, "x_init")
    cond = check_cond(cond, num)
    return _run_chain(key_chain, drift_fn, schedule, x_init, noise_scale, cond, start_step)


@eqx.filter_jit
def _run_noising(key, schedule, x_final, num_back):
    idx = jnp.arange(schedule.num_steps - 1, schedule.num_steps - 1 - num_back, -1)
    keys = jax.random.split(key, num_back)

    def body(x, inputs):
        n, step_key = inputs
        eps = jax.random.normal(step_key, x.shape, x.dtype)
        x_prev = schedule.back_scale[n] * x + schedule.back_std[n] * eps
        return x_prev, x_prev

    _, xs = jax.lax.scan(body, x_final, (idx, keys))
    states = jnp.concatenate([xs[::-1], x_final[None]], axis=0)
    return jnp.swapaxes(states, 0, 1)


def noising_trajectories(
    key: jax.Array, schedule: DiffusionSchedule, x_final, *, num_back: int | None = None
) -> jax.Array:
    """Run the fixed noising kernel ``q`` back from data points ``x_N``.

    Args:
        key: PRNG key.
        schedule: The :class:`DiffusionSchedule`.
        x_final: Data points ``x_N``, shape ``(num, d)``.
        num_back: Number of steps back ``k`` (default ``N``: whole trajectories).

    Returns:
        States ``x_{N-k} .. x_N``, shape ``(num, k + 1, d)`` (``states[:, -1] == x_final``), in
        the same order as :func:`sample_trajectories` (pass ``start_step=N - k`` to the
        log-probability functions for ``k < N``).

    Examples:
        >>> schedule = brownian_bridge_schedule(10, 2)
        >>> noising_trajectories(jax.random.key(0), schedule, jnp.ones((4, 2))).shape
        (4, 11, 2)
    """
    check_key(key, "key")
    x_final = check_points(x_final, schedule, None, "x_final")
    num_back = schedule.num_steps if num_back is None else num_back
    num_back = check_int(num_back, "num_back")
    if num_back > schedule.num_steps:
        raise ValueError(f"num_back: expected <= num_steps = {schedule.num_steps}, got {num_back}.")
    return _run_noising(key, schedule, x_final, num_back)


def backtrack(
    key: jax.Array,
    drift_fn: Callable,
    schedule: DiffusionSchedule,
    x_final,
    num_back: int,
    *,
    noise_scale=1.0,
    cond=None,
) -> Trajectory:
    """Noise data points back ``k`` steps with ``q``, then regenerate them with the policy.

    The local search of off-policy training: from a good sample ``x_N``, draw
    ``x_{N-k} ~ q(x_{N-k} | x_N)`` and run the generative chain from step ``N - k``.

    Returns:
        A :class:`Trajectory` over states ``x_{N-k} .. x_N`` (``(num, k + 1, d)``; the new
        ``x_N`` is ``states[:, -1]``) and ``log_pf (num, k)``; evaluate the other log-densities
        with ``start_step = N - k``.

    Examples:
        >>> schedule = brownian_bridge_schedule(10, 2)
        >>> traj = backtrack(jax.random.key(0), lambda x, t: -x, schedule, jnp.ones((4, 2)), 3)
        >>> traj.states.shape
        (4, 4, 2)
    """
    check_key(key, "key")
    key_back, key_forward = jax.random.split(key)
    x_final = check_points(x_final, schedule, None, "x_final")
    noised = noising_trajectories(key_back, schedule, x_final, num_back=num_back)
    return sample_trajectories(
        key_forward, drift_fn, schedule, x_final.shape[0], noise_scale=noise_scale,
        x_init=noised[:, 0], cond=cond, start_step=schedule.num_steps - num_back,
    )
