"""A non-Gaussian state for iterative refinement: a normalizing flow refined over mini-batches.

The Gaussian state of :mod:`~amortized_ppl.iterative.kernel` cannot leave its family: where the
posterior is skewed, heavy-tailed or funnel-shaped (the hard-posterior zoo at N = 20 to 200) its
fixed point is the Gaussian variational optimum, biased as Laplace is. Here the state is a
:class:`~amortized_ppl.families.flow_posterior.FlowPosterior` (a flowjax bijection in the whitened
frame of a Gaussian, issue 16's flow family) and each step is an Adam step on the reparameterized
ELBO of one mini-batch (its log-likelihood scaled to the data set), pass after pass, with the same
shuffled passes as the other updates (:func:`~amortized_ppl.iterative.passes.run_passes`).

Two starts, so that what the amortized network buys is measured beside the network off:
:func:`identity_flow_state` (the Laplace fit, or any Gaussian, with the identity flow: nothing
learned) and an amortized flow guide's own posterior for the data set
(``guide.get_posterior(params, **data)`` of an ``AutoAmortizedFlow``), whose conditional flow,
context and Gaussian are then refined for that data set alone (the context stays fixed; every
float array of the bijection, the location and the Cholesky factor move).

NumPyro's ``SVI`` with a flow guide would do the same optimization on the whole data set; it is
written here because the iterative engine's passes (mini-batches read in a shuffled order, a
likelihood scale per mini-batch, a step that is skipped when it is not finite) are what every
other state of this package runs under, and a flow already built by the amortized guide has to be
the starting point, which an autoguide cannot take.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from amortized_ppl._checks import check_int
from amortized_ppl.families.flow import Flow
from amortized_ppl.families.flow_posterior import FlowPosterior
from amortized_ppl.iterative.passes import run_passes, steps_per_pass
from amortized_ppl.iterative.svi import _raw, _scale_tril

__all__ = ["FlowRefineState", "default_optimizer", "flow_refine", "identity_flow_state"]


class FlowRefineState(NamedTuple):
    """The optimizer's state over ``(loc (D,), raw (D, D), flow arrays)``; ``L`` as in
    ``svi_refine``."""

    params: tuple
    opt_state: optax.OptState
    step: jax.Array


def identity_flow_state(key: jax.Array, loc: jax.Array, scale_tril: jax.Array,
                        flow: Flow | None = None) -> FlowPosterior:
    """``N(loc, L L^T)`` as a :class:`FlowPosterior` whose flow is the identity.

    The bijection is built by the :class:`~amortized_ppl.families.Flow` recipe (default
    ``Flow()``: four coupling layers of rational-quadratic splines; ``Flow(layers=
    "elementwise")`` for one latent, which coupling layers cannot split) with a
    one-dimensional context held at zero, and its conditioners' last layers at zero. Build it
    outside ``jit`` and ``vmap`` when it is to leave them (flowjax layers keep closures over their
    arrays, which must not be tracers); for a batch of starts, broadcast one.
    """
    flow = Flow() if flow is None else flow
    if not isinstance(flow, Flow):
        raise TypeError(f"flow: expected a Flow recipe, got {type(flow).__name__}.")
    loc = jnp.asarray(loc)
    dim = loc.shape[-1]
    if loc.ndim != 1 or jnp.shape(scale_tril) != (dim, dim):
        raise ValueError(f"loc (D,) and scale_tril (D, D) expected; got {loc.shape} and "
                         f"{jnp.shape(scale_tril)}.")
    if dim < 2 and flow.layers == "coupling":
        raise ValueError("A coupling flow needs at least two latents; use "
                         "Flow(layers='elementwise') for one.")
    bijection = flow.build(key, dim, 1).flow
    return FlowPosterior(bijection, jnp.zeros((1,), loc.dtype), loc, jnp.asarray(scale_tril))


def default_optimizer(params, num_steps: int, gaussian_rate: float = 1e-2,
                      flow_rate: float = 1e-3):
    """Adam at ``gaussian_rate`` on the location and Cholesky factor and at ``flow_rate`` on the
    flow's arrays, both decayed to 5% by a cosine over ``num_steps``: with a constant rate the
    last iterate keeps the noise of the last few mini-batches and draws (the result is the last
    iterate, not an average). One rate for both moved the flow too far: Adam steps every weight by
    about the rate whatever its gradient, and a conditioner's zero last layer of width 64 then
    changes the splines by up to 64 times the rate per step: in a trial on the funnel, a few noisy
    steps at 1e-2 left the flow much further from NUTS than the Laplace fit it started at."""
    labels = ("gaussian", "gaussian", jax.tree.map(lambda _: "flow", params[2]))

    def adam(rate):
        return optax.adam(optax.cosine_decay_schedule(rate, max(int(num_steps), 1), alpha=0.05))

    return optax.multi_transform({"gaussian": adam(gaussian_rate), "flow": adam(flow_rate)},
                                 labels)


def flow_refine(
    key: jax.Array,
    problem,
    arguments: dict,
    mask: jax.Array,
    posterior: FlowPosterior,
    *,
    batch_size: int,
    num_passes: int,
    optimizer: optax.GradientTransformation | None = None,
    num_draws: int = 16,
):
    """Refine a flow posterior of one data set over mini-batches (jittable, vmappable).

    Args:
        key: PRNG key (shuffling, and the draws of every step).
        problem: the :class:`~amortized_ppl.problem.Problem`.
        arguments: the model's bound arguments for one data set; mask: ``(N,)`` bool.
        posterior: the start, a :class:`FlowPosterior` for this data set (unbatched):
            :func:`identity_flow_state` or an amortized flow guide's output.
        batch_size, num_passes: mini-batch size and passes over the data set.
        optimizer: an optax optimizer over ``(loc, raw, flow arrays)`` (default
            :func:`default_optimizer` over this refinement's steps).
        num_draws: reparameterized draws per step (each costs one gradient of the log joint).

    Returns:
        ``(posterior, elbo)``: the refined :class:`FlowPosterior` and the ELBO estimate per step
        ``(num_passes, P)``. A step whose loss or update is not finite is skipped (the state is
        kept), so one bad mini-batch cannot turn the flow into NaN.
    """
    if not isinstance(posterior, FlowPosterior):
        raise TypeError(f"posterior: expected a FlowPosterior, got {type(posterior).__name__}.")
    if posterior.batch_shape:
        raise ValueError(f"posterior: one data set expected (batch shape ()), got batch shape "
                         f"{posterior.batch_shape}; vmap flow_refine over data sets.")
    check_int(num_draws, "num_draws", 1)
    condition = posterior.condition
    # Adam moves the bijection's float arrays; its other arrays (masks) and structure stay.
    trainable, frozen = eqx.partition(posterior.params, eqx.is_inexact_array)
    static = eqx.combine(frozen, posterior.static)
    params = (posterior.loc, _raw(posterior.scale_tril), trainable)
    if optimizer is None:
        num_steps = num_passes * steps_per_pass(mask.shape[0], batch_size)
        optimizer = default_optimizer(params, num_steps)
    state = FlowRefineState(params, optimizer.init(params), jnp.zeros((), jnp.int32))

    def as_posterior(params):
        loc, raw, flow_params = params
        return FlowPosterior(eqx.combine(flow_params, static), condition, loc, _scale_tril(raw))

    def step(key, _network, state, batch_arguments, batch_mask, per_pass):
        scale = jnp.asarray(per_pass, jnp.float32)

        def negative_elbo(params):
            u, log_q = as_posterior(params).sample_with_log_prob(key, (num_draws,))
            values = jax.vmap(
                lambda v: problem.log_density(v, batch_arguments, batch_mask, scale))(u)
            return -jnp.mean(values - log_q)

        value, grads = jax.value_and_grad(negative_elbo)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new = FlowRefineState(optax.apply_updates(state.params, updates), opt_state,
                              state.step + 1)
        finite = jnp.isfinite(value) & jnp.all(jnp.asarray(
            [jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(new.params)]))
        kept = state._replace(step=state.step + 1)
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, kept)
        return new, jnp.where(finite, -value, jnp.nan)

    state, elbo = run_passes(key, step, None, state, arguments, mask, problem.take,
                             batch_size=batch_size, num_passes=num_passes)
    return as_posterior(state.params), elbo
