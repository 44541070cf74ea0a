"""Build an RTB posterior and its training kernel; run it on the one driver; check ``log Z``.

:func:`build_rtb` checks the problem and builds what training needs: it probes the constraint
on prior-diffusion samples, so a likelihood whose observation shape disagrees with ``y``, or one
returning NaN, fails at once with a message naming the problem; it starts ``log Z`` at an
importance estimate; it composes the posterior (the frozen prior drift, a correction network, an
optional Langevin guidance term) and the pure ``init``/``step`` kernel of
:func:`~amortized_ppl.diffusion.rtb.build_rtb_kernel` around an off-policy source
(:mod:`~amortized_ppl.diffusion.sources`). :func:`fit_rtb` runs that kernel on
:func:`amortized_ppl.loop.run_chunked_loop` (compiled chunks, progress, time budget, Ctrl-C,
resuming from a returned state) and writes a checkpoint only when training ended with finite
parameters, so a diverged run never replaces a good checkpoint. :func:`importance_log_z`
estimates ``log Z`` from posterior trajectories, the check on the learned ``log Z``.

Non-finite values: RTB stops at the first non-finite loss (``min_finite=1.0`` in the driver),
keeping the parameters from before that chunk. A non-finite RTB loss means a log reward that is
NaN or ``-inf`` where the sampler went (the likelihood is undefined or zero there); skipping those
steps, as other trainers do, would train the sampler only on the trajectories whose reward is
finite, a silently biased posterior, so the run stops and the warning names the likelihood.
"""

from __future__ import annotations

import math
import pathlib
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from amortized_ppl._checks import check_int, check_key, check_positive_float
from amortized_ppl.diffusion.checkpoint import save_posterior
from amortized_ppl.diffusion.rtb import (
    LogZNetwork,
    RTBConfig,
    RTBInfo,
    RTBPosterior,
    RTBState,
    beta_at,
    build_rtb_kernel,
    check_config,
    langevin_scale_network,
    log_rewards,
    make_optimizer,
    posterior_log_weights,
    reward_gradient,
    sample_posterior,
    trainable_filter,
)
from amortized_ppl.diffusion.sampler import DiffusionSchedule, DriftNetwork, sample_trajectories
from amortized_ppl.diffusion.sources import OffPolicySource, prioritized_replay
from amortized_ppl.loop import run_chunked_loop
from amortized_ppl.sharding import check_divides, replicate, resolve_mesh
from amortized_ppl.train import skip_nonfinite

__all__ = [
    "GuidanceConfig",
    "NetworkConfig",
    "RTBAlgorithm",
    "RTBResult",
    "build_rtb",
    "fit_rtb",
    "importance_log_z",
]

GUIDANCE_KINDS = ("plain", "denoised")
NOISE_KINDS = ("fixed", "learned", "learned_full")


class NetworkConfig(NamedTuple):
    """The correction network (a :class:`~amortized_ppl.diffusion.sampler.DriftNetwork`).

    Attributes:
        width: Hidden units per layer.
        depth: Hidden layers.
        input_scale: States enter the network divided by it (about the prior's spread).
        noise: ``"fixed"``: the posterior's transitions have the prior's noise; ``"learned"``:
            a learned factor per step and coordinate (``RTBPosterior.log_noise``, starting at
            1), which a constraint as sharp as the last steps' noise needs. Sample a posterior
            with learned noise with :func:`~amortized_ppl.diffusion.rtb.sample_posterior`.
            ``"learned_full"``: a learned lower-triangular factor per step
            (``RTBPosterior.noise_tril``): correlated noise, for constraints through a dense
            operator.
        clip: The correction's output is squashed into ``(-clip, clip)`` per coordinate
            (``RTBPosterior.correction_clip``; ``inf``: not bounded), so that far from where
            it was trained the prior's restoring drift wins.
    """

    width: int = 128
    depth: int = 2
    input_scale: float = 1.0
    noise: str = "fixed"
    clip: float = math.inf


class GuidanceConfig(NamedTuple):
    """The Langevin term ``g(t) * grad log r`` of the learned drift (see :class:`RTBPosterior`).

    Attributes:
        kind: ``"plain"``: the likelihood's gradient at ``x``; ``"denoised"``: at the prior's
            denoised estimate and through it (the DPS direction; needs a differentiable
            ``prior_drift``). Advised for sharp likelihoods.
        init: Starting value of the learned scale ``g`` (0: start at the prior; about 0.5 with
            ``"denoised"`` starts near a tuned DPS).
        clip: The gradient's norm is clipped to this before scaling by ``g``.
    """

    kind: str = "denoised"
    init: float = 0.0
    clip: float = 100.0


