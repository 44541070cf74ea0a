"""Reference posteriors by NUTS (blackjax) with window adaptation, several chains and diagnostics.

The reference is the ground truth amortized guides are judged against, so it is built to be
trusted and to be cheap to repeat over many simulated data sets:

- :func:`build_reference_sampler` turns a NumPyro model and a static configuration into a
  :class:`ReferenceSampler`. Its ``draw`` is one jitted function of ``(key, data)`` covering
  initialization, warm-up and sampling of all chains, compiled once per model and data shape:
  a second data set of the same shape reuses the compiled program.
- :func:`reference_posterior` is the convenience entry point; it caches samplers per
  ``(model, configuration)`` and returns a :class:`ReferenceResult` with constrained samples,
  split R-hat, ESS, divergences and an ArviZ object, warning when the chains have not converged.

``draw`` is two jitted programs: the chains' initial positions (NumPyro's init strategy through
``numpyro.infer.util.initialize_model``, one key per chain; skipped when ``init_params`` is given)
and the sampler proper, whose log density (``potential_energy``) and constraining transforms
(``constrain_fn``) are functions of the traced data, so nothing is closed over concretely and cold
and warm starts share one compiled sampler. Each chain runs its own Stan-style window adaptation
(step size and diagonal inverse mass matrix), vectorized over chains with :func:`jax.vmap`;
sampling is a :func:`jax.lax.scan` over steps whose body advances every chain. No device is named:
the program runs where JAX puts it, with full-precision float32 matrix products by default.

References:
    Hoffman, M. D. and Gelman, A. (2014). The No-U-Turn sampler. *JMLR* 15.
    Vehtari, A., Gelman, A., Simpson, D., Carpenter, B. and Bürkner, P.-C. (2021).
    Rank-normalization, folding, and localization: an improved R-hat. *Bayesian Analysis* 16(2).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from blackjax.adaptation.base import get_filter_adapt_info_fn
from blackjax.adaptation.step_size import dual_averaging_adaptation
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.util import constrain_fn, initialize_model, potential_energy

from amortized_ppl._checks import check_int
from amortized_ppl.convergence import (
    RHAT_THRESHOLD,
    Moments,
    ReferenceInfo,
    ReferenceResult,
    flatten_samples,
    reference_moments,
    summarize,
)

__all__ = [
    "RHAT_THRESHOLD",
    "Moments",
    "ReferenceInfo",
    "ReferenceResult",
    "ReferenceSampler",
    "build_reference_sampler",
    "get_reference_sampler",
    "flatten_samples",
    "reference_moments",
    "reference_posterior",
]


_SAMPLER_CACHE_SIZE = 32


class ReferenceSampler(NamedTuple):
    """A compiled reference sampler for one model and one static configuration.

    Attributes:
        draw: ``draw(key, *args, init_params=None, **kwargs) -> (samples, info)``, the jitted
            device program (initialization, warm-up, sampling) with no host-side diagnostics; use
            it to time NUTS. Array leaves of ``args``/``kwargs`` are traced, every other leaf
            (Python scalars, strings) is static and part of the compilation key.
        sample: ``sample(key, *args, init_params=None, **kwargs) -> ReferenceResult``: validates
            the inputs, calls ``draw``, computes R-hat/ESS, warns, builds the ArviZ object.
    """

    draw: Callable[..., tuple[dict, ReferenceInfo]]
    sample: Callable[..., ReferenceResult]


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------



def _argument_names(model: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Map each model argument to its name in the model's signature (``args[i]`` as fallback)."""
    try:
        bound = inspect.signature(model).bind_partial(*args, **kwargs)
    except (TypeError, ValueError):
        named = {f"args[{i}]": value for i, value in enumerate(args)}
        named.update(kwargs)
        return named
    named = {}
    parameters = inspect.signature(model).parameters
    for name, value in bound.arguments.items():
        kind = parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            named.update({f"{name}[{i}]": item for i, item in enumerate(value)})
        elif kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        else:
            named[name] = value
    return named


