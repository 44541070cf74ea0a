"""Training objectives for amortized guides, over data sets simulated from the model.

Every loss has one signature, ``loss_fn(key, problem, engine, batch) -> scalar``: a problem, an
engine module with its parameters, and a :class:`~amortized_ppl.simulate.SimulatedBatch`, averaged
over the batch's data sets (each data set's posterior is the engine's ``output`` for it):

- :func:`forward_kl`: neural posterior estimation, ``E_{p(theta, D)}[-log q(theta | D)]``. Needs
  only simulations; mass-covering.
- :func:`amortized_elbo`: the negative ELBO averaged over simulated data sets,
  ``E_{p(D)} E_{q(theta | D)}[log q(theta | D) - log p(theta, D)]``, through the model's joint
  density and its gradients (reparameterized draws). Mode-seeking and sharp.
- :func:`mixed_loss`: a weighted sum of the two.

The classes :class:`ForwardKL` and :class:`AmortizedELBO` wrap them as NumPyro ELBO-like loss
objects, so ``numpyro.infer.SVI(model, guide, optimizer, loss=ForwardKL(design_fn, num_obs))`` trains a
set-up amortized guide: each step simulates a fresh batch (the arguments passed to ``SVI`` are
not read; ``design_fn`` and ``num_obs`` default to the problem's own).

References:
    Papamakarios & Murray (2016), Fast epsilon-free inference of simulation models with Bayesian
    conditional density estimation. Kingma & Welling (2014), Auto-encoding variational Bayes.
    Radev et al. (2020), BayesFlow: learning complex stochastic models with invertible networks.
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from amortized_ppl.simulate import SimulatedBatch

__all__ = [
    "AmortizedELBO",
    "ForwardKL",
    "MixedLoss",
    "amortized_elbo",
    "forward_kl",
    "get_loss_fn",
    "mixed_loss",
]


def _per_dataset(fn, key, problem, engine, batch: SimulatedBatch) -> jax.Array:
    """``fn(key, output, latents, arguments, mask)`` for every data set of ``batch``, ``(B,)``."""

    def one(k, latents, arguments, mask):
        output_key, loss_key = jax.random.split(k)
        output = engine.output(problem, arguments, mask, output_key)
        return fn(loss_key, problem, output, latents, arguments, mask)

    keys = jax.random.split(key, batch.mask.shape[0])
    return eqx.filter_vmap(one, in_axes=(0, 0, eqx.if_array(0), 0))(
        keys, batch.latents, batch.arguments, batch.mask
    )


def _center(posterior, draws):
    """The posterior's mean where it has one in closed form, else the draws' mean."""
    try:
        return posterior.mean
    except NotImplementedError:
        return jnp.mean(draws, axis=0)


def _forward_kl_term(output, latents):
    loss = -output.posterior.log_prob(latents)
    if output.start is not None:
        loss = loss - output.start.log_prob(latents)
    return loss


def _elbo_term(key, problem, output, arguments, mask, num_particles):
    posterior = output.posterior
    draws = posterior.rsample(key, (num_particles,))  # (P, D)
    log_q = posterior.log_prob(draws)
    log_p = jax.vmap(lambda u: problem.log_density(u, arguments, mask))(draws)
    loss = jnp.mean(log_q - log_p)
    if output.start is not None:
        target = jax.lax.stop_gradient(_center(posterior, draws))
        loss = loss - output.start.log_prob(target)
    return loss


def forward_kl(key, problem, engine, batch: SimulatedBatch) -> jax.Array:
    """Mean of ``-log q(theta_b | D_b)`` over the batch (unconstrained space).

    The Jacobian of the map to constrained space does not depend on q, so minimizing this in
    unconstrained space minimizes the forward KL in constrained space too. A family's auxiliary
    ``start`` (where Newton steps begin) learns by the same objective.
    """

    def one(key, problem, output, latents, arguments, mask):
        return _forward_kl_term(output, latents)

    return jnp.mean(_per_dataset(one, key, problem, engine, batch))


def amortized_elbo(key, problem, engine, batch: SimulatedBatch, *, num_particles: int = 4):
    """Negative ELBO per data set, averaged over the batch, with reparameterized draws.

    Each data set contributes ``E_q[log q(u | D) - log p(T(u), D) - log|det J_T(u)|]`` with its
    padded observations masked out of the likelihood. Without simulated truths to regress on, a
    family's auxiliary ``start`` learns to point where the posterior lies (its mean).
    """

    def one(key, problem, output, latents, arguments, mask):
        return _elbo_term(key, problem, output, arguments, mask, num_particles)

    return jnp.mean(_per_dataset(one, key, problem, engine, batch))


def mixed_loss(key, problem, engine, batch, *, elbo_weight: float = 1.0, num_particles: int = 4):
    """``forward_kl + elbo_weight * amortized_elbo``: simulation-based and density-based at once
    (each data set's posterior is computed once for both terms)."""

    def one(key, problem, output, latents, arguments, mask):
        return _forward_kl_term(output, latents) + elbo_weight * _elbo_term(
            key, problem, output, arguments, mask, num_particles)

    return jnp.mean(_per_dataset(one, key, problem, engine, batch))


_LOSSES = {"forward_kl": forward_kl, "elbo": amortized_elbo, "mixed": mixed_loss}


def get_loss_fn(loss: str | Callable) -> Callable:
    """Resolve a loss given by name (``forward_kl``, ``elbo``, ``mixed``) or as a callable."""
    if callable(loss):
        return loss
    if loss not in _LOSSES:
        raise ValueError(f"loss: expected one of {sorted(_LOSSES)} or a callable, got {loss!r}.")
    return _LOSSES[loss]


class _SimulationLoss:
    """A NumPyro loss object that simulates a fresh batch of data sets at each evaluation."""

    loss_fn: Callable = staticmethod(forward_kl)
    can_infer_discrete = False

    def __init__(self, design_fn=None, num_obs=None, *, batch_size: int = 64, **loss_kwargs):
        self.design_fn = design_fn
        self.num_obs = num_obs
        self.batch_size = batch_size
        self.loss_kwargs = loss_kwargs

    def loss(self, rng_key, param_map, model, guide, *args, **kwargs):
        """NumPyro's loss interface; ``args``/``kwargs`` are ignored (fresh simulations)."""
        return self.loss_with_mutable_state(rng_key, param_map, model, guide, *args, **kwargs)[
            "loss"
        ]

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        if not hasattr(guide, "engine") or not hasattr(guide, "problem"):
            raise TypeError(
                f"{type(self).__name__} trains amortized guides; got {type(guide).__name__}."
            )
        problem = guide.problem
        if problem.model is not model:
            raise ValueError("The guide was built for a different model than the one given to SVI.")
        sim_key, loss_key = jax.random.split(rng_key)
        batch = problem.simulator(self.design_fn, self.num_obs)(sim_key, self.batch_size)
        value = type(self).loss_fn(loss_key, problem, guide.engine(param_map), batch,
                                   **self.loss_kwargs)
        return {"loss": value, "mutable_state": None}


class ForwardKL(_SimulationLoss):
    """Forward KL (neural posterior estimation) as a NumPyro loss object; see :func:`forward_kl`."""

    loss_fn = staticmethod(forward_kl)


class AmortizedELBO(_SimulationLoss):
    """The amortized negative ELBO as a NumPyro loss object; see :func:`amortized_elbo`."""

    loss_fn = staticmethod(amortized_elbo)


class MixedLoss(_SimulationLoss):
    """Forward KL plus amortized ELBO as a NumPyro loss object; see :func:`mixed_loss`."""

    loss_fn = staticmethod(mixed_loss)
