"""Hierarchical models: global latents, a plate of groups with local latents, nested observations.

Every model here takes padded per-observation arrays ``(num_groups, max_size)``, a boolean
``mask`` of the same shape marking the real observations, and ``y=None`` to simulate. The group
plate is ``dim=-2`` and the observation plate ``dim=-1``; observations are masked with
``numpyro.handlers.mask``. :func:`amortized_ppl.hierarchy.pad_groups` turns the flat
(observation, group index) layout of a data frame into this one.

- :func:`eight_schools` (Rubin 1981; Gelman et al., *Bayesian Data Analysis*, 3rd ed., sec. 5.5):
  ``mu ~ Normal(0, 5)``, ``tau ~ HalfCauchy(5)``, ``theta_j ~ Normal(mu, tau)``,
  ``y_j ~ Normal(theta_j, sigma_j)`` with known ``sigma_j``. Centred: where ``tau`` is small the
  posterior is a funnel. :func:`eight_schools_noncentered` is the same model with
  ``theta_j = mu + tau * theta_decentered_j``.
- :func:`varying_slopes`: a radon-like regression, ``y_ij ~ Normal(a_j + b_j x_ij, sigma_y)``
  with ``a_j ~ Normal(mu_a, sigma_a)``, ``b_j ~ Normal(mu_b, sigma_b)``.
- :func:`multilevel_logistic`: ``y_ij ~ Bernoulli(logit^-1(alpha_j + beta x_ij))`` with
  ``alpha_j ~ Normal(mu, sigma)``.

Design functions ``design_fn(key, mask) -> dict`` give the covariates of a padded layout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer.reparam import LocScaleReparam

__all__ = [
    "EIGHT_SCHOOLS_SIGMA",
    "EIGHT_SCHOOLS_Y",
    "eight_schools",
    "eight_schools_data",
    "eight_schools_design",
    "eight_schools_exact",
    "eight_schools_noncentered",
    "multilevel_logistic",
    "regression_design",
    "varying_slopes",
    "varying_slopes_collapsed",
]

EIGHT_SCHOOLS_Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
"""The eight schools' estimated coaching effects (Rubin 1981)."""
EIGHT_SCHOOLS_SIGMA = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)
"""Their standard errors."""


def _check(mask, y, *arrays):
    if jnp.ndim(mask) != 2:
        raise ValueError(f"mask must have shape (num_groups, max_size); got {jnp.shape(mask)}.")
    for name, value in [("y", y)] + list(arrays):
        if value is not None and jnp.shape(value) != jnp.shape(mask):
            raise ValueError(f"{name} must have the mask's shape {jnp.shape(mask)}; got "
                             f"{jnp.shape(value)}.")


def eight_schools(sigma, mask, y=None):
    """Centred eight schools; latent sites ``mu``, ``tau`` (globals), ``theta`` (per school).

    Args:
        sigma: known standard errors, ``(num_groups, max_size)`` (one observation per school in the
            classic data: ``(8, 1)``).
        mask: boolean, True for real observations.
        y: observations of ``sigma``'s shape, or None to simulate.
    """
    _check(mask, y, ("sigma", sigma))
    num_groups, max_size = jnp.shape(mask)
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("schools", num_groups, dim=-2):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        with numpyro.plate("obs", max_size, dim=-1), numpyro.handlers.mask(mask=mask):
            numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def eight_schools_noncentered(sigma, mask, y=None):
    """:func:`eight_schools` with ``theta`` non-centred: local site ``theta_decentered``."""
    with numpyro.handlers.reparam(config={"theta": LocScaleReparam(centered=0)}):
        eight_schools(sigma, mask, y)


def eight_schools_data() -> dict:
    """The classic data set as the models' keyword arguments (``y=`` included)."""
    return {
        "sigma": jnp.asarray(EIGHT_SCHOOLS_SIGMA)[:, None],
        "mask": jnp.ones((8, 1), bool),
        "y": jnp.asarray(EIGHT_SCHOOLS_Y)[:, None],
    }


