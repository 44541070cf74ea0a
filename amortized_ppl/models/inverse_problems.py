"""Inverse problems with Gaussian-mixture priors: the zoo of the diffusion-posterior (RTB) issue.

A prior ``p(x)`` over ``x`` in ``R^d`` is a :class:`GaussianMixture`; an observation
``y = forward(x) + noise``, ``noise ~ Normal(0, noise_scale^2 I)``, gives the constraint
``r(x) = p(y | x)``; the target is the posterior ``p(x | y) ∝ p(x) r(x)``. Each problem is an
:class:`InverseProblem` that carries the prior, the likelihood (as a function and as a NumPyro
model), a NumPyro model of the joint (for NUTS references) and, when ``forward`` is linear, the
exact posterior (again a Gaussian mixture) and the exact log evidence ``log p(y)``.

- :func:`toy_2d_problem`: the 2-D toy of the RTB paper. Prior :func:`grid_prior_2d` (25 modes on
  ``{-10, -5, 0, 5, 10}^2``, covariance ``0.3 I``, equal weights); ``y = x + noise`` observed at
  ``y = (0, 0)`` with ``noise_scale`` = :data:`TOY_NOISE_SCALE` (about 2.39), so that
  ``r(x) = Normal(0; x, s^2 I)`` keeps the 9 modes of the centre 3 x 3 sub-grid. Component
  ``(i, j)`` (means ``(5 i, 5 j)``) has exact posterior weight ``p_i p_j`` with
  ``p_i ∝ 8^{-i^2}``: 0.6395 for the centre, 0.0799 for each of the 4 edge modes, 0.00999 for each
  of the 4 corner modes, and below 1.6e-4 for each of the 16 others (7.8e-4 in all).
- :func:`toy_2d_balanced_problem` and :func:`toy_2d_unbalanced_problem`: the same prior seen
  through ``y = x_1 + noise`` (SD 1) at ``y = 0`` (5 modes of weight 0.2) and ``y = 2`` (5 modes
  of 0.1745 and 5 of 0.0255): balanced and unbalanced posteriors with an exact truth.
- :func:`inpainting_problem` (masking) and :func:`blur_problem` (1-D Gaussian blur, circular or
  valid convolution): linear ``y = A x + noise`` in ``d = 8..16`` with a random
  well-separated prior (:func:`random_gmm_prior`); exact posterior by
  :func:`linear_gaussian_posterior`.
- :func:`phase_retrieval_problem`: ``y = |A x| + noise``; no closed form (``exact_posterior`` is
  ``None``): the ground truth is MCMC on :attr:`InverseProblem.joint_model`.

:func:`numpyro_likelihood` (from :mod:`~amortized_ppl.models.numpyro_likelihood`, re-exported
here) turns any NumPyro model with one observed site into ``r(x)``, so that any NumPyro
likelihood plugs into the samplers.

All arrays are float32 by default and follow ``jax_enable_x64``. Batched linear algebra uses the
loop-based :mod:`amortized_ppl.linalg` (jaxlib's batched CPU LAPACK kernels can deadlock).

References:
    Venkatraman, S., Jain, M., Scimeca, L., et al. (2024). Amortizing intractable inference in
    diffusion models for vision, language, and control. *NeurIPS*. (Relative trajectory balance;
    section 3's 25-mode toy.)
    Chung, H., Kim, J., Mccann, M. T., Klasky, M. L., Ye, J. C. (2023). Diffusion posterior
    sampling for general noisy inverse problems. *ICLR*. (Inpainting, blur, phase retrieval.)
    Bishop, C. M. (2006). *Pattern Recognition and Machine Learning*, section 2.3.3 (linear
    Gaussian models).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from amortized_ppl._checks import check_finite, check_int, check_positive_float
from amortized_ppl.linalg import cho_solve, cholesky, solve_lower
from amortized_ppl.models.checks import as_float, check_last_axis
from amortized_ppl.models.gaussian_mixture import GaussianMixture, gaussian_mixture
from amortized_ppl.models.numpyro_likelihood import numpyro_likelihood

__all__ = [
    "DEFAULT_NOISE_SCALE",
    "GRID_COMPONENT_VARIANCE",
    "GRID_LOCATIONS",
    "TOY_NOISE_SCALE",
    "TOY_SLICE_NOISE_SCALE",
    "GaussianMixture",
    "InverseProblem",
    "blur_matrix",
    "blur_problem",
    "conditional_log_likelihood",
    "gaussian_mixture",
    "grid_prior_2d",
    "inpainting_problem",
    "joint_sampler",
    "linear_gaussian_posterior",
    "linear_problem",
    "numpyro_likelihood",
    "phase_retrieval_problem",
    "random_gmm_prior",
    "share_observable_means",
    "toy_2d_balanced_problem",
    "toy_2d_problem",
    "toy_2d_unbalanced_problem",
]

DEFAULT_NOISE_SCALE = 0.05
"""Observation noise SD of the inpainting, blur and phase-retrieval problems (as in the paper)."""

GRID_LOCATIONS = (-10.0, -5.0, 0.0, 5.0, 10.0)
"""Coordinates of the 2-D grid prior's means: the 25 modes are ``GRID_LOCATIONS^2``."""

