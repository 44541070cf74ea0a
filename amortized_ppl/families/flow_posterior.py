"""A normalizing flow's posterior as a NumPyro distribution over the flat unconstrained latents.

``u = loc + L y`` with ``y = f(z; context)``, ``z ~ N(0, I)``: a conditional flowjax bijection
``f`` acting in the whitened frame of a Gaussian ``(loc, L)`` (a Laplace fit, or a Gaussian
head's output). At ``f = identity`` it is that Gaussian exactly. NumPyro's
``TransformedDistribution`` would evaluate the flow twice per density (the inverse, then the
log-Jacobian from the forward); flowjax gives both in one pass, so this class implements
``sample``, ``rsample``, ``sample_with_log_prob`` and ``log_prob`` itself.

It is a pytree (its arrays are data, the bijection's structure is static), so it passes through
``jit`` and ``vmap``; a batch made by ``vmap`` gets its batch shape from ``loc`` (NumPyro's
``promote_batch_shape``), and then samples and densities are taken data set by data set.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints

__all__ = ["FlowPosterior"]


class FlowPosterior(dist.Distribution):
    """``loc + scale_tril @ f(z; condition)`` with ``z ~ N(0, I)``, event shape ``(D,)``.

    Args:
        bijection: a flowjax bijection of shape ``(D,)`` conditioned on ``(C,)`` vectors.
        condition: ``(..., C)``, what the flow is conditioned on.
        loc: ``(..., D)``; scale_tril: ``(..., D, D)``, the Gaussian whose whitened frame the
            flow acts in.
    """

    arg_constraints = {"loc": constraints.real_vector, "scale_tril": constraints.lower_cholesky}
    support = constraints.real_vector
    has_rsample = True
    reparametrized_params = ["loc", "scale_tril", "condition"]
    pytree_data_fields = ("params", "condition", "loc", "scale_tril")
    pytree_aux_fields = ("static",)

    def __init__(self, bijection, condition, loc, scale_tril, *, validate_args=None):
        self.params, self.static = eqx.partition(bijection, eqx.is_array)
        self.condition = condition
        self.loc = loc
        self.scale_tril = scale_tril
        super().__init__(batch_shape=jnp.shape(loc)[:-1], event_shape=jnp.shape(loc)[-1:],
                         validate_args=validate_args)

    @property
    def bijection(self):
        return eqx.combine(self.params, self.static)

    # ---------------------------------------------------------------- one data set
    def _one(self, fn, *xs):
        """``fn(bijection, condition, loc, tril, *xs)`` over the batch dimensions."""
        batch_ndim = len(self.batch_shape)
        args = (self.params, self.condition, self.loc, self.scale_tril) + xs

        def call(params, condition, loc, tril, *rest):
            return fn(eqx.combine(params, self.static), condition, loc, tril, *rest)

        for _ in range(batch_ndim):
            call = jax.vmap(call)
        return call(*args)

    def sample_with_log_prob(self, key, sample_shape=()):
        """Reparameterized draws ``(*sample_shape, *batch, D)`` and their log densities, in one
        forward pass of the flow."""
        shape = tuple(sample_shape) + self.batch_shape + self.event_shape
        z = jax.random.normal(key, shape, jnp.result_type(self.loc))
        # draws first, then batch: move the batch axes to the front for the per-set map
        n = len(tuple(sample_shape))
        batch_ndim = len(self.batch_shape)
        z = jnp.moveaxis(z.reshape((-1,) + shape[n:]), 0, batch_ndim)  # (*batch, S, D)

        def forward(bijection, condition, loc, tril, zs):
            def one(z1):
                y, log_det = bijection.transform_and_log_det(z1, condition)
                base = jax.scipy.stats.norm.logpdf(z1).sum()
                log_det_l = jnp.sum(jnp.log(jnp.abs(jnp.diag(tril))))
                return loc + tril @ y, base - log_det - log_det_l

            return jax.vmap(one)(zs)

        u, log_q = self._one(forward, z)
        u = jnp.moveaxis(u, batch_ndim, 0).reshape(shape)
        log_q = jnp.moveaxis(log_q, batch_ndim, 0).reshape(shape[:-1])
        return u, log_q

    def rsample(self, key, sample_shape=()):
        return self.sample_with_log_prob(key, sample_shape)[0]

    def sample(self, key, sample_shape=()):
        return self.rsample(key, sample_shape)

    def log_prob(self, value):
        batch_ndim = len(self.batch_shape)
        value = jnp.asarray(value)
        lead = value.shape[: value.ndim - batch_ndim - 1]  # sample dimensions in front
        value = jnp.broadcast_to(value, lead + self.batch_shape + self.event_shape)
        flat = value.reshape((-1,) + value.shape[len(lead):])
        flat = jnp.moveaxis(flat, 0, batch_ndim)  # (*batch, S, D)

        def inverse(bijection, condition, loc, tril, us):
            def one(u):
                y = jax.scipy.linalg.solve_triangular(tril, u - loc, lower=True)
                z, log_det = bijection.inverse_and_log_det(y, condition)
                log_det_l = jnp.sum(jnp.log(jnp.abs(jnp.diag(tril))))
                return jax.scipy.stats.norm.logpdf(z).sum() + log_det - log_det_l

            return jax.vmap(one)(us)

        out = jnp.moveaxis(self._one(inverse, flat), batch_ndim, 0)
        return out.reshape(lead + self.batch_shape)