def eight_schools_design(key, mask) -> dict:
    """Standard errors ``sigma ~ Uniform(9, 18)`` (the classic data's range) per observation."""
    return {"sigma": jax.random.uniform(key, jnp.shape(mask), minval=9.0, maxval=18.0)}


def varying_slopes(x, mask, y=None):
    """Radon-like varying intercepts and slopes.

    Latent sites: globals ``mu_a``, ``mu_b``, ``sigma_a``, ``sigma_b``, ``sigma_y``; locals ``a``,
    ``b`` (per group). ``x``, ``mask``, ``y``: ``(num_groups, max_size)``.
    """
    _check(mask, y, ("x", x))
    num_groups, max_size = jnp.shape(mask)
    mu_a = numpyro.sample("mu_a", dist.Normal(0.0, 2.0))
    mu_b = numpyro.sample("mu_b", dist.Normal(0.0, 1.0))
    sigma_a = numpyro.sample("sigma_a", dist.HalfNormal(1.0))
    sigma_b = numpyro.sample("sigma_b", dist.HalfNormal(0.5))
    sigma_y = numpyro.sample("sigma_y", dist.HalfNormal(1.0))
    with numpyro.plate("groups", num_groups, dim=-2):
        a = numpyro.sample("a", dist.Normal(mu_a, sigma_a))
        b = numpyro.sample("b", dist.Normal(mu_b, sigma_b))
        with numpyro.plate("obs", max_size, dim=-1), numpyro.handlers.mask(mask=mask):
            numpyro.sample("y", dist.Normal(a + b * x, sigma_y), obs=y)


def multilevel_logistic(x, mask, y=None):
    """Varying-intercept logistic regression.

    Latent sites: globals ``mu``, ``sigma``, ``beta``; local ``alpha`` (per group).
    ``x``, ``mask``, ``y`` (0/1): ``(num_groups, max_size)``.
    """
    _check(mask, y, ("x", x))
    num_groups, max_size = jnp.shape(mask)
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.5))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0))
    with numpyro.plate("groups", num_groups, dim=-2):
        alpha = numpyro.sample("alpha", dist.Normal(mu, sigma))
        with numpyro.plate("obs", max_size, dim=-1), numpyro.handlers.mask(mask=mask):
            numpyro.sample("y", dist.Bernoulli(logits=alpha + beta * x), obs=y)


def regression_design(key, mask) -> dict:
    """Standard-normal covariates ``x`` per observation."""
    return {"x": jax.random.normal(key, jnp.shape(mask))}