def _check_finite(name: str, tree) -> None:
    """Raise ``ValueError`` naming ``name`` when a concrete floating leaf has NaN or Inf."""
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.core.Tracer):
            continue
        if isinstance(leaf, (float, complex)):
            leaf = np.asarray(leaf)
        if not isinstance(leaf, (jax.Array, np.ndarray)):
            continue
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            continue
        if not bool(jnp.all(jnp.isfinite(leaf))):
            raise ValueError(
                f"Argument '{name}' contains NaN or Inf; the reference posterior needs finite "
                "data. Remove or impute the non-finite entries."
            )


def _unconstrained_shapes(model: Callable, args: tuple, kwargs: dict) -> dict:
    """Trace ``model`` (at trace time) and return site -> unconstrained ``ShapeDtypeStruct``."""
    model_trace = handlers.trace(handlers.seed(model, rng_seed=0)).get_trace(*args, **kwargs)
    shapes = {}
    for name, site in model_trace.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if site["fn"].support.is_discrete:
            raise ValueError(
                f"NUTS cannot handle discrete sample site '{name}'; marginalize it out or "
                "observe it."
            )
        unconstrained = jax.eval_shape(biject_to(site["fn"].support).inv, site["value"])
        shapes[name] = unconstrained
    return shapes


def _check_init_params(positions: dict, expected: dict, num_chains: int) -> None:
    """Check (at trace time) that the initial positions match the latent sites with a chain axis."""
    if set(positions) != set(expected):
        raise ValueError(
            f"init_params must be a dict of unconstrained values keyed by the latent sites "
            f"{sorted(expected)}; got keys {sorted(positions)}."
        )
    for site, struct in expected.items():
        want = (num_chains,) + tuple(struct.shape)
        if tuple(positions[site].shape) != want:
            raise ValueError(
                f"init_params['{site}'] must have shape {want} (num_chains={num_chains}, then "
                f"the site's unconstrained shape); got {tuple(positions[site].shape)}."
            )


# ---------------------------------------------------------------------------------------------
# The sampler
# ---------------------------------------------------------------------------------------------


class _Progress:
    """Host-side tqdm bar driven from the compiled program through ``jax.debug.callback``."""

    def __init__(self, total: int):
        self.total = total
        self.bar = None

    def open(self) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, desc="NUTS reference")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def update_to(self, num_done) -> None:
        if self.bar is not None:
            self.bar.update(int(num_done) - self.bar.n)


