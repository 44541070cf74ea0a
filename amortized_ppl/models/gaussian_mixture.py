"""Gaussian mixtures in ``R^d`` with the closed forms the diffusion checks need.

:class:`GaussianMixture` (weights, means, full covariances) gives log-densities, responsibilities
and hard assignments, scores, exact samples and the exactly noised mixture
``m x + s eps`` (:meth:`GaussianMixture.noised`), hence exact prior scores and drifts at every
diffusion step. It serves as the prior of :mod:`amortized_ppl.models.inverse_problems` and as the exact
posterior of its linear problems. Batched linear algebra uses the loop-based
:mod:`amortized_ppl.linalg` (jaxlib's batched CPU LAPACK kernels can deadlock).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from amortized_ppl._checks import check_finite, check_int
from amortized_ppl.linalg import cholesky, solve_lower, solve_upper_transposed
from amortized_ppl.models.checks import as_float, check_last_axis

__all__ = ["GaussianMixture", "gaussian_mixture"]

_LOG_2PI = math.log(2.0 * math.pi)





# ---------------------------------------------------------------------------------------------
# Gaussian mixtures
# ---------------------------------------------------------------------------------------------


class GaussianMixture(NamedTuple):
    """A mixture of ``K`` full-covariance Gaussians in ``R^d``.

    Build one with :func:`gaussian_mixture` to validate the fields. Methods take points ``x`` of
    shape ``(..., d)`` (any number of leading axes).

    Attributes:
        weights: Mixture weights, shape ``(K,)``, non-negative, summing to 1.
        means: Component means, shape ``(K, d)``.
        covs: Component covariances, shape ``(K, d, d)``, symmetric positive definite.
    """

    weights: jax.Array
    means: jax.Array
    covs: jax.Array

    @property
    def num_components(self) -> int:
        """The number of components ``K``."""
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        """The dimension ``d``."""
        return self.means.shape[1]

    def scale_trils(self) -> jax.Array:
        """Lower Cholesky factors of the covariances, shape ``(K, d, d)``."""
        return jax.vmap(cholesky)(self.covs)

    def component_log_probs(self, x) -> jax.Array:
        """``log w_k + log Normal(x; mu_k, Sigma_k)`` for each component, shape ``(..., K)``."""
        x = self._checked(x)
        out = _component_log_probs(*self, x.reshape(-1, self.dim))
        return out.reshape(x.shape[:-1] + (self.num_components,))

    def log_prob(self, x) -> jax.Array:
        """Log density at ``x`` of shape ``(..., d)``; returns shape ``(...)``."""
        return jax.nn.logsumexp(self.component_log_probs(x), axis=-1)

    def responsibilities(self, x) -> jax.Array:
        """Posterior component probabilities ``p(k | x)``, shape ``(..., K)``."""
        return jax.nn.softmax(self.component_log_probs(x), axis=-1)

    def assign(self, x) -> jax.Array:
        """Most probable component of each point, integer array of shape ``(...)``.

        With well-separated modes, ``jnp.bincount(gmm.assign(samples), length=K) / n`` estimates
        the mode weights of a sampler.
        """
        return jnp.argmax(self.component_log_probs(x), axis=-1)

    def score(self, x) -> jax.Array:
        """Score ``grad_x log p(x)`` in closed form, shape ``(..., d)``.

        ``sum_k p(k | x) (-Sigma_k^{-1} (x - mu_k))``.
        """
        x = self._checked(x)
        return _score(*self, x.reshape(-1, self.dim)).reshape(x.shape)

    def sample(self, key, n: int) -> jax.Array:
        """Draw ``n`` independent points, shape ``(n, d)``."""
        check_int(n, "n", minimum=0)
        return _sample(key, *self, n)

    def _checked(self, x) -> jax.Array:
        x = as_float(x)
        check_last_axis(x, self.dim)
        return x

    def mean(self) -> jax.Array:
        """Mixture mean, shape ``(d,)``."""
        return self.weights @ self.means

    def covariance(self) -> jax.Array:
        """Mixture covariance (law of total covariance), shape ``(d, d)``."""
        centred = self.means - self.mean()
        within = jnp.einsum("k,kij->ij", self.weights, self.covs)
        between = jnp.einsum("k,ki,kj->ij", self.weights, centred, centred)
        return within + between

    def noised(self, signal_scale=1.0, noise_scale=0.0) -> GaussianMixture:
        """Law of ``signal_scale * x + noise_scale * eps`` for ``x`` from this mixture.

        Same weights, means ``a mu_k``, covariances ``a^2 Sigma_k + s^2 I``: the exact marginal
        of a diffusion's noising kernel at any time, hence exact prior scores along the path.
        """
        a = jnp.asarray(signal_scale, self.means.dtype)
        s = jnp.asarray(noise_scale, self.means.dtype)
        eye = jnp.eye(self.dim, dtype=self.covs.dtype)
        return GaussianMixture(self.weights, a * self.means, a**2 * self.covs + s**2 * eye)

    def to_numpyro(self) -> dist.MixtureSameFamily:
        """Return the mixture as a NumPyro ``MixtureSameFamily`` of ``MultivariateNormal``."""
        return dist.MixtureSameFamily(
            dist.Categorical(probs=self.weights),
            dist.MultivariateNormal(self.means, scale_tril=self.scale_trils()),
        )


def _whiten(means, covs, flat):
    """Factors ``L_k`` (K, d, d) and whitened residuals ``L_k^{-1}(x_n - mu_k)`` (N, K, d)."""
    chol = jax.vmap(cholesky)(covs)
    diff = flat[:, None, :] - means[None]

    def per_component(factor, residual):  # residual (N, d)
        return solve_lower(factor, residual.T).T

    return chol, jax.vmap(per_component, in_axes=(0, 1), out_axes=1)(chol, diff)


@jax.jit
def _component_log_probs(weights, means, covs, flat):
    chol, z = _whiten(means, covs, flat)
    log_det = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    dim = means.shape[-1]
    return jnp.log(weights) - 0.5 * jnp.sum(z**2, axis=-1) - log_det - 0.5 * dim * _LOG_2PI


@jax.jit
def _score(weights, means, covs, flat):
    chol, z = _whiten(means, covs, flat)
    log_det = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    resp = jax.nn.softmax(jnp.log(weights) - 0.5 * jnp.sum(z**2, axis=-1) - log_det, axis=-1)

    def per_component(factor, whitened):  # (N, d) -> Sigma^{-1}(x - mu), (N, d)
        return solve_upper_transposed(factor, whitened.T).T

    precision_diff = jax.vmap(per_component, in_axes=(0, 1), out_axes=1)(chol, z)
    return -jnp.einsum("nk,nkd->nd", resp, precision_diff)


@functools.partial(jax.jit, static_argnums=4)
def _sample(key, weights, means, covs, n):
    key_component, key_normal = jax.random.split(key)
    components = jax.random.categorical(key_component, jnp.log(weights), shape=(n,))
    eps = jax.random.normal(key_normal, (n, means.shape[-1]), dtype=means.dtype)
    chol = jax.vmap(cholesky)(covs)
    return means[components] + jnp.einsum("nij,nj->ni", chol[components], eps)


def gaussian_mixture(weights, means, covs) -> GaussianMixture:
    """Validate and build a :class:`GaussianMixture` (weights are renormalized to sum to 1).

    Args:
        weights: Non-negative weights, shape ``(K,)``, not all zero.
        means: Component means, shape ``(K, d)``.
        covs: Covariances, shape ``(K, d, d)`` (or ``(d, d)``, shared), symmetric positive definite.

    Raises:
        ValueError: On shapes that disagree, NaN/Inf, negative weights or covariances that are not
            symmetric positive definite (checked on concrete inputs).

    Examples:
        >>> gmm = gaussian_mixture(jnp.ones(2), jnp.array([[0.0], [3.0]]), jnp.ones((2, 1, 1)))
        >>> gmm.log_prob(jnp.zeros((5, 1))).shape
        (5,)
    """
    weights, means, covs = as_float(weights), as_float(means), as_float(covs)
    dtype = jnp.result_type(weights, means, covs)
    weights, means, covs = weights.astype(dtype), means.astype(dtype), covs.astype(dtype)
    if means.ndim != 2:
        raise ValueError(f"means must have shape (K, d); got shape {means.shape}.")
    num_components, dim = means.shape
    if weights.shape != (num_components,):
        raise ValueError(
            f"weights must have shape (K,) = ({num_components},) to match means; "
            f"got shape {weights.shape}."
        )
    if covs.shape == (dim, dim):
        covs = jnp.broadcast_to(covs, (num_components, dim, dim))
    if covs.shape != (num_components, dim, dim):
        raise ValueError(
            f"covs must have shape (K, d, d) = ({num_components}, {dim}, {dim}); "
            f"got shape {covs.shape}."
        )
    for name, array in (("weights", weights), ("means", means), ("covs", covs)):
        check_finite(array, name)
    if not isinstance(weights, jax.core.Tracer):
        if bool(jnp.any(weights < 0)) or not float(jnp.sum(weights)) > 0:
            raise ValueError("weights must be non-negative and not all zero.")
    if not isinstance(covs, jax.core.Tracer):
        asymmetry = jnp.max(jnp.abs(covs - jnp.swapaxes(covs, -1, -2)))
        if float(asymmetry) > 1e-5 * max(1.0, float(jnp.max(jnp.abs(covs)))):
            raise ValueError("covs must be symmetric.")
        if not bool(jnp.all(jnp.isfinite(jax.vmap(cholesky)(covs)))):
            raise ValueError("covs must be positive definite.")
    return GaussianMixture(weights / jnp.sum(weights), means, covs)