GRID_COMPONENT_VARIANCE = 0.3
"""Each grid mode's covariance is ``0.3 I``."""

TOY_NOISE_SCALE = math.sqrt(25.0 / (2.0 * math.log(8.0)) - GRID_COMPONENT_VARIANCE)
"""Noise SD ``s`` of the 2-D toy, about 2.3898.

With ``y = 0`` observed, mode ``(5 i, 5 j)`` gets posterior weight
``∝ Normal(0; mu, (0.3 + s^2) I) ∝ exp(-25 (i^2 + j^2) / (2 (0.3 + s^2))) = 8^{-(i^2 + j^2)}``:
a factor 8 per grid step along each axis, so the 3 x 3 centre block keeps 99.92% of the mass,
its corner modes keep ~1% each, and every other mode has less than 1.6e-4.
"""

_LOG_2PI = math.log(2.0 * math.pi)

# Oracles must be exact: full float32 products, not TF32/bf16 passes on accelerators.
_EXACT = jax.lax.Precision.HIGHEST


def grid_prior_2d() -> GaussianMixture:
    """The 25-mode 2-D grid prior of the RTB paper's toy.

    Equal weights 1/25, means ``GRID_LOCATIONS^2`` (row-major in the first coordinate: component
    ``5 a + b`` has mean ``(GRID_LOCATIONS[a], GRID_LOCATIONS[b])``), covariances ``0.3 I``.

    Examples:
        >>> grid_prior_2d().means.shape
        (25, 2)
    """
    locations = jnp.asarray(GRID_LOCATIONS, dtype=jnp.result_type(float))
    first, second = jnp.meshgrid(locations, locations, indexing="ij")
    means = jnp.stack([first.ravel(), second.ravel()], axis=-1)
    covs = jnp.broadcast_to(GRID_COMPONENT_VARIANCE * jnp.eye(2, dtype=means.dtype), (25, 2, 2))
    return GaussianMixture(jnp.full((25,), 1.0 / 25, dtype=means.dtype), means, covs)


def random_gmm_prior(
    key,
    d: int,
    num_components: int = 8,
    *,
    mean_scale: float = 3.0,
    component_scale: float = 0.5,
    weight_log_sd: float = 0.3,
) -> GaussianMixture:
    """Draw a random Gaussian-mixture prior with well-separated modes in ``R^d``.

    Means ``mu_k ~ Normal(0, mean_scale^2 I)`` (pairwise distances about
    ``mean_scale sqrt(2 d)``, 12 for the defaults at ``d = 8``); covariances
    ``component_scale^2 (I + B_k B_k^T / d) / 2`` with ``B_k`` standard normal ``(d, d)``
    (eigenvalues roughly in ``[0.5, 2.5] component_scale^2``, so component SDs stay below about
    0.8 for the defaults: modes are tens of SDs apart); weights ``∝ exp(weight_log_sd * z_k)``
    with ``z_k`` standard normal.

    Args:
        key: A JAX PRNG key.
        d: Dimension, at least 1.
        num_components: Number of components ``K``, at least 1.
        mean_scale: SD of the means' distribution.
        component_scale: Overall scale of each component's SD.
        weight_log_sd: SD of the log weights (0: equal weights).

    Returns:
        A :class:`GaussianMixture` with ``K`` components in ``R^d``.

    Examples:
        >>> random_gmm_prior(jax.random.key(0), 8, 4).covs.shape
        (4, 8, 8)
    """
    check_int(d, "d")
    check_int(num_components, "num_components")
    mean_scale = check_positive_float(mean_scale, "mean_scale")
    component_scale = check_positive_float(component_scale, "component_scale")
    weight_log_sd = float(weight_log_sd)
    if not (math.isfinite(weight_log_sd) and weight_log_sd >= 0):
        raise ValueError(f"weight_log_sd must be a non-negative float; got {weight_log_sd!r}.")
    return _random_gmm_prior(
        key, d, num_components, mean_scale, component_scale, weight_log_sd, jnp.result_type(float)
    )


