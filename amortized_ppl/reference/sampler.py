"""The reference sampler: initialization, warm-up, sampling and summary composed for one model.

:func:`build_reference_sampler` turns a NumPyro model and a static configuration into a
:class:`ReferenceSampler`. Its ``draw`` is two jitted programs: the chains' initial positions
(:func:`~amortized_ppl.reference.initialization.build_initial_positions`; skipped when
``init_params`` is given) and the sampler proper, which checks the starts, warms up every chain
(:func:`~amortized_ppl.reference.warmup.warmup_chains`), samples
(:func:`~amortized_ppl.reference.sampling.sample_chains`) and maps the draws to the constrained
space. The sampler's log density (``potential_energy``) and constraining transforms
(``constrain_fn``) are functions of the traced data, so nothing is closed over concretely: a
second data set of the same shape reuses the compiled program, and cold and warm starts share one
compiled sampler. ``sample`` validates the inputs, calls ``draw`` and summarizes on the host
(:func:`amortized_ppl.convergence.summarize`: R-hat, ESS, warnings, ArviZ).

No device is named: the program runs where JAX puts it, with full-precision float32 matrix
products by default.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from numpyro import handlers
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.util import constrain_fn, potential_energy

from amortized_ppl._checks import check_int
from amortized_ppl.convergence import ReferenceInfo, ReferenceResult, summarize
from amortized_ppl.reference.checks import (
    check_finite_arguments,
    check_finite_tree,
    check_init_params,
    check_init_params_type,
    check_inverse_mass_matrix,
    check_target_accept,
    unconstrained_shapes,
)
from amortized_ppl.reference.initialization import build_initial_positions, check_finite_start
from amortized_ppl.reference.progress import ProgressBar
from amortized_ppl.reference.sampling import sample_chains
from amortized_ppl.reference.warmup import warmup_chains
from amortized_ppl.sharding import check_divides, constrain_batch, resolve_mesh

__all__ = ["ReferenceSampler", "build_reference_sampler"]


class ReferenceSampler(NamedTuple):
    """A compiled reference sampler for one model and one static configuration.

    Attributes:
        draw: ``draw(key, *args, init_params=None, inverse_mass_matrix=None, **kwargs) ->
            (samples, info)``, the jitted device program (initialization, warm-up, sampling) with
            no host-side diagnostics; use it to time NUTS. Array leaves of ``args``/``kwargs`` are
            traced, every other leaf (Python scalars, strings) is static and part of the
            compilation key.
        sample: ``sample(key, *args, init_params=None, inverse_mass_matrix=None, **kwargs) ->
            ReferenceResult``: validates the inputs, calls ``draw``, computes R-hat/ESS, warns,
            builds the ArviZ object.
    """

    draw: Callable[..., tuple[dict, ReferenceInfo]]
    sample: Callable[..., ReferenceResult]


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
    mesh=None,
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
        mesh: split the chains over a device mesh (a device count or a
            :class:`jax.sharding.Mesh`; ``num_chains`` must divide evenly). The draws do not
            depend on it beyond float rounding. Default: one device.

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
    target_accept = check_target_accept(target_accept)
    progress_bar = ProgressBar(num_warmup, num_samples) if progress else None
    mesh = resolve_mesh(mesh)
    check_divides(num_chains, mesh, "num_chains")

    def precision_context():
        if matmul_precision is None:
            return contextlib.nullcontext()
        return jax.default_matmul_precision(matmul_precision)

    init_fn = build_initial_positions(model, num_chains=num_chains, init_strategy=init_strategy)

    @eqx.filter_jit
    def run(key, positions, inverse_mass_matrix, args, kwargs):
        check_init_params(positions, unconstrained_shapes(model, args, kwargs), num_chains)
        key_warmup, key_sample = jax.random.split(key)

        # The log density is a function of the traced data, so one compiled program serves
        # every data set of the same shape.
        def logdensity_fn(position):
            return -potential_energy(model, args, kwargs, position)

        positions = constrain_batch(check_finite_start(positions, logdensity_fn), mesh,
                                    num_chains)
        warm = warmup_chains(
            key_warmup,
            positions,
            logdensity_fn,
            inverse_mass_matrix,
            num_steps=num_warmup,
            target_accept=target_accept,
            max_num_doublings=max_num_doublings,
        )
        if progress_bar is not None:
            progress_bar.warmup_done(warm.step_size)
        last_states, trace = sample_chains(
            key_sample,
            warm.state,
            logdensity_fn,
            warm.step_size,
            warm.inverse_mass_matrix,
            num_samples=num_samples,
            max_num_doublings=max_num_doublings,
            on_step=None if progress_bar is None else progress_bar.sampled,
        )
        samples = constrain_fn(
            handlers.seed(model, rng_seed=0),
            args,
            kwargs,
            trace.position,
            return_deterministic=True,
            batch_ndims=2,
        )
        info = ReferenceInfo(
            step_size=warm.step_size,
            inverse_mass_matrix=warm.inverse_mass_matrix,
            is_divergent=trace.is_divergent,
            acceptance_rate=trace.acceptance_rate,
            num_integration_steps=trace.num_integration_steps,
            tree_depth=trace.tree_depth,
            logdensity=trace.logdensity,
            last_position=last_states.position,
        )
        return samples, info

    def draw(
        key, *args, init_params=None, inverse_mass_matrix=None, **kwargs
    ) -> tuple[dict, ReferenceInfo]:
        """Run initialization, warm-up and sampling as jitted programs (no diagnostics).

        With ``inverse_mass_matrix`` (a warm start: ``(D,)`` diagonal or ``(D, D)`` dense, over
        the unconstrained latents raveled as :func:`jax.flatten_util.ravel_pytree` orders a
        dict, i.e. sites sorted by name) the metric stays fixed and warm-up only tunes the
        step size; otherwise each chain runs window adaptation.

        Returns ``(samples, info)``: constrained samples site -> ``(C, S, *site_shape)`` and a
        :class:`ReferenceInfo`, still on the device (asynchronous dispatch: block on them to time).
        """
        check_init_params_type(init_params)
        metric = None
        if inverse_mass_matrix is not None:
            metric = _strong(check_inverse_mass_matrix(inverse_mass_matrix, model, args, kwargs))
        key_init, key_run = jax.random.split(key)
        with precision_context():
            if init_params is None:
                positions = init_fn(key_init, args, kwargs)
            else:
                positions = {site: _strong(value) for site, value in init_params.items()}
            return run(key_run, positions, metric, args, kwargs)

    def sample(key, *args, init_params=None, inverse_mass_matrix=None, **kwargs) -> ReferenceResult:
        """Validate the data, :func:`draw`, then summarize into a :class:`ReferenceResult`."""
        check_finite_arguments(model, args, kwargs)
        if init_params is not None:
            check_finite_tree("init_params", init_params)
        if inverse_mass_matrix is not None:
            check_finite_tree("inverse_mass_matrix", inverse_mass_matrix)
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


def _strong(value) -> jax.Array:
    """``value`` as an array without a weak type (``jnp.full(shape, 1.0)`` is weakly typed), so
    that given starts share the program compiled for the init strategy's starts."""
    value = jnp.asarray(value)
    return jnp.asarray(value, dtype=value.dtype)