class RTBAlgorithm(NamedTuple):
    """What :func:`build_rtb` returns: the starting posterior and the pure training kernel.

    Attributes:
        posterior: The starting :class:`RTBPosterior` (prior drift plus a near-zero correction).
        schedule: The diffusion schedule it is built on.
        init: ``init(posterior) -> RTBState``, from ``posterior`` itself or one built the same
            way (e.g. loaded with :func:`~amortized_ppl.diffusion.checkpoint.load_posterior`,
            to warm-start).
        step: ``step(key, state) -> (RTBState, RTBInfo)``, pure and jittable.
        mesh: The device mesh the step splits its trajectories over (``None``: one device);
            :func:`fit_rtb` places a resumed state on it.
    """

    posterior: RTBPosterior
    schedule: DiffusionSchedule
    init: Callable[[RTBPosterior], RTBState]
    step: Callable
    mesh: Any = None

    def posterior_of(self, state: RTBState) -> RTBPosterior:
        """The posterior whose trainable arrays are ``state.params``."""
        _, static = eqx.partition(self.posterior, trainable_filter(self.posterior))
        return eqx.combine(state.params, static)


class RTBResult(NamedTuple):
    """What :func:`fit_rtb` returns.

    Attributes:
        posterior: The trained :class:`RTBPosterior` (a drift function; ``.log_normalizer()``).
        history: Loss per completed step of this call, ``(steps,)``.
        infos: :class:`RTBInfo` of per-step arrays (loss parts, ``log Z``, bad rewards).
        seconds: Wall time of the training loop.
        reason: ``"done"``, ``"time"``, ``"nonfinite"`` or ``"interrupt"``.
        checkpoint: Where the posterior was saved, or ``None``.
        state: The final :class:`RTBState`; pass it to ``fit_rtb(..., init_state=)`` to resume.
    """

    posterior: RTBPosterior
    history: np.ndarray
    infos: RTBInfo | None
    seconds: float
    reason: str
    checkpoint: pathlib.Path | None
    state: RTBState


def _finite_float(value, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"{name}: expected a finite float, got {value!r}.")
    return number


def _probe_rewards(log_reward_fn, x, y) -> jax.Array:
    """Evaluate the constraint on probe points; raise on a wrong shape or NaN."""
    try:
        out = log_rewards(log_reward_fn, x, y)
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


def _probe_source(source: OffPolicySource, key, num: int, dim: int, dtype):
    """The observations of a draw from a fresh ``source``: ``None`` or ``(num, m)``."""
    draw = source.sample(key, source.init(dim, dtype), num)
    if jnp.shape(draw.x) != (num, dim):
        raise ValueError(f"source: expected draws x of shape ({num}, {dim}), got "
                         f"{jnp.shape(draw.x)}.")
    if draw.cond is None:
        return None
    cond = jnp.asarray(draw.cond)
    if cond.ndim != 2 or cond.shape[0] != num:
        raise ValueError(f"source: expected observations y of shape ({num}, m), got "
                         f"{cond.shape}.")
    if not bool(jnp.all(jnp.isfinite(cond))):
        raise ValueError("source: simulated observations y have NaN or Inf entries.")
    return cond


def _initial_log_z(log_reward_fn, x, cond, beta: float) -> float:
    """``logmeanexp(beta log r)`` over prior samples ``x``; with observations, its mean over up
    to 64 of them (``log p(y_j) ~= logmeanexp_i log r(x_i; y_j)``)."""
    num = x.shape[0]
    if cond is None:
        return float(jax.nn.logsumexp(beta * log_rewards(log_reward_fn, x)) - math.log(num))
    per_y = jax.vmap(lambda yj: jax.nn.logsumexp(beta * log_rewards(
        log_reward_fn, x, jnp.broadcast_to(yj, (num, cond.shape[1])))))(cond[:64])
    finite = per_y[jnp.isfinite(per_y)]
    return float(jnp.mean(finite) - math.log(num)) if finite.size else 0.0


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
    traj = sample_posterior(key, posterior, schedule, num, cond=cond)
    x = traj.states[:, -1]
    y = None if cond is None else jnp.broadcast_to(cond, (num,) + jnp.shape(cond))
    log_w = posterior_log_weights(posterior, schedule, traj, log_rewards(log_reward_fn, x, y),
                                  beta=beta, cond=y)
    return jax.nn.logsumexp(log_w) - math.log(num), log_w