def eight_schools_exact(sigma, y, *, num_mu: int = 601, num_log_tau: int = 801) -> dict:
    """Posterior means and SDs of eight schools' latents by quadrature (float64 NumPy).

    Given ``(mu, tau)`` the school effects are conditionally Gaussian and ``y_j`` is marginally
    ``Normal(mu, sqrt(sigma_j^2 + tau^2))``, so ``p(mu, log tau | y)`` is a 2-D density, integrated
    here on a grid (``mu`` in [-25, 25], ``log tau`` in [-9, 6]; the prior's and the likelihood's
    tails put less than 1e-6 of the mass outside), and every other moment follows by iterated
    expectations.

    Args:
        sigma, y: ``(num_groups,)`` standard errors and observations (one per school).

    Returns:
        ``{"mu": (mean, sd), "log_tau": (mean, sd), "theta": (means, sds),
        "theta_decentered": (means, sds)}`` (per school for the last two).
    """
    sigma = np.asarray(sigma, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    mu = np.linspace(-25.0, 25.0, num_mu)[:, None, None]
    log_tau = np.linspace(-9.0, 6.0, num_log_tau)[None, :, None]
    tau = np.exp(log_tau)
    variance = sigma ** 2 + tau ** 2
    log_density = (-0.5 * (mu[..., 0] / 5.0) ** 2
                   + np.log(2.0 / (np.pi * 5.0)) - np.log1p((tau[..., 0] / 5.0) ** 2)
                   + log_tau[..., 0]  # d tau = tau d log tau
                   + np.sum(-0.5 * (y - mu) ** 2 / variance - 0.5 * np.log(variance), axis=-1))
    weight = np.exp(log_density - log_density.max())
    weight /= weight.sum()

    def moments(values):
        mean = np.sum(weight[..., None] * values[0], axis=(0, 1))
        second = np.sum(weight[..., None] * (values[1] + values[0] ** 2), axis=(0, 1))
        return mean, np.sqrt(np.maximum(second - mean ** 2, 0.0))

    shape = weight.shape + (1,)
    mu_mean, mu_sd = moments((np.broadcast_to(mu, shape), np.zeros(shape)))
    lt_mean, lt_sd = moments((np.broadcast_to(log_tau, shape), np.zeros(shape)))
    precision = 1.0 / sigma ** 2 + 1.0 / tau ** 2
    cond_var = 1.0 / precision
    cond_mean = cond_var * (y / sigma ** 2 + mu / tau ** 2)
    theta = moments((cond_mean, cond_var))
    decentered = moments(((cond_mean - mu) / tau, cond_var / tau ** 2))
    return {"mu": (float(mu_mean[0]), float(mu_sd[0])),
            "log_tau": (float(lt_mean[0]), float(lt_sd[0])),
            "theta": theta, "theta_decentered": decentered}


def varying_slopes_collapsed(x, mask, y):
    """:func:`varying_slopes` with every group's ``(a_j, b_j)`` integrated out in closed form.

    Latent sites: the globals only. Group j's observations are jointly
    ``Normal(X_j m, X_j S X_j^T + sigma_y^2 I)`` with ``X_j = [1, x_ij]``, ``m = (mu_a, mu_b)``,
    ``S = diag(sigma_a^2, sigma_b^2)``; by the Woodbury identity and the matrix determinant
    lemma its log density needs only 2 x 2 algebra per group and one pass over the residuals, so
    NUTS on it gives the globals' exact posterior at 10^5 groups, by code that shares nothing
    with the Laplace steps.
    """
    _check(mask, y, ("x", x))
    mu_a = numpyro.sample("mu_a", dist.Normal(0.0, 2.0))
    mu_b = numpyro.sample("mu_b", dist.Normal(0.0, 1.0))
    sigma_a = numpyro.sample("sigma_a", dist.HalfNormal(1.0))
    sigma_b = numpyro.sample("sigma_b", dist.HalfNormal(0.5))
    sigma_y = numpyro.sample("sigma_y", dist.HalfNormal(1.0))
    w = jnp.asarray(mask, jnp.result_type(float))
    n = w.sum(-1)
    noise = sigma_y ** 2
    # Residuals from the population line, per observation (sums of squares of raw y would cancel
    # in float32 at thousands of groups).
    r = w * (y - mu_a - mu_b * x)
    xtr0, xtr1 = r.sum(-1), (r * x).sum(-1)
    # A = S^-1 + X^T X / sigma_y^2 (2 x 2, per group); u* = A^-1 X^T r / sigma_y^2 is the
    # conditional mean of the group's offsets from (mu_a, mu_b).
    sx, sxx = (w * x).sum(-1), (w * x * x).sum(-1)
    a00 = 1 / sigma_a ** 2 + n / noise
    a01 = sx / noise
    a11 = 1 / sigma_b ** 2 + sxx / noise
    det_a = a00 * a11 - a01 ** 2
    u0 = (a11 * xtr0 - a01 * xtr1) / (det_a * noise)
    u1 = (a00 * xtr1 - a01 * xtr0) / (det_a * noise)
    # r^T (X S X^T + sigma^2 I)^-1 r = min_u |r - X u|^2 / sigma^2 + u^T S^-1 u, attained at u*.
    fit = w * (r - u0[:, None] - u1[:, None] * x)
    quad = (fit ** 2).sum(-1) / noise + u0 ** 2 / sigma_a ** 2 + u1 ** 2 / sigma_b ** 2
    log_det = n * jnp.log(noise) + 2 * jnp.log(sigma_a) + 2 * jnp.log(sigma_b) + jnp.log(det_a)
    numpyro.factor("groups", jnp.sum(-0.5 * (quad + log_det + n * jnp.log(2 * jnp.pi))))
