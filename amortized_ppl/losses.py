"""Training objectives for amortized guides, over data sets simulated from the model.

Every loss has one signature, ``loss_fn(key, params, guide, batch) -> scalar``, averaged over the
data sets of ``batch`` (a :class:`~amortized_ppl.simulate.SimulatedBatch`):

- :func:`forward_kl`: neural posterior estimation, ``E_{p(theta, D)}[-log q(theta | D)]``. Needs
  only simulations; mass-covering.
- :func:`amortized_elbo`: the negative ELBO averaged over simulated data sets,
  ``E_{p(D)} E_{q(theta | D)}[log q(theta | D) - log p(theta, D)]``, through the model's joint
  density and its gradients (reparameterized draws). Mode-seeking and sharp.
- :func:`mixed_loss`: a weighted sum of the two.

The classes :class:`ForwardKL` and :class:`AmortizedELBO` wrap them as NumPyro ELBO-like loss
objects, so ``numpyro.infer.SVI(model, guide, optimizer, loss=ForwardKL(design_fn, ...))`` trains
an amortized guide: each step simulates a fresh batch (the arguments passed to ``SVI`` serve only
to initialize the guide).

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

from amortized_ppl.density import log_joint
from amortized_ppl.simulate import SimulatedBatch, build_simulator

__all__ = [
    "AmortizedELBO",
    "ForwardKL",
    "MixedLoss",
    "amortized_elbo",
    "forward_kl",
    "get_loss_fn",
    "mixed_loss",
]


def forward_kl(key, params, guide, batch: SimulatedBatch) -> jax.Array:
    """Mean of ``-log q(theta_b | D_b)`` over the batch (unconstrained space).

    The Jacobian of the map to constrained space does not depend on q, so minimizing this in
    unconstrained space minimizes the forward KL in constrained space too.
    """
    del key
    posterior, initial = guide.posterior_from_data(
        params, batch.tokens, batch.mask, batch.arguments, with_initial=True
    )
    loss = -jnp.mean(posterior.log_prob(batch.latents))
    if initial is not None:
        # The guide's initial guess (where its Newton steps start) learns by NPE too.
        loss = loss - jnp.mean(initial.log_prob(batch.latents))
    return loss


def amortized_elbo(key, params, guide, batch: SimulatedBatch, *, num_particles: int = 4):
    """Negative ELBO per data set, averaged over the batch, with reparameterized draws.

    Each data set contributes ``E_q[log q(u | D) - log p(T(u), D) - log|det J_T(u)|]`` with its
    padded observations masked out of the likelihood.
    """
    posterior, initial = guide.posterior_from_data(
        params, batch.tokens, batch.mask, batch.arguments, with_initial=True
    )
    flat = posterior.rsample(key, (num_particles,))  # (P, B, D)
    log_q = posterior.log_prob(flat)  # (P, B)
    sites = guide.sites

    def one(u, arguments, mask):
        latents = sites.constrain(u)
        return log_joint(guide.model, sites, arguments, latents, mask) + sites.log_abs_det_jacobian(u)

    over_data = eqx.filter_vmap(one, in_axes=(0, eqx.if_array(0), 0))
    over_particles = eqx.filter_vmap(
        lambda u: over_data(u, batch.arguments, batch.mask), in_axes=0
    )
    log_p = over_particles(flat)  # (P, B)
    loss = jnp.mean(log_q - log_p)
    if initial is not None:
        # Without simulated truths to regress on, the initial guess learns to point where the
        # refined posterior ends up (its mean), which is where Newton steps should start.
        loss = loss - jnp.mean(initial.log_prob(jax.lax.stop_gradient(posterior.mean)))
    return loss


def mixed_loss(key, params, guide, batch, *, elbo_weight: float = 1.0, num_particles: int = 4):
    """``forward_kl + elbo_weight * amortized_elbo``: simulation-based and density-based at once.

    (With Newton refinement both terms also train the guide's initial guess.)
    """
    return forward_kl(key, params, guide, batch) + elbo_weight * amortized_elbo(
        key, params, guide, batch, num_particles=num_particles
    )


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

    def __init__(self, design_fn, num_obs, *, batch_size: int = 64, **loss_kwargs):
        self.design_fn = design_fn
        self.num_obs = num_obs
        self.batch_size = batch_size
        self.loss_kwargs = loss_kwargs
        self._simulators = {}

    def _simulator(self, guide):
        sim = self._simulators.get(id(guide))
        if sim is None:
            sim = build_simulator(guide.model, guide.sites, guide.spec, self.design_fn, self.num_obs)
            self._simulators[id(guide)] = sim
        return sim

    def loss(self, rng_key, param_map, model, guide, *args, **kwargs):
        """NumPyro's loss interface; ``args``/``kwargs`` are ignored (fresh simulations)."""
        return self.loss_with_mutable_state(rng_key, param_map, model, guide, *args, **kwargs)[
            "loss"
        ]

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        if not hasattr(guide, "posterior_from_data"):
            raise TypeError(
                f"{type(self).__name__} trains amortized guides; got {type(guide).__name__}."
            )
        if guide.model is not model:
            raise ValueError("The guide was built for a different model than the one given to SVI.")
        sim_key, loss_key = jax.random.split(rng_key)
        batch = self._simulator(guide)(sim_key, self.batch_size)
        value = type(self).loss_fn(loss_key, param_map, guide, batch, **self.loss_kwargs)
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