def build_rtb(
    key: jax.Array,
    prior_drift: Callable,
    schedule: DiffusionSchedule,
    log_reward_fn: Callable,
    *,
    config: RTBConfig | None = None,
    network: NetworkConfig | DriftNetwork | None = None,
    guidance: GuidanceConfig | None = None,
    source: OffPolicySource | None = None,
    optimizer: optax.GradientTransformation | None = None,
    init_log_z: float | None = None,
    num_init_samples: int = 2048,
    kernel: Callable = build_rtb_kernel,
    mesh=None,
) -> RTBAlgorithm:
    """Check an RTB problem and build its starting posterior and training kernel.

    The posterior targets ``∝ prior(x) r(x)^beta`` (one observation, with the default source),
    or ``∝ prior(x) r(x; y)^beta`` for every ``y`` (amortized, with
    :func:`~amortized_ppl.diffusion.sources.joint_samples`): whether it is amortized is read
    from the source's draws (they carry observations or not).

    Args:
        key: PRNG key of the networks' initialization and the probes; the result is fixed by it.
        prior_drift: The prior diffusion's drift ``(x (d,), t) -> (d,)``: a trained
            :class:`DriftNetwork` or the exact ``gmm_exact_drift(prior, schedule)``; frozen.
        schedule: The diffusion schedule shared by prior and posterior.
        log_reward_fn: ``log r``, batched: ``(x (B, d)) -> (B,)``, or ``(x (B, d), y (B, m)) ->
            (B,)`` when the source carries observations. ``InverseProblem.log_likelihood`` or
            ``amortized_ppl.models.inverse_problems.numpyro_likelihood(model, y)`` for a
            NumPyro model.
        config: :class:`RTBConfig` (defaults otherwise).
        network: The correction network: a :class:`NetworkConfig` (default) or a
            :class:`DriftNetwork` to start from (``cond_dim`` must match the observations).
        guidance: A :class:`GuidanceConfig` to add the Langevin term ``g(t) grad log r`` to the
            learned drift; ``None`` for none.
        source: The off-policy source: ``prioritized_replay()`` by default (pass
            ``prioritized_replay(log_prior_fn=prior.log_prob)`` to rank by the target density),
            ``joint_samples(sample_pair_fn)`` for amortized RTB.
        optimizer: An optax transformation of the trainable arrays; default
            :func:`~amortized_ppl.diffusion.rtb.make_optimizer` of ``config``. Steps with
            non-finite gradients are skipped either way.
        init_log_z: Starting ``log Z``; default ``logmeanexp(beta log r)`` over
            ``num_init_samples`` prior-diffusion samples (amortized: the mean of that over
            simulated ``y``).
        num_init_samples: Prior-diffusion samples of the probe.
        kernel: The training kernel's factory, ``kernel(static, schedule, log_reward_fn,
            optimizer, config, source) -> (init, step)``:
            :func:`~amortized_ppl.diffusion.rtb.build_rtb_kernel` (RTB, the default) or
            :func:`~amortized_ppl.diffusion.kl_rl.build_kl_rl_kernel` (the on-policy
            KL-regularized RL baseline on the same posterior).
        mesh: Data parallelism: a device count or a :class:`jax.sharding.Mesh` from
            :func:`~amortized_ppl.sharding.data_mesh`. Each step's trajectories (on-policy,
            replayed, backtracked) are split over its devices and the state (parameters,
            optimizer, buffer) is replicated; ``config.batch_size``, ``replay_size`` and
            ``backtrack_size`` must divide evenly. The kernel factory then gets ``mesh=`` too.
            Default: one device.

    Raises:
        ValueError: invalid settings, or a constraint that returns the wrong shape, NaN or +inf
            on prior samples.
        TypeError: an argument of the wrong kind.

    Examples:
        >>> algorithm = build_rtb(key_build, prior_drift, schedule, problem.log_likelihood,
        ...                       guidance=GuidanceConfig("denoised", init=0.5))  # doctest: +SKIP
        >>> result = fit_rtb(key_fit, algorithm, num_steps=2000)  # doctest: +SKIP
    """
    check_key(key, "key")
    if not isinstance(schedule, DiffusionSchedule):
        raise TypeError(f"schedule: expected a DiffusionSchedule, got {type(schedule).__name__}.")
    config = check_config(RTBConfig() if config is None else config, schedule)
    num_init_samples = check_int(num_init_samples, "num_init_samples", 2)
    network = NetworkConfig() if network is None else network
    if not isinstance(network, (NetworkConfig, DriftNetwork)):
        raise TypeError(f"network: expected a NetworkConfig or a DriftNetwork, got "
                        f"{type(network).__name__}.")
    correction_clip = math.inf
    if isinstance(network, NetworkConfig):
        if network.noise not in NOISE_KINDS:
            raise ValueError(f"network.noise: expected one of {NOISE_KINDS}, got "
                             f"{network.noise!r}.")
        correction_clip = float(network.clip)
        if not correction_clip > 0:  # inf allowed: no bound
            raise ValueError(f"network.clip: expected a float > 0 (or inf), got "
                             f"{network.clip!r}.")
    if guidance is not None and not isinstance(guidance, GuidanceConfig):
        raise TypeError(f"guidance: expected a GuidanceConfig (e.g. GuidanceConfig('denoised')) "
                        f"or None, got {guidance!r}.")
    source = prioritized_replay() if source is None else source
    if not isinstance(source, OffPolicySource):
        raise TypeError("source: expected an OffPolicySource (prioritized_replay(...) or "
                        f"joint_samples(sample_pair_fn)), got {type(source).__name__}.")
    key_net, key_probe, key_source = jax.random.split(key, 3)
    dim, dtype = schedule.dim, schedule.times.dtype

    # Probe the prior diffusion, the source and the constraint.
    probe_x = sample_trajectories(key_probe, prior_drift, schedule, num_init_samples).states[:, -1]
    cond = _probe_source(source, key_source, num_init_samples, dim, dtype)
    _probe_rewards(log_reward_fn, probe_x, cond)
    cond_dim = 0 if cond is None else int(cond.shape[1])
    cond_scale = 1.0 if cond is None else float(jnp.maximum(jnp.std(cond), 1e-6))
    if init_log_z is None:
        init_log_z = _initial_log_z(log_reward_fn, probe_x, cond, beta_at(config.beta, 0))
    init_log_z = _finite_float(init_log_z, "init_log_z")

    key_corr, key_z, key_lp = jax.random.split(key_net, 3)
    if isinstance(network, NetworkConfig):
        correction = DriftNetwork(dim, width=network.width, depth=network.depth,
                                  cond_dim=cond_dim, input_scale=network.input_scale,
                                  key=key_corr)
    else:
        correction = network
    if correction.dim != dim or correction.cond_dim != cond_dim:
        raise ValueError(
            f"network: expected a network with dim={dim} and cond_dim={cond_dim}, got "
            f"dim={correction.dim}, cond_dim={correction.cond_dim}."
        )
    log_z = (jnp.asarray(init_log_z, dtype) if cond is None
             else LogZNetwork(cond_dim, init=init_log_z, key=key_z))
    lp_net, reward_grad, clip = None, None, math.inf
    if guidance is not None:
        if guidance.kind not in GUIDANCE_KINDS:
            raise ValueError(f"guidance.kind: expected one of {GUIDANCE_KINDS}, got "
                             f"{guidance.kind!r}.")
        guidance_init = _finite_float(guidance.init, "guidance.init")
        clip = check_positive_float(guidance.clip, "guidance.clip")
        reward_grad = reward_gradient(
            log_reward_fn, prior_drift=prior_drift if guidance.kind == "denoised" else None,
            schedule=schedule)
        lp_net = langevin_scale_network(correction.time_features(0.0).shape[0], dim,
                                        init=guidance_init, key=key_lp)
    lp_unit = float(jnp.mean(schedule.noise_std**2 / schedule.drift_step))
    log_noise, noise_tril = None, None
    if isinstance(network, NetworkConfig) and network.noise != "fixed":
        log_noise = jnp.zeros((schedule.num_steps, dim), dtype)
        if network.noise == "learned_full":
            noise_tril = jnp.zeros((schedule.num_steps, dim, dim), dtype)
    posterior = RTBPosterior(prior_drift, correction, log_z, cond_scale, reward_grad, lp_net,
                             lp_unit, clip, log_noise, correction_clip, noise_tril)
    params, static = eqx.partition(posterior, trainable_filter(posterior))
    optimizer = skip_nonfinite(make_optimizer(config, params) if optimizer is None else optimizer)
    if not callable(kernel):
        raise TypeError(f"kernel: expected a kernel factory such as build_rtb_kernel, got "
                        f"{kernel!r}.")
    mesh = resolve_mesh(mesh)
    if mesh is None:
        init_params, step = kernel(static, schedule, log_reward_fn, optimizer, config, source)
    else:
        for name in ("batch_size", "replay_size", "backtrack_size"):
            check_divides(getattr(config, name), mesh, f"config.{name}")
        init_params, step = kernel(static, schedule, log_reward_fn, optimizer, config, source,
                                   mesh=mesh)

    def init(start: RTBPosterior) -> RTBState:
        return replicate(init_params(eqx.filter(start, trainable_filter(start))), mesh)

    return RTBAlgorithm(posterior, schedule, init, step, mesh)