def build_reference_sampler(
    model: Callable,
    *,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 1000,
    target_accept: float = 0.8,
    max_num_doublings: int = 10,
    init_strategy: Callable = init_to_uniform,
    matmul_precision: str | None = "highest",
    progress: bool = False,
) -> ReferenceSampler:
    """Build a jitted NUTS reference sampler for ``model``.

    Args:
        model: A NumPyro model with continuous latent sites.
        num_chains: Number of chains, at least 2 (split R-hat compares chains).
        num_warmup: Window-adaptation steps per chain, at least 1.
        num_samples: Post-warm-up samples per chain, at least 10.
        target_accept: Target acceptance rate of step-size adaptation, in ``(0, 1)``.
        max_num_doublings: Maximum NUTS tree depth.
        init_strategy: NumPyro init strategy for the chains' initial positions (one key each),
            used when ``init_params`` is not given.
        matmul_precision: Precision of float32 matrix products inside the sampler, as for
            :func:`jax.default_matmul_precision`. The default ``"highest"`` keeps a reference
            exact on GPUs, whose default float32 products use TF32 (10-bit mantissa: on an
            H100 that shifted a regression posterior by ~1e-3); ``None`` keeps JAX's default.
        progress: Show a tqdm bar (warm-up completes in one tick, then sampling steps).

    Returns:
        A :class:`ReferenceSampler` ``(draw, sample)``.

    Raises:
        ValueError: If a count or ``target_accept`` is out of range.

    Examples:
        >>> from amortized_ppl.models.linear_regression import design_fn, model_known_noise
        >>> sampler = build_reference_sampler(model_known_noise, num_warmup=200, num_samples=200)
        >>> (x,), _ = design_fn(jax.random.key(0), 50, num_features=3)
        >>> y = x.sum(axis=1)
        >>> result = sampler.sample(jax.random.key(1), x, y=y)
        >>> result.samples["w"].shape
        (4, 200, 3)
    """
    num_chains = check_int(num_chains, "num_chains", 2)
    num_warmup = check_int(num_warmup, "num_warmup", 1)
    num_samples = check_int(num_samples, "num_samples", 10)
    max_num_doublings = check_int(max_num_doublings, "max_num_doublings", 1)
    if not 0.0 < float(target_accept) < 1.0:
        raise ValueError(f"target_accept must lie in (0, 1); got {target_accept!r}.")
    target_accept = float(target_accept)
    progress_bar = _Progress(num_warmup + num_samples) if progress else None

    def _precision_context():
        if matmul_precision is None:
            return contextlib.nullcontext()
        return jax.default_matmul_precision(matmul_precision)

    print_every = max(1, num_samples // 20)
    nuts_kernel = blackjax.nuts.build_kernel()

    @eqx.filter_jit
    def _init(key, args, kwargs):
        # initialize_model also checks the model (discrete sites, invalid supports).
        model_info = initialize_model(
            jax.random.split(key, num_chains),
            model,
            init_strategy=init_strategy,
            model_args=args,
            model_kwargs=kwargs,
            dynamic_args=False,
        )
        return model_info.param_info.z

    def _step_size_warmup(key, position, logdensity_fn, metric):
        # A warm start: the metric is given (e.g. a guide's covariance), so only the step size
        # is tuned, by dual averaging (Hoffman & Gelman, 2014, sec. 3.2.1) from a unit step,
        # which suits a target that the metric has made close to standard normal.
        da_init, da_update, da_final = dual_averaging_adaptation(target_accept)

        def one(carry, step_key):
            state, da_state = carry
            state, info = nuts_kernel(
                step_key,
                state,
                logdensity_fn,
                jnp.exp(da_state.log_step_size),
                metric,
                max_num_doublings=max_num_doublings,
            )
            return (state, da_update(da_state, info.acceptance_rate)), None

        state = blackjax.nuts.init(position, logdensity_fn)
        (state, da_state), _ = jax.lax.scan(
            one, (state, da_init(1.0)), jax.random.split(key, num_warmup)
        )
        return state, da_final(da_state)

    @eqx.filter_jit
    def _run(key, positions, metric, args, kwargs):
        _check_init_params(positions, _unconstrained_shapes(model, args, kwargs), num_chains)
        key_warmup, key_sample = jax.random.split(key)

        # The log density is a function of the traced data, so one compiled program serves
        # every data set of the same shape.
        def logdensity_fn(position):
            return -potential_energy(model, args, kwargs, position)

        initial_logdensity = jax.vmap(logdensity_fn)(positions)
        positions = eqx.error_if(
            positions,
            ~jnp.isfinite(initial_logdensity),
            "reference_posterior: an initial position has a non-finite log density; "
            "pass finite init_params or check the model's supports.",
        )

        if metric is None:
            warmup = blackjax.window_adaptation(
                blackjax.nuts,
                logdensity_fn,
                target_acceptance_rate=target_accept,
                adaptation_info_fn=get_filter_adapt_info_fn(),
                max_num_doublings=max_num_doublings,
            )
            (states, parameters), _ = jax.vmap(lambda k, p: warmup.run(k, p, num_warmup))(
                jax.random.split(key_warmup, num_chains), positions
            )
            step_size = parameters["step_size"]
            inverse_mass_matrix = parameters["inverse_mass_matrix"]
        else:
            states, step_size = jax.vmap(
                lambda k, p: _step_size_warmup(k, p, logdensity_fn, metric)
            )(jax.random.split(key_warmup, num_chains), positions)
            inverse_mass_matrix = jnp.broadcast_to(metric, (num_chains,) + metric.shape)
        if progress_bar is not None:
            jax.debug.callback(lambda _: progress_bar.update_to(num_warmup), step_size)

        def advance_chains(keys, chain_states):
            def one_chain(chain_key, state, eps, imm):
                return nuts_kernel(
                    chain_key, state, logdensity_fn, eps, imm, max_num_doublings=max_num_doublings
                )

            return jax.vmap(one_chain)(keys, chain_states, step_size, inverse_mass_matrix)

        def one_step(chain_states, xs):
            index, step_key = xs
            chain_states, info = advance_chains(
                jax.random.split(step_key, num_chains), chain_states
            )
            if progress_bar is not None:
                done = index + 1
                jax.lax.cond(
                    (done % print_every == 0) | (done == num_samples),
                    lambda: jax.debug.callback(
                        lambda n: progress_bar.update_to(num_warmup + n), done
                    ),
                    lambda: None,
                )
            record = (
                chain_states.position,
                chain_states.logdensity,
                info.is_divergent,
                info.acceptance_rate,
                info.num_integration_steps,
                info.num_trajectory_expansions,
            )
            return chain_states, record

        last_states, history = jax.lax.scan(
            one_step,
            states,
            (jnp.arange(num_samples), jax.random.split(key_sample, num_samples)),
        )
        # The scan stacks steps first: (S, C, ...) -> (C, S, ...).
        history = jax.tree.map(lambda leaf: jnp.swapaxes(leaf, 0, 1), history)
        draws, logdensity, divergent, acceptance, num_steps, depth = history
        samples = constrain_fn(
            handlers.seed(model, rng_seed=0),
            args,
            kwargs,
            draws,
            return_deterministic=True,
            batch_ndims=2,
        )
        info = ReferenceInfo(
            step_size=step_size,
            inverse_mass_matrix=inverse_mass_matrix,
            is_divergent=divergent,
            acceptance_rate=acceptance,
            num_integration_steps=num_steps,
            tree_depth=depth,
            logdensity=logdensity,
            last_position=last_states.position,
        )
        return samples, info

    def draw(
        key, *args, init_params=None, inverse_mass_matrix=None, **kwargs
    ) -> tuple[dict, ReferenceInfo]:
        """Run initialization, warm-up and sampling as one jitted program (no diagnostics).

        With ``inverse_mass_matrix`` (a warm start: ``(D,)`` diagonal or ``(D, D)`` dense, over
        the unconstrained latents raveled as :func:`jax.flatten_util.ravel_pytree` orders a
        dict, i.e. sites sorted by name) the metric stays fixed and warm-up only tunes the
        step size; otherwise each chain runs window adaptation.

        Returns ``(samples, info)``: constrained samples site -> ``(C, S, *site_shape)`` and a
        :class:`ReferenceInfo`, still on the device (asynchronous dispatch: block on them to time).
        """
        if init_params is not None and not isinstance(init_params, dict):
            raise ValueError(
                "init_params must be a dict site -> unconstrained array of shape "
                f"(num_chains, ...); got {type(init_params).__name__}."
            )
        metric = None
        if inverse_mass_matrix is not None:
            metric = jnp.asarray(inverse_mass_matrix)
            shapes = _unconstrained_shapes(model, args, kwargs).values()
            size = sum(int(np.prod(struct.shape)) for struct in shapes)
            if metric.shape not in ((size,), (size, size)):
                raise ValueError(
                    f"inverse_mass_matrix: expected shape ({size},) or ({size}, {size}) for the "
                    f"model's {size} unconstrained latents, got {metric.shape}."
                )
        key_init, key_run = jax.random.split(key)
        with _precision_context():
            if init_params is None:
                positions = _init(key_init, args, kwargs)
            else:
                positions = {site: jnp.asarray(value) for site, value in init_params.items()}
            return _run(key_run, positions, metric, args, kwargs)

    def sample(key, *args, init_params=None, inverse_mass_matrix=None, **kwargs) -> ReferenceResult:
        """Validate the data, :func:`draw`, then summarize into a :class:`ReferenceResult`."""
        for name, value in _argument_names(model, args, kwargs).items():
            _check_finite(name, value)
        if init_params is not None:
            _check_finite("init_params", init_params)
        if inverse_mass_matrix is not None:
            _check_finite("inverse_mass_matrix", inverse_mass_matrix)
        if progress_bar is not None:
            progress_bar.open()
        try:
            samples, info = draw(
                key,
                *args,
                init_params=init_params,
                inverse_mass_matrix=inverse_mass_matrix,
                **kwargs,
            )
            jax.block_until_ready(samples)
        finally:
            if progress_bar is not None:
                progress_bar.close()
        return summarize(samples, info)

    return ReferenceSampler(draw=draw, sample=sample)


# ---------------------------------------------------------------------------------------------
# Diagnostics and summaries
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=_SAMPLER_CACHE_SIZE)
def _cached_sampler(model, **config) -> ReferenceSampler:
    return build_reference_sampler(model, **config)


