"""Bayesian linear regression: the zoo's first model, with a closed-form oracle.

Two NumPyro programs share one prior, ``w ~ Normal(0, 1)^d`` and ``b ~ Normal(0, 1)``,
and one likelihood, ``y_n ~ Normal(x_n @ w + b, sigma)`` for ``n = 1..N``:

- :func:`model` puts a ``HalfNormal(1)`` prior on the noise scale ``sigma`` (latent sites
  ``w``, ``b``, ``sigma``); its posterior has no closed form.
- :func:`model_known_noise` fixes ``sigma`` (default :data:`NOISE_SCALE`); the prior is then
  conjugate, so :func:`exact_posterior` and :func:`log_evidence` give the posterior and the
  marginal likelihood exactly. These are the oracles the reference sampler and the amortized
  guides are tested against.

:func:`design_fn` simulates the covariates of one data set (everything but the observations).

All functions take one data set (``x`` of shape ``(N, d)``, ``y`` of shape ``(N,)``); batch over
data sets with :func:`jax.vmap`.

References:
    Bishop, C. M. (2006). *Pattern Recognition and Machine Learning*, section 3.3 (posterior)
    and section 3.5.1 (evidence).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from amortized_ppl._checks import check_finite
from amortized_ppl.linalg import cho_solve, cholesky
from amortized_ppl.models.checks import as_float, check_design_shape

__all__ = [
    "NOISE_SCALE",
    "PRIOR_SCALE",
    "GaussianPosterior",
    "Marginals",
    "design_fn",
    "exact_posterior",
    "log_evidence",
    "model",
    "model_known_noise",
]

NOISE_SCALE = 0.5
"""Observation noise SD of :func:`model_known_noise`.