@functools.partial(jax.jit, static_argnums=(1, 2, 6))
def _random_gmm_prior(key, d, num_components, mean_scale, component_scale, weight_log_sd, dtype):
    key_mean, key_cov, key_weight = jax.random.split(key, 3)
    means = mean_scale * jax.random.normal(key_mean, (num_components, d), dtype)
    factors = jax.random.normal(key_cov, (num_components, d, d), dtype)
    gram = jnp.einsum("kij,klj->kil", factors, factors, precision=_EXACT) / d
    covs = 0.5 * component_scale**2 * (jnp.eye(d, dtype=dtype) + gram)
    covs = 0.5 * (covs + jnp.swapaxes(covs, -1, -2))
    weights = jax.nn.softmax(
        weight_log_sd * jax.random.normal(key_weight, (num_components,), dtype)
    )
    return GaussianMixture(weights, means, covs)


def share_observable_means(prior: GaussianMixture, A, group_size: int) -> GaussianMixture:
    """Make groups of components indistinguishable through ``A``: a multimodal posterior.

    Components ``{0..g-1}, {g..2g-1}, ...`` (``g = group_size``) get the same projection of their
    means onto the row space of ``A`` (that of the group's first component) and keep their own
    projections onto the null space of ``A`` (right singular vectors with singular value below
    ``1e-6`` times the largest). An observation simulated from one group then leaves ``g``
    posterior modes (of comparable weight, up to the components' weights and covariances) that
    differ only in what ``A`` cannot see. When ``A`` has full column rank nothing changes.

    Args:
        prior: The mixture to modify, ``K`` components in ``R^d``.
        A: Forward matrix, shape ``(m, d)``, concrete.
        group_size: Components per group, at least 1; the last group may be smaller.

    Returns:
        A :class:`GaussianMixture` with the same weights and covariances and new means.
    """
    import numpy as np

    check_int(group_size, "group_size")
    matrix = np.asarray(A, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != prior.dim:
        raise ValueError(f"A must have shape (m, {prior.dim}); got shape {matrix.shape}.")
    _, singular, vt = np.linalg.svd(matrix)  # host numpy: no batched jaxlib LAPACK call
    rank = int(np.sum(singular > 1e-6 * max(float(singular.max(initial=0.0)), 1e-300)))
    if group_size == 1 or rank == prior.dim:
        return prior
    row_projector = vt[:rank].T @ vt[:rank]
    means = np.asarray(prior.means, dtype=np.float64)
    leaders = (np.arange(prior.num_components) // group_size) * group_size
    shared = means[leaders] @ row_projector
    new_means = means - means @ row_projector + shared
    return prior._replace(means=jnp.asarray(new_means, prior.means.dtype))


# ---------------------------------------------------------------------------------------------
# Exact posterior of a linear Gaussian observation under a Gaussian-mixture prior
# ---------------------------------------------------------------------------------------------


@jax.jit
def _linear_gaussian_posterior(weights, means, covs, A, y, noise_var):
    dtype = means.dtype
    num_obs, dim = A.shape
    eye_obs = jnp.eye(num_obs, dtype=dtype)
    eye_dim = jnp.eye(dim, dtype=dtype)

    def per_component(mean, cov):
        a_cov = jnp.matmul(A, cov, precision=_EXACT)  # (m, d)
        innovation_cov = jnp.matmul(a_cov, A.T, precision=_EXACT) + noise_var * eye_obs
        innovation_cov = 0.5 * (innovation_cov + innovation_cov.T)
        chol = cholesky(innovation_cov)
        gain = cho_solve(chol, a_cov).T  # (d, m) = Sigma A^T S^{-1}
        residual = y - jnp.matmul(A, mean, precision=_EXACT)
        post_mean = mean + jnp.matmul(gain, residual, precision=_EXACT)
        reduce = eye_dim - jnp.matmul(gain, A, precision=_EXACT)
        post_cov = jnp.matmul(jnp.matmul(reduce, cov, precision=_EXACT), reduce.T, precision=_EXACT)
        post_cov = post_cov + noise_var * jnp.matmul(gain, gain.T, precision=_EXACT)
        post_cov = 0.5 * (post_cov + post_cov.T)
        whitened = solve_lower(chol, residual)
        log_marginal = (
            -0.5 * jnp.sum(whitened**2)
            - jnp.sum(jnp.log(jnp.diagonal(chol)))
            - 0.5 * num_obs * _LOG_2PI
        )
        return post_mean, post_cov, log_marginal

    post_means, post_covs, log_marginals = jax.vmap(per_component)(means, covs)
    log_joint = jnp.log(weights) + log_marginals
    log_evidence = jax.nn.logsumexp(log_joint)
    weights = jnp.exp(log_joint - log_evidence)
    return GaussianMixture(weights, post_means, post_covs), log_evidence


def linear_gaussian_posterior(
    prior: GaussianMixture, A, y, noise_scale
) -> tuple[GaussianMixture, jax.Array]:
    """Compute the exact posterior and log evidence of ``y = A x + noise`` under a GMM prior.

    For each component, with ``S_k = A Sigma_k A^T + s^2 I`` and gain
    ``G_k = Sigma_k A^T S_k^{-1}``: posterior mean ``mu_k + G_k (y - A mu_k)``, covariance
    ``(I - G_k A) Sigma_k (I - G_k A)^T + s^2 G_k G_k^T`` (Joseph form: positive definite in
    float32 even when ``s`` is small), weight ``∝ w_k Normal(y; A mu_k, S_k)``; the log evidence
    is ``log sum_k w_k Normal(y; A mu_k, S_k)``.

    Args:
        prior: The prior mixture, ``K`` components in ``R^d``.
        A: Forward matrix, shape ``(m, d)``.
        y: Observation, shape ``(m,)``.
        noise_scale: Observation noise SD ``s > 0`` (scalar).

    Returns:
        ``(posterior, log_evidence)``: a :class:`GaussianMixture` with the same ``K`` components
        (negligible ones keep tiny weights) and the scalar ``log p(y)``.

    Examples:
        >>> post, log_z = linear_gaussian_posterior(grid_prior_2d(), jnp.eye(2), jnp.zeros(2), 2.0)
        >>> post.means.shape, log_z.shape
        ((25, 2), ())
    """
    A, y = as_float(A), as_float(y)
    if A.ndim != 2 or A.shape[1] != prior.dim:
        raise ValueError(f"A must have shape (m, {prior.dim}); got shape {A.shape}.")
    if y.shape != (A.shape[0],):
        raise ValueError(f"y must have shape ({A.shape[0]},) to match A; got shape {y.shape}.")
    check_finite(A, "A")
    check_finite(y, "y")
    if not isinstance(noise_scale, jax.core.Tracer):
        check_positive_float(noise_scale, "noise_scale")
    dtype = jnp.result_type(prior.means, A, y)
    noise_var = jnp.asarray(noise_scale, dtype) ** 2
    return _linear_gaussian_posterior(*(array.astype(dtype) for array in (*prior, A, y)), noise_var)


# ---------------------------------------------------------------------------------------------
# Inverse problems
# ---------------------------------------------------------------------------------------------


class InverseProblem(NamedTuple):
    """An inverse problem ``y = forward(x) + Normal(0, noise_scale^2 I)`` with a GMM prior.

    Attributes:
        prior: The prior :class:`GaussianMixture` over ``x`` in ``R^d``.
        forward: ``x (..., d) -> (..., m)``.
        y: The observation, shape ``(m,)``.
        noise_scale: Observation noise SD.
        log_likelihood: ``x (..., d) -> log p(y | x)`` of shape ``(...)``: the constraint
            ``log r(x)``.
        exact_posterior: The exact posterior mixture, or ``None`` (nonlinear ``forward``).
        log_evidence: The exact ``log p(y)`` (a scalar array), or ``None``.
        name: A short name, e.g. ``"inpainting_d8"``.
        likelihood_model: NumPyro model ``(x, y=None)`` with observed site ``"y"``.
        joint_model: NumPyro model ``(y=None)``: ``x ~ prior`` (site ``"x"``), then
            ``likelihood_model``; for NUTS references.
        matrix: The ``(m, d)`` matrix ``A`` inside ``forward``.
        x_true: The prior draw ``y`` was simulated from, shape ``(d,)``, or ``None``.
    """

    prior: GaussianMixture
    forward: Callable[[jax.Array], jax.Array]
    y: jax.Array
    noise_scale: float
    log_likelihood: Callable[[jax.Array], jax.Array]
    exact_posterior: GaussianMixture | None
    log_evidence: jax.Array | None
    name: str
    likelihood_model: Callable
    joint_model: Callable
    matrix: jax.Array | None = None
    x_true: jax.Array | None = None

    def log_joint(self, x) -> jax.Array:
        """Unnormalized log posterior ``log p(x) + log p(y | x)``, shape ``(...)``."""
        return self.prior.log_prob(x) + self.log_likelihood(x)


def _build_problem(
    name: str,
    prior: GaussianMixture,
    forward: Callable,
    matrix: jax.Array,
    y: jax.Array,
    noise_scale: float,
    *,
    linear: bool,
    x_true: jax.Array | None,
) -> InverseProblem:
    num_obs = matrix.shape[0]
    y = check_finite(as_float(y), "y")
    if y.shape != (num_obs,):
        raise ValueError(f"y must have shape ({num_obs},); got shape {y.shape}.")
    y = y.astype(prior.means.dtype)
    dim = prior.dim

    def checked_forward(x):
        x = as_float(x)
        check_last_axis(x, dim)
        return forward(x)

    def log_likelihood(x):
        mean = checked_forward(x)
        residual = (y - mean) / noise_scale
        return jnp.sum(-0.5 * residual**2 - math.log(noise_scale) - 0.5 * _LOG_2PI, axis=-1)

    def likelihood_model(x, y=None):
        """``y ~ Normal(forward(x), noise_scale^2 I)``, one observed site ``"y"`` of shape (m,)."""
        numpyro.sample("y", dist.Normal(checked_forward(x), noise_scale).to_event(1), obs=y)

    def joint_model(y=None):
        """``x ~ prior`` (site ``"x"``), then :func:`likelihood_model`."""
        x = numpyro.sample("x", prior.to_numpyro())
        likelihood_model(x, y=y)

    if linear:
        posterior, log_evidence = linear_gaussian_posterior(prior, matrix, y, noise_scale)
    else:
        posterior, log_evidence = None, None
    return InverseProblem(
        prior=prior,
        forward=checked_forward,
        y=y,
        noise_scale=noise_scale,
        log_likelihood=log_likelihood,
        exact_posterior=posterior,
        log_evidence=log_evidence,
        name=name,
        likelihood_model=likelihood_model,
        joint_model=joint_model,
        matrix=matrix,
        x_true=x_true,
    )


def _simulate_y(key, prior: GaussianMixture, forward: Callable, noise_scale: float):
    key_x, key_noise = jax.random.split(key)
    x_true = prior.sample(key_x, 1)[0]
    mean = forward(x_true)
    y = mean + noise_scale * jax.random.normal(key_noise, mean.shape, mean.dtype)
    return x_true, y


def linear_problem(
    key,
    prior: GaussianMixture,
    A,
    *,
    noise_scale: float = DEFAULT_NOISE_SCALE,
    y=None,
    name: str = "linear",
) -> InverseProblem:
    """Build ``y = A x + noise`` for any prior and matrix, with its exact posterior.

    Args:
        key: A JAX PRNG key, used to simulate ``y`` from ``x_true ~ prior`` when ``y`` is None.
        prior: The prior mixture over ``R^d``.
        A: Forward matrix, shape ``(m, d)``.
        noise_scale: Observation noise SD.
        y: An observation of shape ``(m,)`` to use instead of a simulated one.
        name: The problem's name.

    Returns:
        An :class:`InverseProblem` with ``exact_posterior`` and ``log_evidence``.
    """
    noise_scale = check_positive_float(noise_scale, "noise_scale")
    A = check_finite(as_float(A), "A").astype(prior.means.dtype)
    if A.ndim != 2 or A.shape[1] != prior.dim:
        raise ValueError(f"A must have shape (m, {prior.dim}); got shape {A.shape}.")
    forward = lambda x: jnp.matmul(x, A.T, precision=_EXACT)
    x_true = None
    if y is None:
        x_true, y = _simulate_y(key, prior, forward, noise_scale)
    return _build_problem(name, prior, forward, A, y, noise_scale, linear=True, x_true=x_true)


def toy_2d_problem() -> InverseProblem:
    """The 2-D toy: 25-mode grid prior, posterior with 9 modes of known weight.

    ``y = x + noise`` with ``noise_scale`` = :data:`TOY_NOISE_SCALE` observed at ``y = (0, 0)``,
    i.e. ``r(x) = Normal((0, 0); x, s^2 I)``. The exact posterior is the 25-component mixture
    with weights ``p_i p_j`` for the mode at ``(5 i, 5 j)``, ``p_i = 8^{-i^2} / (1 + 2/8 + 2/8^4)``:

    ======================  ===============  =====
    modes                   weight (each)    count
    ======================  ===============  =====
    centre ``(0, 0)``       0.639500         1
    edges ``(±5, 0)``...    0.079938         4
    corners ``(±5, ±5)``    0.009992         4
    ``(±10, 0)``...         1.561e-4         4
    ``(±10, ±5)``...        1.952e-5         8
    ``(±10, ±10)``          3.8e-8           4
    ======================  ===============  =====

    The 9 centre modes hold 0.999219 of the mass. Each posterior component has covariance
    ``(0.3 s^2 / (0.3 + s^2)) I`` (about ``0.285 I``) and mean shrunk by ``s^2 / (0.3 + s^2)``
    (about 0.950) towards the origin; ``log p(y) = -log 25 - log(2 pi v) + 2 log(1.25048828125)``
    with ``v = 0.3 + s^2 = 25 / (2 log 8)``, about -6.40331.
    """
    prior = grid_prior_2d()
    dtype = prior.means.dtype
    return linear_problem(
        None,
        prior,
        jnp.eye(2, dtype=dtype),
        noise_scale=TOY_NOISE_SCALE,
        y=jnp.zeros(2, dtype),
        name="toy_2d",
    )


TOY_SLICE_NOISE_SCALE = 1.0
"""Noise SD of the sliced toys (:func:`toy_2d_balanced_problem`, :func:`toy_2d_unbalanced_problem`)."""


def _toy_2d_slice(first: float, name: str) -> InverseProblem:
    """The grid prior seen through its first coordinate only: ``y = x_1 + noise``, sd 1."""
    prior = grid_prior_2d()
    dtype = prior.means.dtype
    return linear_problem(None, prior, jnp.array([[1.0, 0.0]], dtype),
                          noise_scale=TOY_SLICE_NOISE_SCALE, y=jnp.array([first], dtype),
                          name=name)


def toy_2d_balanced_problem() -> InverseProblem:
    """The 2-D toy with a constraint whose posterior has 5 modes of equal weight.

    The 25-mode grid prior (:func:`grid_prior_2d`) and ``y = x_1 + noise`` (noise SD 1)
    observed at ``y = 0``: ``r(x)`` does not depend on ``x_2``, so the 5 modes of the column
    ``x_1 = 0`` keep equal weights, 0.19997 each; a mode of the columns ``x_1 = +-5`` is down by
    ``exp(-25 / 2.6)``, 1.3e-5 each. Exact posterior and log evidence in closed form, as for every
    linear problem. With :func:`toy_2d_unbalanced_problem`, the balanced and unbalanced posteriors
    of issue 22 (the paper's toy restricts the grid to a subset of its modes; this constraint is
    linear-Gaussian so that the truth stays exact).
    """
    return _toy_2d_slice(0.0, "toy_2d_balanced")


def toy_2d_unbalanced_problem() -> InverseProblem:
    """The 2-D toy with a constraint whose posterior has 10 modes in two weight classes.

    As :func:`toy_2d_balanced_problem`, observed at ``y = 2``: the column ``x_1 = 0`` and the
    column ``x_1 = 5`` keep their 5 modes each, in the ratio ``exp((3^2 - 2^2) / 2.6)`` (about
    6.8): 0.1745 for each mode of the first and 0.0255 for each of the second (every other mode
    below 1e-5).
    """
    return _toy_2d_slice(2.0, "toy_2d_unbalanced")


def inpainting_problem(
    key,
    d: int = 8,
    observed_fraction: float = 0.5,
    noise_scale: float = DEFAULT_NOISE_SCALE,
    num_components: int = 8,
    *,
    group_size: int = 2,
    y=None,
) -> InverseProblem:
    """Inpainting (masking): observe a random subset of the coordinates of ``x`` with noise.

    ``m = max(1, round(observed_fraction * d))`` coordinates, chosen at random and sorted;
    ``A`` is the ``(m, d)`` selection matrix. The prior is :func:`random_gmm_prior` with
    :func:`share_observable_means`: components come in groups of ``group_size`` that agree on
    the observed coordinates, so the posterior has ``group_size`` modes (1: unimodal).

    Args:
        key: A JAX PRNG key (prior, mask, ``x_true`` and noise).
        d: Dimension of ``x``.
        observed_fraction: Fraction of observed coordinates, in ``(0, 1]``.
        noise_scale: Observation noise SD.
        num_components: Number of prior components.
        group_size: Prior components per group sharing the observed coordinates.
        y: An observation of shape ``(m,)`` to use instead of a simulated one.

    Returns:
        An :class:`InverseProblem` named ``"inpainting_d{d}"`` with its exact posterior.

    Examples:
        >>> problem = inpainting_problem(jax.random.key(0), d=8)
        >>> problem.y.shape, problem.exact_posterior.means.shape
        ((4,), (8, 8))
    """
    check_int(d, "d")
    fraction = check_positive_float(observed_fraction, "observed_fraction")
    if fraction > 1:
        raise ValueError(f"observed_fraction must be in (0, 1]; got {observed_fraction!r}.")
    key_prior, key_mask, key_y = jax.random.split(key, 3)
    prior = random_gmm_prior(key_prior, d, num_components)
    num_observed = max(1, round(fraction * d))
    observed = jnp.sort(jax.random.permutation(key_mask, d)[:num_observed])
    A = jnp.eye(d, dtype=prior.means.dtype)[observed]
    prior = share_observable_means(prior, A, group_size)
    return linear_problem(key_y, prior, A, noise_scale=noise_scale, y=y, name=f"inpainting_d{d}")


def blur_matrix(d: int, kernel_width: float = 1.0, *, mode: str = "circular") -> jax.Array:
    """Matrix of a 1-D Gaussian blur, ``(d, d)`` (circular) or ``(d - 2 h, d)`` (valid).

    The kernel is ``exp(-k^2 / (2 kernel_width^2))`` for offsets ``|k| <= h``, normalized to sum
    to 1, with half-width ``h = min(ceil(2 kernel_width), (d - 1) // 2)``.

    Args:
        d: Signal length.
        kernel_width: The Gaussian kernel's SD in samples.
        mode: ``"circular"`` (periodic boundary) or ``"valid"`` (outputs whose window fits).
    """
    check_int(d, "d")
    width = check_positive_float(kernel_width, "kernel_width")
    if mode not in ("circular", "valid"):
        raise ValueError(f"mode must be 'circular' or 'valid'; got {mode!r}.")
    half = min(math.ceil(2 * width), (d - 1) // 2)
    if mode == "valid" and d - 2 * half < 1:
        raise ValueError(f"d={d} is too small for a valid blur of half-width {half}.")
    dtype = jnp.result_type(float)
    offsets = jnp.arange(-half, half + 1)
    kernel = jnp.exp(-0.5 * (offsets / width) ** 2).astype(dtype)
    kernel = kernel / jnp.sum(kernel)
    if mode == "circular":
        centres = jnp.arange(d)
    else:
        centres = jnp.arange(half, d - half)
    columns = (centres[:, None] + offsets[None, :]) % d  # (m, 2h + 1)
    rows = jnp.broadcast_to(jnp.arange(centres.shape[0])[:, None], columns.shape)
    matrix = jnp.zeros((centres.shape[0], d), dtype)
    return matrix.at[rows, columns].add(jnp.broadcast_to(kernel, columns.shape))


def blur_problem(
    key,
    d: int = 8,
    kernel_width: float = 1.0,
    noise_scale: float = DEFAULT_NOISE_SCALE,
    num_components: int = 8,
    *,
    mode: str = "valid",
    group_size: int = 2,
    y=None,
) -> InverseProblem:
    """Deblurring: observe a 1-D Gaussian blur (:func:`blur_matrix`) of ``x`` with noise.

    The default ``"valid"`` blur has ``m = d - 2 h < d`` outputs, hence an exact null space, and
    the prior (:func:`random_gmm_prior` with :func:`share_observable_means`) has groups of
    ``group_size`` components with the same blurred means: a posterior with ``group_size``
    modes. A ``"circular"`` blur is square and invertible (if ill-conditioned): the grouping then
    changes nothing and the posterior is practically unimodal.

    Args:
        key: A JAX PRNG key (prior, ``x_true`` and noise).
        d: Dimension of ``x``.
        kernel_width: The blur kernel's SD in samples.
        noise_scale: Observation noise SD.
        num_components: Number of prior components.
        mode: ``"valid"`` (``m = d - 2 h``) or ``"circular"`` (``m = d``).
        group_size: Prior components per group sharing their blurred means.
        y: An observation to use instead of a simulated one.

    Returns:
        An :class:`InverseProblem` named ``"blur_d{d}"`` with its exact posterior.

    Examples:
        >>> blur_problem(jax.random.key(0), d=8).matrix.shape
        (4, 8)
    """
    key_prior, key_y = jax.random.split(key)
    A = blur_matrix(d, kernel_width, mode=mode)
    prior = share_observable_means(random_gmm_prior(key_prior, d, num_components), A, group_size)
    return linear_problem(key_y, prior, A, noise_scale=noise_scale, y=y, name=f"blur_d{d}")


def phase_retrieval_problem(
    key,
    d: int = 8,
    m: int | None = None,
    noise_scale: float = DEFAULT_NOISE_SCALE,
    num_components: int = 8,
    *,
    y=None,
) -> InverseProblem:
    """Phase retrieval: ``y = |A x| + noise`` with a Gaussian ``A``; no closed-form posterior.

    ``A`` has independent ``Normal(0, 1 / d)`` entries, shape ``(m, d)``; ``m`` defaults to
    ``2 d``. The posterior is multimodal whenever ``-x`` is also plausible under the prior;
    ``exact_posterior`` and ``log_evidence`` are ``None`` (use NUTS on ``joint_model``).

    Args:
        key: A JAX PRNG key (prior, ``A``, ``x_true`` and noise).
        d: Dimension of ``x``.
        m: Number of measurements; ``None`` for ``2 d``.
        noise_scale: Observation noise SD.
        num_components: Number of prior components.
        y: An observation of shape ``(m,)`` to use instead of a simulated one.

    Examples:
        >>> phase_retrieval_problem(jax.random.key(0), d=8).y.shape
        (16,)
    """
    check_int(d, "d")
    m = 2 * d if m is None else check_int(m, "m")
    noise_scale = check_positive_float(noise_scale, "noise_scale")
    key_prior, key_matrix, key_y = jax.random.split(key, 3)
    prior = random_gmm_prior(key_prior, d, num_components)
    A = jax.random.normal(key_matrix, (m, d), prior.means.dtype) / math.sqrt(d)
    forward = lambda x: jnp.abs(jnp.matmul(x, A.T, precision=_EXACT))
    x_true = None
    if y is None:
        x_true, y = _simulate_y(key_y, prior, forward, noise_scale)
    return _build_problem(
        f"phase_retrieval_d{d}", prior, forward, A, y, noise_scale, linear=False, x_true=x_true
    )


# ---------------------------------------------------------------------------------------------
# Simulation across observations (amortized inference)
# ---------------------------------------------------------------------------------------------


def joint_sampler(problem: InverseProblem) -> Callable:
    """``(key, n) -> (x (n, d), y (n, m))``: draws from the joint ``p(x) p(y | x)`` of a problem.

    Each ``x`` is an exact posterior sample for its own ``y``: the training pairs of amortized
    (conditional) samplers.

    Examples:
        >>> x, y = joint_sampler(toy_2d_problem())(jax.random.key(0), 4)
        >>> x.shape, y.shape
        ((4, 2), (4, 2))
    """

    def sample(key, n: int):
        key_x, key_noise = jax.random.split(key)
        x = problem.prior.sample(key_x, n)
        mean = problem.forward(x)
        return x, mean + problem.noise_scale * jax.random.normal(key_noise, mean.shape, mean.dtype)

    return sample


def conditional_log_likelihood(problem: InverseProblem) -> Callable:
    """``(x (B, d), y (B, m)) -> (B,)``: ``log p(y_b | x_b)`` for any observations ``y_b``.

    The problem's likelihood with its observation as an input, for amortized samplers.

    Raises:
        ValueError: ``y`` whose trailing shape is not the problem's observation shape ``(m,)``.
    """
    num_obs = problem.y.shape[0]
    noise = problem.noise_scale

    def log_likelihood(x, y):
        y = as_float(y)
        if y.ndim < 1 or y.shape[-1] != num_obs:
            raise ValueError(f"y must have shape (..., {num_obs}); got shape {y.shape}.")
        residual = (y - problem.forward(x)) / noise
        return jnp.sum(-0.5 * residual**2 - math.log(noise) - 0.5 * _LOG_2PI, axis=-1)

    return log_likelihood
