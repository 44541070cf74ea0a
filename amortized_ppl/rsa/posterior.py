"""RSA over posterior candidates: Gaussian states aggregated with the model's density.

A *candidate* is a Gaussian over the flat unconstrained latents of one data set,
:class:`GaussianCandidate` ``(loc (D,), scale_tril (D, D))``: an iterative guide's state after a
few passes in one mini-batch order (:func:`iterative_generator`), an amortized posterior, a
Laplace fit. Candidates made with different keys disagree, and RSA
(:func:`amortized_ppl.rsa.rsa`) turns their spread into a better population: each round, every
member aggregates a random subset of ``K`` earlier candidates.

**The base aggregator** (:func:`base_aggregate`, the network switched off) is adaptive importance
sampling with the subset as its proposal. Draw ``S / K`` points from each member (stratified,
with antithetic, moment-matched standard normals: :func:`standard_draws`), weigh every point by
the model's density over the *mixture* of the ``K`` members (the deterministic-mixture weights of
Owen and Zhou, 2000), smooth the weights with PSIS, and take the weighted mean and covariance.
With ``n`` the weights' effective sample size, the aggregate is the moment match of the blend of
the weighted draws (weight ``n``) and the ``K``-mixture itself (weight ``prior_count``)::

    m = (k m0 + n mw) / (k + n)
    C = (k C0 + n Cw + k n / (k + n) (mw - m0)(mw - m0)^T) / (k + n)

so that a degenerate set of weights (a handful of draws carrying everything) falls back to the
mixture instead of a singular covariance. The mixture here is reweighted: member ``k`` weighs
the importance mass its own draws carried (``m0``, ``C0`` are that mixture's moments), so a member
that diverged (its draws all far in the tails, weight 0) drops out of the fall-back as well.
Where no weight is finite at all, the aggregate is the plain mixture.

Why importance moments and not Newton steps from the mixture: a Gaussian with the true
posterior's mean and covariance is the forward-KL optimum, which is what the moment errors
against NUTS measure; Newton steps go to the mode (the Laplace fit), and the mode is what is
wrong on hard posteriors. In ``benchmarks/results/rsa_posterior.json`` the full-data Laplace fit's
worst mean errors on the three hard kinds are 0.46, 0.55 and 1.01 NUTS SDs; RSA with this
aggregator (``N = 16``, ``K = 4``, ``T = 5``, ``S = 128``) ends at 0.06, 0.67 and 0.15 (0.06 on
the median data set), from candidates whose best (by ELBO) is at 0.16, 2.45 and 0.53. Weighing
each aggregate by the full-data density is where this module uses the model, which the
population's members (mini-batch refinements) never saw whole.

Exactness: with ``K`` copies of a candidate that *is* the posterior (a conjugate
linear-Gaussian model), the weights are constant, the moment-matched draws have exactly the
candidate's moments, and the aggregate is the candidate (to rounding): tested.

**Scores** (:func:`build_score_fn`) are ELBO estimates with fixed, moment-matched draws (common
random numbers, so candidates compare without Monte Carlo noise between them), or minus PSIS
k-hat; either makes :class:`~amortized_ppl.rsa.RSAInfo`'s best and mean scores meaningful.

**The comparisons** of issue 21 are pure functions on the first generation:
:func:`best_by_score`, :func:`mixture_moments` (plain averaging), :func:`pooled_importance`
(importance resampling over the pooled candidates' draws, PSIS-smoothed) and
:func:`laplace_candidate`; :func:`moment_errors` scores any of them against reference moments.

References:
    Venkatraman, S. et al. (2025). Recursive Self-Aggregation Unlocks Deep Thinking in Large
    Language Models. arXiv:2509.26626.
    Owen, A. and Zhou, Y. (2000). Safe and effective importance sampling. *JASA* 95(449).
    Cornuet, J.-M., Marin, J.-M., Mira, A. and Robert, C. P. (2012). Adaptive multiple importance
    sampling. *Scandinavian Journal of Statistics* 39(4).
    Vehtari, A., Simpson, D., Gelman, A., Yao, Y. and Gabry, J. (2024). Pareto smoothed
    importance sampling. *JMLR* 25.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from amortized_ppl import linalg
from amortized_ppl._checks import check_int, check_key, check_positive_float
from amortized_ppl.diagnostics.psis import psis
from amortized_ppl.laplace import newton_laplace

__all__ = [
    "SCORES",
    "GaussianCandidate",
    "ImportanceAggregate",
    "MomentErrors",
    "base_aggregate",
    "best_by_score",
    "build_score_fn",
    "check_candidates",
    "gaussian_log_prob",
    "importance_moments",
    "iterative_generator",
    "laplace_candidate",
    "mixture_draws",
    "mixture_log_prob",
    "mixture_moments",
    "moment_errors",
    "pooled_importance",
    "standard_draws",
]

SCORES = ("elbo", "khat")
"""Scores :func:`build_score_fn` computes: an ELBO estimate, or minus PSIS k-hat."""

DEFAULT_NUM_DRAWS = 256
"""Draws per aggregation (``S``): split evenly over the ``K`` members of a subset."""


class GaussianCandidate(NamedTuple):
    """A Gaussian ``N(loc, scale_tril scale_tril^T)`` over the flat unconstrained latents.

    A population (RSA's ``state.population``) is one with a leading axis ``N`` on both fields;
    a subset (what ``aggregate_fn`` reads) has a leading axis ``K``.

    Attributes:
        loc: ``(D,)``.
        scale_tril: ``(D, D)``, lower triangular with a positive diagonal.
    """

    loc: jax.Array
    scale_tril: jax.Array


class ImportanceAggregate(NamedTuple):
    """The parts of an importance-weighted aggregate (:func:`importance_moments`).

    Attributes:
        candidate: the blended aggregate, a :class:`GaussianCandidate` (what
            :func:`base_aggregate` returns).
        mixture: the moment-matched mixture of the proposal's members.
        weighted_loc: ``(D,)`` the PSIS-weighted mean of the draws.
        weighted_cov: ``(D, D)`` their weighted covariance.
        ess: ``()`` effective sample size of the smoothed weights (0 when no weight is finite).
        khat: ``()`` PSIS k-hat (+Inf when there is no tail to fit).
        member_weights: ``(K,)`` total normalized weight of each member's draws, times ``K``
            (1 for a member that holds its share of the posterior's mass).
    """

    candidate: GaussianCandidate
    mixture: GaussianCandidate
    weighted_loc: jax.Array
    weighted_cov: jax.Array
    ess: jax.Array
    khat: jax.Array
    member_weights: jax.Array


class MomentErrors(NamedTuple):
    """Worst-case moment errors of a Gaussian against reference moments.

    Attributes:
        mean_error: ``max_i |loc_i - mean_i| / sd_i`` (reference SDs).
        sd_error: ``max_i |sd_i(candidate) / sd_i - 1|``.
    """

    mean_error: jax.Array
    sd_error: jax.Array


# ------------------------------------------------------------------------------ checks
def check_candidates(candidates: Any, name: str, *, num_leading: int = 1) -> GaussianCandidate:
    """``candidates`` as a :class:`GaussianCandidate` with ``num_leading`` leading axes.

    Raises:
        TypeError: not a pair ``(loc, scale_tril)`` of arrays.
        ValueError: shapes other than ``loc (..., D)`` and ``scale_tril (..., D, D)`` with
            ``num_leading`` equal leading axes; the message names ``name``.
    """
    try:
        loc, scale_tril = candidates
    except (TypeError, ValueError):
        raise TypeError(
            f"{name}: expected a GaussianCandidate (loc, scale_tril), got "
            f"{type(candidates).__name__}.") from None
    loc, scale_tril = jnp.asarray(loc), jnp.asarray(scale_tril)
    lead = "(" + "".join(f"{a}, " for a in "NKB"[:num_leading]) + "D)"
    if loc.ndim != num_leading + 1 or scale_tril.shape != loc.shape + loc.shape[-1:]:
        raise ValueError(
            f"{name}: expected loc of shape {lead} and scale_tril of shape {lead[:-1]}, D) "
            f"with {num_leading} leading axes, got {loc.shape} and {scale_tril.shape}.")
    if not jnp.issubdtype(loc.dtype, jnp.floating):
        raise TypeError(f"{name}: expected floating arrays, got {loc.dtype}.")
    return GaussianCandidate(loc, scale_tril.astype(loc.dtype))


def _check_num_draws(num_draws: Any, num_members: int, dim: int, name: str = "num_draws") -> int:
    num = check_int(num_draws, name, 2)
    per_member = num // num_members
    if num % num_members or per_member % 2 or per_member < 2 * dim:
        raise ValueError(
            f"{name}: expected a multiple of {2 * num_members} (K = {num_members} members, an "
            f"even number of draws each) with at least {2 * dim} draws per member (D = {dim}), "
            f"got {num!r}.")
    return num


# ------------------------------------------------------------------------ Gaussian helpers
def _cholesky(cov: jax.Array) -> jax.Array:
    """Cholesky factor of a symmetrized covariance, with a small ridge where it fails."""
    cov = 0.5 * (cov + cov.T)
    plain = linalg.cholesky(cov)
    ridge = 1e-6 * jnp.maximum(jnp.mean(jnp.diag(cov)), 1e-12)
    ridged = linalg.cholesky(cov + ridge * jnp.eye(cov.shape[0], dtype=cov.dtype))
    return jnp.where(jnp.all(jnp.isfinite(plain)), plain, ridged)


def gaussian_log_prob(candidate: GaussianCandidate, points: jax.Array) -> jax.Array:
    """``log N(points; loc, L L^T)`` for points ``(S, D)``; returns ``(S,)``."""
    loc, tril = candidate
    z = linalg.solve_lower(tril, (points - loc).T)  # (D, S)
    dim = loc.shape[-1]
    log_det = jnp.sum(jnp.log(jnp.abs(jnp.diag(tril))))
    return -0.5 * jnp.sum(z**2, axis=0) - log_det - 0.5 * dim * math.log(2 * math.pi)


def mixture_log_prob(candidates: GaussianCandidate, points: jax.Array) -> jax.Array:
    """Log density of the equal-weight mixture of ``K`` candidates at points ``(S, D)``: ``(S,)``."""
    per_member = jax.vmap(gaussian_log_prob, in_axes=(0, None))(candidates, points)  # (K, S)
    return jax.nn.logsumexp(per_member, axis=0) - math.log(per_member.shape[0])


def mixture_moments(
    candidates: GaussianCandidate, weights: jax.Array | None = None
) -> GaussianCandidate:
    """The Gaussian with the mean and covariance of a mixture of candidates.

    With equal weights (the default) this is "plain averaging": ``m = mean_k loc_k`` and
    ``C = mean_k (L_k L_k^T + (loc_k - m)(loc_k - m)^T)``.

    Args:
        candidates: a :class:`GaussianCandidate` with a leading axis ``K`` (or ``N``).
        weights: optional ``(K,)`` nonnegative mixture weights summing to 1.
    """
    loc, tril = check_candidates(candidates, "candidates")
    num = loc.shape[0]
    if weights is None:
        weights = jnp.full((num,), 1.0 / num, loc.dtype)
    elif jnp.shape(weights) != (num,):
        raise ValueError(f"weights: expected shape ({num},), got {jnp.shape(weights)}.")
    mean = weights @ loc
    centred = loc - mean
    cov = (jnp.einsum("k,kij->ij", weights, tril @ jnp.swapaxes(tril, -1, -2))
           + (centred * weights[:, None]).T @ centred)
    return GaussianCandidate(mean, _cholesky(cov))


def standard_draws(key: jax.Array, num_draws: int, dim: int, dtype=jnp.float32) -> jax.Array:
    """``num_draws`` standard-normal draws whose sample mean is 0 and second moment ``I`` exactly.

    Half of them are Gaussian, the other half their negatives (antithetic, so the mean is exactly
    0); all are then whitened by the Cholesky factor of their second moment, so that Gaussian
    moments computed from them are exact for the proposal itself (an aggregate of copies of the
    posterior is the posterior) and less noisy elsewhere.

    Returns:
        ``(num_draws, dim)``; ``num_draws`` must be even and at least ``2 * dim``.
    """
    num = check_int(num_draws, "num_draws", 2)
    dim = check_int(dim, "dim")
    if num % 2 or num < 2 * dim:
        raise ValueError(f"num_draws: expected an even number >= 2 * dim = {2 * dim}, got {num}.")
    half = jax.random.normal(key, (num // 2, dim), dtype)
    both = jnp.concatenate([half, -half], axis=0)
    second = both.T @ both / num
    factor = _cholesky(second)
    return linalg.solve_lower(factor, both.T).T


def mixture_draws(key: jax.Array, candidates: GaussianCandidate, num_draws: int) -> jax.Array:
    """``num_draws / K`` moment-matched draws from each of ``K`` candidates: ``(S, D)``.

    Member ``k``'s draws are rows ``k S/K .. (k+1) S/K - 1`` (stratified sampling of the mixture).
    """
    loc, tril = check_candidates(candidates, "candidates")
    num_members, dim = loc.shape
    num = _check_num_draws(num_draws, num_members, dim)
    eps = jax.vmap(lambda k: standard_draws(k, num // num_members, dim, loc.dtype))(
        jax.random.split(key, num_members))  # (K, S/K, D)
    points = loc[:, None, :] + jnp.einsum("kij,ksj->ksi", tril, eps)
    return points.reshape(num, dim)


# ------------------------------------------------------------------------ the aggregator
def _finite_log_density(log_density_fn: Callable, points: jax.Array) -> jax.Array:
    values = jax.vmap(log_density_fn)(points)
    return jnp.where(jnp.isnan(values), -jnp.inf, values)


def importance_moments(
    key: jax.Array,
    log_density_fn: Callable[[jax.Array], jax.Array],
    candidates: GaussianCandidate,
    *,
    num_draws: int = DEFAULT_NUM_DRAWS,
    prior_count: float = 8.0,
) -> ImportanceAggregate:
    """Importance-weighted moments of the posterior with the candidates' mixture as proposal.

    Args:
        key: PRNG key (the draws).
        log_density_fn: ``u (D,) -> scalar``, the full data set's log joint over the flat
            unconstrained latents (``problem.log_density(u, arguments, mask)``).
        candidates: the proposal's members, a :class:`GaussianCandidate` with leading axis ``K``.
        num_draws: ``S``, a multiple of ``2 K`` with at least ``2 D`` draws per member.
        prior_count: the mixture's weight in the blend, in effective draws (see the module).
            The default, 8, was set once (a little above ``D``, so that a handful of
            effective draws cannot make the covariance singular) and not tuned.

    Returns:
        An :class:`ImportanceAggregate`; its ``candidate`` is :func:`base_aggregate`'s output.
    """
    candidates = check_candidates(candidates, "candidates")
    prior_count = check_positive_float(prior_count, "prior_count", allow_zero=True)
    num_members, dim = candidates.loc.shape
    num = _check_num_draws(num_draws, num_members, dim)
    points = mixture_draws(key, candidates, num)
    log_weights = _finite_log_density(log_density_fn, points) - mixture_log_prob(
        candidates, points)
    smoothed = psis(log_weights)
    has_weight = jnp.isfinite(smoothed.ess)
    weights = jnp.where(has_weight, jnp.exp(smoothed.log_weights), 1.0 / num)
    ess = jnp.where(has_weight, smoothed.ess, 0.0)
    weighted_loc = weights @ points
    centred = points - weighted_loc
    weighted_cov = (centred * weights[:, None]).T @ centred
    member_mass = jnp.sum(weights.reshape(num_members, -1), axis=1)
    mixture = mixture_moments(candidates, member_mass)
    m0, c0 = mixture.loc, mixture.scale_tril @ mixture.scale_tril.T
    # The module's blend with lam = n / (k + n); no weight and no prior count keep the mixture.
    total = prior_count + ess
    lam = jnp.where(total > 0, ess / jnp.where(total > 0, total, 1.0), 0.0)
    gap = weighted_loc - m0
    loc = (1 - lam) * m0 + lam * weighted_loc
    cov = (1 - lam) * c0 + lam * weighted_cov + lam * (1 - lam) * jnp.outer(gap, gap)
    return ImportanceAggregate(
        GaussianCandidate(loc, _cholesky(cov)), mixture, weighted_loc, weighted_cov, ess,
        smoothed.khat, member_mass * num_members)


def base_aggregate(
    key: jax.Array,
    log_density_fn: Callable[[jax.Array], jax.Array],
    subset: GaussianCandidate,
    *,
    num_draws: int = DEFAULT_NUM_DRAWS,
    prior_count: float = 8.0,
) -> GaussianCandidate:
    """Aggregate ``K`` candidates into one with the model's density (the network-off aggregator).

    The importance-weighted moments of :func:`importance_moments`, blended with the subset's
    moment-matched mixture. Use it as RSA's ``aggregate_fn`` with the data set bound, e.g.
    ``lambda k, s: base_aggregate(k, log_density_fn, s)``.

    Args:
        key: PRNG key.
        log_density_fn: ``u (D,) -> scalar``, the data set's log joint (unconstrained).
        subset: a :class:`GaussianCandidate` with leading axis ``K``.
        num_draws, prior_count: as in :func:`importance_moments`.

    Returns:
        A :class:`GaussianCandidate` ``(loc (D,), scale_tril (D, D))``.

    Examples:
        >>> aggregate = base_aggregate(jax.random.key(0), log_density_fn, population[:4])
    """
    return importance_moments(key, log_density_fn, subset, num_draws=num_draws,
                              prior_count=prior_count).candidate


# ----------------------------------------------------------------------------- scoring
def build_score_fn(
    key: jax.Array,
    log_density_fn: Callable[[jax.Array], jax.Array],
    dim: int,
    *,
    score: str = "elbo",
    num_draws: int = 64,
) -> Callable[[GaussianCandidate], jax.Array]:
    """``candidate -> scalar``: an ELBO estimate or minus PSIS k-hat on one data set.

    Every candidate is scored with the same ``num_draws`` moment-matched standard draws (fixed
    by ``key``): common random numbers, so two candidates' scores
    differ by what they are, not by their draws, and the score of a candidate is deterministic.

    Args:
        key: PRNG key of the fixed draws.
        log_density_fn: ``u (D,) -> scalar``, the data set's log joint (unconstrained).
        dim: ``D``.
        score: ``"elbo"`` (higher is better: ``E_q log p - E_q log q``) or ``"khat"`` (minus
            the PSIS k-hat of the draws' weights, +1 for constant weights; needs
            ``num_draws >= 100`` to be reliable).
        num_draws: draws per candidate (even, ``>= 2 D``).

    Returns:
        A pure function of one :class:`GaussianCandidate`, to pass as RSA's ``score_fn``.
    """
    if score not in SCORES:
        raise ValueError(f"score: expected one of {SCORES}, got {score!r}.")
    key = check_key(key, "key")
    if score == "khat" and check_int(num_draws, "num_draws", 2) < 22:
        raise ValueError(
            f"num_draws: the k-hat score needs at least 22 draws (PSIS fits a tail of at least 5 "
            f"of them), got {num_draws}.")
    eps = standard_draws(key, num_draws, dim)

    def score_fn(candidate: GaussianCandidate) -> jax.Array:
        loc, tril = candidate
        points = loc + eps @ tril.T
        log_p = _finite_log_density(log_density_fn, points)
        log_q = gaussian_log_prob(GaussianCandidate(loc, tril), points)
        if score == "elbo":
            value = jnp.mean(log_p - log_q)
            return jnp.where(jnp.isnan(value), -jnp.inf, value)
        smoothed = psis(log_p - log_q)
        # Constant weights (a candidate equal to the posterior, up to rounding) leave PSIS no
        # tail to fit: k-hat is +Inf by its convention, while the weights are perfect. They
        # score +1, above any k-hat PSIS fits here (its prior pulls k toward 0.5).
        is_flat = ~jnp.isfinite(smoothed.khat) & (smoothed.ess >= 0.99 * num_draws)
        return jnp.where(is_flat, 1.0, -smoothed.khat)

    return score_fn


# ------------------------------------------------------------------------- candidates
def iterative_generator(
    guide,
    params,
    arguments: dict,
    *,
    batch_size: int,
    num_passes: int,
    mask: jax.Array | None = None,
) -> Callable[[jax.Array], GaussianCandidate]:
    """``key -> candidate``: an iterative guide's state after ``num_passes`` shuffled passes.

    Different keys give different mini-batch orders (and cubature rotations), hence different
    states: the first generation's spread. The refinement is the engine's in-memory one
    (``engine.refine``, what ``guide.sample_posterior`` runs), pure and vmappable, so RSA
    makes all ``N`` candidates in one vectorized call.

    Args:
        guide: a set-up iterative guide (``AutoIterativeAmortizedMultivariateNormal``); build it
            with ``min_steps=1`` so that ``num_passes`` is what runs.
        params: its parameters (``guide.init_params()`` is the untrained, base update).
        arguments: the model's bound arguments for one data set, observations included, e.g.
            ``{"x": x, "y": y}``.
        batch_size: mini-batch size, at most the number of observations.
        num_passes: passes over the data set.
        mask: ``(N,)`` bool, False for padded observations (default: all real).

    Returns:
        A pure ``generate_fn`` for :func:`amortized_ppl.rsa.rsa`.
    """
    engine = guide.engine(params)
    if not hasattr(engine, "refine") or not hasattr(engine, "first_batch_start"):
        raise TypeError(
            f"guide: expected an iterative guide, got one whose engine is a "
            f"{type(engine).__name__}.")
    problem = guide.problem
    arguments = dict(arguments)
    observed = problem.spec.observed
    first = next(iter(observed.values()))
    if arguments.get(first) is None:
        raise ValueError(f"arguments: the observations {first!r} are missing.")
    site = next(iter(observed))
    num_obs = int(jnp.shape(arguments[first])[problem.sites.observed_axes[site]])
    mask = jnp.ones((num_obs,), bool) if mask is None else jnp.asarray(mask, bool)
    if mask.shape != (num_obs,):
        raise ValueError(f"mask: expected shape ({num_obs},), got {mask.shape}.")
    batch_size = check_int(batch_size, "batch_size")
    if batch_size > num_obs:
        raise ValueError(
            f"batch_size: expected at most the {num_obs} observations, got {batch_size}.")
    num_passes = check_int(num_passes, "num_passes")

    def generate_fn(key: jax.Array) -> GaussianCandidate:
        state, _ = engine.refine(key, problem, arguments, mask, batch_size=batch_size,
                                 num_passes=num_passes)
        return GaussianCandidate(state.loc, state.scale_tril)

    return generate_fn


# ------------------------------------------------------------------------ comparisons
def best_by_score(population: GaussianCandidate, scores: jax.Array) -> GaussianCandidate:
    """The member with the largest score (NaN counts as the smallest)."""
    population = check_candidates(population, "population")
    scores = jnp.asarray(scores)
    if scores.shape != population.loc.shape[:1]:
        raise ValueError(
            f"scores: expected shape ({population.loc.shape[0]},), one per member, got "
            f"{scores.shape}.")
    best = jnp.argmax(jnp.where(jnp.isnan(scores), -jnp.inf, scores))
    return jax.tree.map(lambda leaf: leaf[best], population)


def pooled_importance(
    key: jax.Array,
    log_density_fn: Callable[[jax.Array], jax.Array],
    population: GaussianCandidate,
    *,
    num_draws: int,
) -> ImportanceAggregate:
    """Importance resampling over the pooled candidates: the whole population as one proposal.

    The same estimator as :func:`importance_moments` with all ``N`` members as the mixture and
    no blend (``prior_count = 0``): the PSIS-weighted moments of ``num_draws`` draws, which are
    the moments that resampling by those weights converges to (without resampling's noise).
    """
    return importance_moments(key, log_density_fn, population, num_draws=num_draws,
                              prior_count=0.0)


def laplace_candidate(
    log_density_fn: Callable[[jax.Array], jax.Array],
    init: jax.Array,
    *,
    num_steps: int = 20,
) -> GaussianCandidate:
    """The Laplace fit of the full data set: damped Newton steps from ``init``, Gaussian at the
    end (:func:`amortized_ppl.laplace.newton_laplace`)."""
    fit = newton_laplace(log_density_fn, jnp.asarray(init), num_steps=check_int(
        num_steps, "num_steps", 0))
    return GaussianCandidate(fit.loc, fit.scale_tril)


def moment_errors(candidate: GaussianCandidate, mean: jax.Array, sd: jax.Array) -> MomentErrors:
    """Worst-case (over latent coordinates) mean error in reference SDs and SD-ratio error."""
    loc, tril = check_candidates(candidate, "candidate", num_leading=0)
    mean, sd = jnp.asarray(mean), jnp.asarray(sd)
    if mean.shape != loc.shape or sd.shape != loc.shape:
        raise ValueError(
            f"mean, sd: expected shape {loc.shape} (the candidate's), got {mean.shape} and "
            f"{sd.shape}.")
    candidate_sd = jnp.sqrt(jnp.sum(tril**2, axis=-1))
    return MomentErrors(jnp.max(jnp.abs(loc - mean) / sd), jnp.max(jnp.abs(candidate_sd / sd - 1)))