0.5 is half the prior SD of each coefficient: with standard-normal covariates the signal
``x @ w + b`` has variance ``d + 1`` a priori, so a data set of a few dozen points pins the
coefficients down well (posterior SD about ``0.5 / sqrt(N)``) while the prior still matters for
small ``N``; both regimes are worth testing.
"""

PRIOR_SCALE = 1.0
"""Prior SD of every regression coefficient ``w_j`` and of the intercept ``b``."""

# The oracles must be exact: full float32 matrix products, not the TF32/bf16 passes that
# accelerators use by default for float32 (on an H100 those moved the posterior mean by ~5e-4).
_EXACT = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def _coefficients(num_features: int):
    """Sample the shared prior: ``w`` of shape ``(d,)`` and ``b`` of shape ``()``."""
    w = numpyro.sample(
        "w", dist.Normal(0.0, PRIOR_SCALE).expand([num_features]).to_event(1)
    )
    b = numpyro.sample("b", dist.Normal(0.0, PRIOR_SCALE))
    return w, b


def model(x, y=None):
    """Bayesian linear regression with unknown noise scale.

    ``w ~ Normal(0, 1)^d``, ``b ~ Normal(0, 1)``, ``sigma ~ HalfNormal(1)`` and, inside the
    ``"data"`` plate, ``y_n ~ Normal(x_n @ w + b, sigma)``.

    Args:
        x: Covariates, shape ``(N, d)``.
        y: Observations, shape ``(N,)``, or ``None`` to simulate them.

    Examples:
        >>> from numpyro.infer import Predictive
        >>> (x,), _ = design_fn(jax.random.key(0), 20, num_features=3)
        >>> Predictive(model, num_samples=1)(jax.random.key(1), x)["y"].shape
        (1, 20)
    """
    check_design_shape(x, y)
    w, b = _coefficients(x.shape[1])
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ w + b, sigma), obs=y)


def model_known_noise(x, y=None, *, sigma=NOISE_SCALE):
    """Bayesian linear regression with a fixed noise scale (conjugate; latent sites ``w``, ``b``).

    Same prior on ``w`` and ``b`` as :func:`model`; ``y_n ~ Normal(x_n @ w + b, sigma)`` with
    ``sigma`` a keyword so that the model's signature stays ``(x, y)``. The exact posterior is
    :func:`exact_posterior`.

    Args:
        x: Covariates, shape ``(N, d)``.
        y: Observations, shape ``(N,)``, or ``None`` to simulate them.
        sigma: Observation noise SD, a positive scalar; default :data:`NOISE_SCALE`.
    """
    check_design_shape(x, y)
    w, b = _coefficients(x.shape[1])
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ w + b, sigma), obs=y)


def design_fn(key, num_obs: int, num_features: int = 8) -> tuple[tuple, dict]:
    """Simulate the covariates of one data set, ``x ~ Normal(0, I)`` of shape ``(N, d)``.

    Args:
        key: A JAX PRNG key.
        num_obs: Number of observations ``N``, at least 1.
        num_features: Number of covariates ``d``, at least 1.

    Returns:
        ``((x,), {})``: the positional and keyword arguments of :func:`model` (or
        :func:`model_known_noise`) for one data set, without the observations.

    Examples:
        >>> (x,), kwargs = design_fn(jax.random.key(0), 50, num_features=3)
        >>> x.shape, kwargs
        ((50, 3), {})
    """
    for name, value in (("num_obs", num_obs), ("num_features", num_features)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}.")
    x = jax.random.normal(key, (num_obs, num_features))
    return (x,), {}


# ---------------------------------------------------------------------------------------------
# Closed-form oracle for model_known_noise
# ---------------------------------------------------------------------------------------------


class Marginals(NamedTuple):
    """Per-site marginal moments, each a dict keyed by site name (``"w"``, ``"b"``)."""

    mean: dict
    sd: dict


class GaussianPosterior(NamedTuple):
    """Gaussian posterior over ``theta = [w_1, ..., w_d, b]``.

    Attributes:
        mean: Posterior mean, shape ``(..., d + 1)``; the intercept is last.
        cov: Posterior covariance, shape ``(..., d + 1, d + 1)``.

    Leading axes, if any, index data sets (for example after :func:`jax.vmap`).
    """

    mean: jax.Array
    cov: jax.Array

    def marginals(self) -> Marginals:
        """Split into per-site means and SDs: ``w`` of shape ``(..., d)``, ``b`` of ``(...)``."""
        sd = jnp.sqrt(jnp.diagonal(self.cov, axis1=-2, axis2=-1))
        return Marginals(
            mean={"w": self.mean[..., :-1], "b": self.mean[..., -1]},
            sd={"w": sd[..., :-1], "b": sd[..., -1]},
        )

    def to_distribution(self) -> dist.MultivariateNormal:
        """Return the posterior as a NumPyro ``MultivariateNormal`` over ``[w, b]``."""
        return dist.MultivariateNormal(self.mean, covariance_matrix=self.cov)




def _check_positive(value, name: str) -> jax.Array:
    array = as_float(value)
    if jnp.ndim(array) != 0:
        raise ValueError(f"{name} must be a scalar; got shape {jnp.shape(array)}.")
    message = f"{name} must be positive and finite; got {value!r}."
    if isinstance(array, jax.core.Tracer):
        return eqx.error_if(array, ~(jnp.isfinite(array) & (array > 0)), message)
    if not (bool(jnp.isfinite(array)) and float(array) > 0):
        raise ValueError(message)
    return array


def _validated_inputs(x, y, sigma, prior_scale):
    x = as_float(x)
    y = as_float(y)
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D array of shape (N, d); got shape {x.shape}.")
    if y.shape != (x.shape[0],):
        raise ValueError(
            f"y must be a 1-D array with one entry per row of x, shape ({x.shape[0]},); "
            f"got shape {y.shape}."
        )
    x = check_finite(x, "x")
    y = check_finite(y, "y")
    sigma = _check_positive(sigma, "sigma")
    prior_scale = _check_positive(prior_scale, "prior_scale")
    dtype = jnp.result_type(x, y)
    return x.astype(dtype), y.astype(dtype), sigma.astype(dtype), prior_scale.astype(dtype)


def _conjugate_update(x, y, sigma, prior_scale):
    """Return the design ``Z = [x, 1]``, the posterior precision's Cholesky factor and the mean.

    Posterior precision ``P = Z^T Z / sigma^2 + I / prior_scale^2`` (shape ``(d+1, d+1)``),
    mean ``P^{-1} Z^T y / sigma^2`` (shape ``(d+1,)``).
    """
    design = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)
    num_params = design.shape[1]
    gram = jnp.matmul(design.T, design, precision=_EXACT)
    precision = gram / sigma**2 + jnp.eye(num_params, dtype=x.dtype) / prior_scale**2
    # Loop-based factorization: jaxlib's batched CPU Cholesky can deadlock under vmap on 2 cores.
    chol = cholesky(precision)
    mean = cho_solve(chol, jnp.matmul(design.T, y, precision=_EXACT) / sigma**2)
    return design, chol, mean


def exact_posterior(
    x, y, *, sigma=NOISE_SCALE, prior_scale=PRIOR_SCALE
) -> GaussianPosterior:
    """Compute the exact posterior of :func:`model_known_noise` by conjugate Gaussian updating.

    With design ``Z = [x, 1]`` of shape ``(N, d + 1)`` and ``theta = [w, b]``, the prior
    ``theta ~ Normal(0, prior_scale^2 I)`` and the likelihood ``y ~ Normal(Z theta, sigma^2 I)``
    give ``theta | y ~ Normal(m, S)`` with ``S^{-1} = Z^T Z / sigma^2 + I / prior_scale^2`` and
    ``m = S Z^T y / sigma^2``.

    Validation happens at trace time for shapes; finiteness raises ``ValueError`` on concrete
    inputs and an equinox runtime error under ``jit``/``vmap``.

    Args:
        x: Covariates, shape ``(N, d)``.
        y: Observations, shape ``(N,)``.
        sigma: Observation noise SD (positive scalar).
        prior_scale: Prior SD of each coefficient (positive scalar); the models use 1.

    Returns:
        A :class:`GaussianPosterior` with ``mean`` of shape ``(d + 1,)`` and ``cov`` of shape
        ``(d + 1, d + 1)``, ordered ``[w_1, ..., w_d, b]``. Map over data sets with
        ``jax.vmap(exact_posterior)(xs, ys)``.

    Examples:
        >>> (x,), _ = design_fn(jax.random.key(0), 50, num_features=3)
        >>> y = x @ jnp.array([1.0, -1.0, 0.5]) + 0.2
        >>> exact_posterior(x, y).marginals().mean["w"].shape
        (3,)
    """
    x, y, sigma, prior_scale = _validated_inputs(x, y, sigma, prior_scale)
    _, chol, mean = _conjugate_update(x, y, sigma, prior_scale)
    cov = cho_solve(chol, jnp.eye(chol.shape[0], dtype=chol.dtype))
    cov = 0.5 * (cov + cov.T)
    return GaussianPosterior(mean=mean, cov=cov)


def log_evidence(x, y, *, sigma=NOISE_SCALE, prior_scale=PRIOR_SCALE) -> jax.Array:
    """Compute the log marginal likelihood ``log p(y | x)`` of :func:`model_known_noise`.

    Marginally ``y ~ Normal(0, prior_scale^2 Z Z^T + sigma^2 I)`` with ``Z = [x, 1]``. Computed in
    ``O(N d^2)`` with the matrix determinant lemma and the identity
    ``y^T C^{-1} y = |y - Z m|^2 / sigma^2 + |m|^2 / prior_scale^2`` (a sum of non-negative terms,
    so no cancellation in float32), where ``m`` is the posterior mean.

    Args:
        x: Covariates, shape ``(N, d)``.
        y: Observations, shape ``(N,)``.
        sigma: Observation noise SD (positive scalar).
        prior_scale: Prior SD of each coefficient (positive scalar).

    Returns:
        The log evidence, a scalar.
    """
    x, y, sigma, prior_scale = _validated_inputs(x, y, sigma, prior_scale)
    design, chol, mean = _conjugate_update(x, y, sigma, prior_scale)
    num_obs, num_params = design.shape
    residual = y - jnp.matmul(design, mean, precision=_EXACT)
    quadratic = jnp.sum(residual**2) / sigma**2 + jnp.sum(mean**2) / prior_scale**2
    # log|C| = 2 N log sigma + 2 p log prior_scale + log|P|, with log|P| = 2 sum log diag(chol).
    log_det = (
        2.0 * num_obs * jnp.log(sigma)
        + 2.0 * num_params * jnp.log(prior_scale)
        + 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))
    )
    return -0.5 * (num_obs * jnp.log(2.0 * jnp.pi) + log_det + quadratic)