def get_reference_sampler(model, **config) -> ReferenceSampler:
    """:func:`build_reference_sampler`, cached per ``(model, configuration)`` (32 entries)."""
    try:
        return _cached_sampler(model, **config)
    except TypeError as error:  # an unhashable model or init strategy: build without caching
        if "unhashable" not in str(error):
            raise
        return build_reference_sampler(model, **config)


def reference_posterior(
    key,
    model: Callable,
    *args,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 1000,
    target_accept: float = 0.8,
    init_params: dict | None = None,
    progress: bool = False,
    **kwargs,
) -> ReferenceResult:
    """Sample a reference posterior of ``model`` given data with NUTS (several chains).

    The sampler for ``(model, num_chains, num_warmup, num_samples, target_accept, progress)`` is
    built once and cached; its jitted program is compiled once per shape of the data, so repeated
    calls on data sets of one shape only run (see :func:`build_reference_sampler`).

    Args:
        key: A JAX PRNG key.
        model: A NumPyro model with continuous latent sites.
        *args: The model's positional arguments (the data set), e.g. ``x``.
        num_chains: Number of chains, at least 2.
        num_warmup: Window-adaptation steps per chain.
        num_samples: Post-warm-up samples per chain, at least 10.
        target_accept: Target acceptance rate of step-size adaptation.
        init_params: Optional unconstrained initial positions, a dict site ->
            ``(num_chains, *unconstrained_shape)`` (e.g. ``result.info.last_position`` of an earlier
            run); by default each chain is initialized by ``init_to_uniform``.
        progress: Show a progress bar.
        **kwargs: The model's keyword arguments, e.g. ``y=y``. Array leaves are traced; other
            leaves (Python scalars) are static, so a new value recompiles.

    Returns:
        A :class:`ReferenceResult`.

    Raises:
        ValueError: If a count is out of range, if an argument (named) contains NaN/Inf, or if
            ``init_params`` does not match the latent sites.

    Warns:
        RuntimeWarning: When a site's split R-hat exceeds :data:`RHAT_THRESHOLD` (naming the
            site and the value), or when there are divergent transitions after warm-up.

    Examples:
        >>> from amortized_ppl.models.linear_regression import design_fn, model_known_noise
        >>> (x,), _ = design_fn(jax.random.key(0), 50, num_features=3)
        >>> y = x @ jnp.array([1.0, -1.0, 0.5])
        >>> result = reference_posterior(jax.random.key(1), model_known_noise, x, y=y)
        >>> result.samples["w"].shape, result.samples["b"].shape
        ((4, 1000, 3), (4, 1000))
    """
    sampler = get_reference_sampler(
        model,
        num_chains=num_chains,
        num_warmup=num_warmup,
        num_samples=num_samples,
        target_accept=target_accept,
        progress=progress,
    )
    return sampler.sample(key, *args, init_params=init_params, **kwargs)