def _check_resume(state, algorithm: RTBAlgorithm) -> None:
    """Raise unless ``state`` is shaped like a state of ``algorithm``."""
    if not isinstance(state, RTBState):
        raise TypeError(f"init_state: expected an RTBState from fit_rtb, got "
                        f"{type(state).__name__}.")
    want = eqx.filter_eval_shape(algorithm.init, algorithm.posterior)

    def spec(tree):
        leaves, treedef = jax.tree.flatten(tree)
        return treedef, [(jnp.shape(v), jnp.result_type(v)) for v in leaves]

    if spec(state) != spec(want):
        raise ValueError(
            "init_state: it does not match this algorithm's state (another network, source, "
            "optimizer or problem); resume with the state fit_rtb returned for this algorithm."
        )


def fit_rtb(
    key: jax.Array,
    algorithm: RTBAlgorithm,
    *,
    num_steps: int = 2000,
    chunk_size: int = 50,
    max_seconds: float | None = None,
    progress: bool = True,
    init_state: RTBState | None = None,
    checkpoint=None,
    checkpoint_metadata: dict | None = None,
) -> RTBResult:
    """Train an RTB posterior built by :func:`build_rtb` on the one driver.

    Args:
        key: PRNG key of training; the result is fixed by it (and a resumed run continues its
            sequence of keys: step ``i`` gets the keys of step ``i`` of an uninterrupted run
            with the same ``chunk_size``, when ``i`` starts a chunk in both).
        algorithm: From :func:`build_rtb`.
        num_steps: Optimizer steps in this call (a resumed run adds them).
        chunk_size: Steps per compiled chunk (the progress bar moves per chunk).
        max_seconds: Stop after this much wall time, keeping what was learned.
        progress: Show a progress bar.
        init_state: A state from an earlier ``fit_rtb`` of this algorithm, to resume from.
        checkpoint: A directory to save the trained posterior in, written only when training
            ended with finite parameters (see :mod:`amortized_ppl.diffusion.checkpoint`).
        checkpoint_metadata: JSON-serializable dict saved with it (e.g. the problem's name).

    Returns:
        An :class:`RTBResult`.

    Examples:
        >>> key_build, key_fit = jax.random.split(jax.random.key(0))
        >>> algorithm = build_rtb(key_build, prior_drift, schedule, log_r)  # doctest: +SKIP
        >>> first = fit_rtb(key_fit, algorithm, num_steps=1000)  # doctest: +SKIP
        >>> more = fit_rtb(key_fit, algorithm, num_steps=500, init_state=first.state)  # doctest: +SKIP
    """
    check_key(key, "key")
    if not isinstance(algorithm, RTBAlgorithm):
        raise TypeError(f"algorithm: expected an RTBAlgorithm from build_rtb, got "
                        f"{type(algorithm).__name__}.")
    num_steps = check_int(num_steps, "num_steps")
    if init_state is None:
        state = algorithm.init(algorithm.posterior)
    else:
        _check_resume(init_state, algorithm)
        state = replicate(init_state, algorithm.mesh)
    out = run_chunked_loop(key, state, algorithm.step, num_steps=num_steps,
                           chunk_size=chunk_size, start_step=int(state.step),
                           max_seconds=max_seconds, min_finite=1.0, progress=progress,
                           desc="rtb", explain_nonfinite=_explain)
    posterior = algorithm.posterior_of(out.state)

    saved = None
    if checkpoint is not None:
        if out.reason == "nonfinite":
            warnings.warn(f"Training diverged; the checkpoint at {checkpoint} was not written "
                          "(an existing one is kept).", RuntimeWarning, stacklevel=2)
        else:
            try:
                saved = save_posterior(checkpoint, posterior, algorithm.schedule,
                                       metadata=checkpoint_metadata)
            except ValueError as err:  # non-finite parameters after the last update
                warnings.warn(f"Checkpoint not written: {err}", RuntimeWarning, stacklevel=2)
    return RTBResult(posterior, out.history, out.infos, out.seconds, out.reason, saved,
                     out.state)
