"""Posterior predictive checks: does the model, with this posterior, reproduce the data at all?

Importance weights and the out-of-distribution test judge the *guide* against the model; neither
can see that the *model* does not fit the data (overdispersed counts under a Poisson likelihood
pass both: the guide matches the Poisson posterior perfectly well). A posterior predictive check
(Gelman, Meng and Stern 1996) replicates the data from the model at posterior draws and compares
test statistics of the replicates with those of the observed data: a statistic the replicates
rarely reach flags a misfit.

Statistics, on the observed sites' values over the real (masked) observations, pooled over any
event dimensions: mean, SD, minimum, maximum, lag-1 autocorrelation in the observations' order
(serial dependence in data the model treats as exchangeable), and, for non-negative data, the
dispersion index variance / mean (overdispersed counts). Two-sided p-values
``2 min(P(T_rep >= T_obs), P(T_rep <= T_obs))``, Bonferroni over the statistics. Posterior
predictive p-values are conservative (they pile up near 0.5 under a true model), so a flag is
strong evidence of misfit, and no flag is weak evidence of fit.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers

from amortized_ppl._checks import check_int, check_key, check_open_unit

__all__ = ["STATISTICS", "PPCResult", "posterior_predictive_check"]

STATISTICS = ("mean", "sd", "min", "max", "autocorrelation", "dispersion")


class PPCResult(NamedTuple):
    """Posterior predictive p-values of each data set.

    Attributes:
        statistics: the statistics' names, ``(K,)``.
        observed: each statistic of the observed data, ``(B, K)``.
        p_values: two-sided posterior predictive p-values, ``(B, K)`` (NaN where a statistic
            does not apply, e.g. the dispersion of data with negative values).
        level: the family-wise level; a data set is flagged when some p-value is below
            ``level / K_applicable`` (Bonferroni).
        flagged: ``(B,)`` bool.
    """

    statistics: tuple[str, ...]
    observed: np.ndarray
    p_values: np.ndarray
    level: float
    flagged: np.ndarray

    def failing(self, index: int) -> list[str]:
        """The statistics data set ``index`` fails."""
        p = self.p_values[index]
        k = max(1, int(np.sum(np.isfinite(p))))
        return [name for name, value in zip(self.statistics, p) if value < self.level / k]

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {
            "statistics": list(self.statistics),
            "level": self.level,
            "flagged": [bool(f) for f in self.flagged],
            "p_values": [[None if not np.isfinite(v) else float(v) for v in row]
                         for row in self.p_values],
            "failing": {str(i): self.failing(i) for i in np.flatnonzero(self.flagged)},
        }


def _statistics(values: jax.Array, mask: jax.Array) -> jax.Array:
    """The :data:`STATISTICS` of one data set's observations ``(N, ...)`` -> ``(K,)``."""
    flat = values.reshape(values.shape[0], -1).astype(jnp.result_type(float))
    weights = jnp.broadcast_to(mask[:, None], flat.shape).astype(flat.dtype)
    count = jnp.sum(weights)
    mean = jnp.sum(flat * weights) / count
    var = jnp.sum((flat - mean) ** 2 * weights) / count
    low = jnp.min(jnp.where(weights > 0, flat, jnp.inf))
    high = jnp.max(jnp.where(weights > 0, flat, -jnp.inf))
    first = flat[:, 0] - mean  # serial dependence along the observations, first column
    pair = mask[1:] & mask[:-1]
    autocorrelation = jnp.sum(jnp.where(pair, first[1:] * first[:-1], 0.0)) / (
        jnp.sum(jnp.where(mask, first**2, 0.0)) + 1e-30)
    dispersion = jnp.where(low >= 0, var / jnp.maximum(mean, 1e-12), jnp.nan)
    return jnp.stack([mean, jnp.sqrt(var), low, high, autocorrelation, dispersion])


@eqx.filter_jit
def _replicated_statistics(key, problem, arguments, mask, draws):
    """Statistics of the observed data ``(K,)`` and of replicates at each draw ``(S, K)``, for
    one data set; ``draws`` are flat unconstrained latents ``(S, D)``."""
    observed_sites = problem.sites.observed

    def stats_of(values: dict) -> jax.Array:
        return jnp.stack([_statistics(values[s], mask) for s in observed_sites])

    def replicate(k, u):
        # Run with the observations given (models may read the data set's size from them) and
        # draw each observed site afresh from its distribution at these latents.
        conditioned = handlers.condition(problem.model, problem.sites.constrain(u))
        with handlers.block():
            trace = handlers.trace(handlers.seed(conditioned, k)).get_trace(**arguments)
        keys = jax.random.split(k, len(observed_sites))
        return stats_of({s: _observations_first(problem, s, trace[s]["fn"].sample(sk))
                         for s, sk in zip(observed_sites, keys)})

    observed = stats_of({s: _observations_first(problem, s, arguments[problem.spec.observed[s]])
                         for s in observed_sites})
    keys = jax.random.split(key, draws.shape[0])
    return observed, jax.vmap(replicate)(keys, draws)


def _observations_first(problem, site: str, value: jax.Array) -> jax.Array:
    """The site's values with the observation axis first."""
    return jnp.moveaxis(jnp.asarray(value), problem.sites.observed_axes[site], 0)


def posterior_predictive_check(
    key: jax.Array,
    problem,
    arguments,
    mask,
    draws,
    *,
    level: float = 0.05,
) -> PPCResult:
    """Posterior predictive p-values of a batch of data sets.

    Args:
        key: PRNG key (the replicates).
        problem: the :class:`~amortized_ppl.problem.Problem` (its model and observed sites).
        arguments: bound arguments with a leading data-set axis ``B`` (observations included).
        mask: ``(B, N)`` bool, True for real observations.
        draws: flat unconstrained posterior draws ``(B, S, D)`` (e.g. the trust ladder's).
        level: family-wise level of the flag, per data set.

    Returns:
        A :class:`PPCResult` (statistics pooled over several observed sites are reported per
        site: ``"mean[y]"``; a model with one observed site has the plain names).

    Raises:
        ValueError: ``level`` cannot be reached with ``S`` replicates (the smallest two-sided
            p-value is ``2 / (S + 1)``).
    """
    check_key(key)
    level = check_open_unit(level, "level")
    draws = jnp.asarray(draws)
    if draws.ndim != 3 or draws.shape[-1] != problem.latent_dim:
        raise ValueError(f"draws: expected (B, S, {problem.latent_dim}), got {draws.shape}.")
    num_draws = check_int(draws.shape[1], "draws.shape[1]", 10)
    sites = problem.sites.observed
    num_stats = len(STATISTICS) * len(sites)
    if 2.0 / (num_draws + 1) >= level / num_stats:
        raise ValueError(
            f"level={level:g} cannot be reached with {num_draws} draws: the smallest p-value is "
            f"{2 / (num_draws + 1):.3g} and the Bonferroni threshold {level / num_stats:.3g}; "
            "use more draws or a larger level."
        )
    mask = jnp.asarray(mask)
    names = tuple(STATISTICS if len(sites) == 1 else
                  [f"{stat}[{site}]" for site in sites for stat in STATISTICS])
    observed_all, p_all = [], []
    for b in range(mask.shape[0]):
        data = jax.tree.map(lambda v, b=b: v[b] if eqx.is_array(v) else v, arguments)
        observed, replicated = _replicated_statistics(
            jax.random.fold_in(key, b), problem, data, mask[b], draws[b])
        observed = np.asarray(observed).reshape(-1)
        replicated = np.asarray(replicated).reshape(num_draws, -1)
        upper = (1.0 + np.sum(replicated >= observed, axis=0)) / (1.0 + num_draws)
        lower = (1.0 + np.sum(replicated <= observed, axis=0)) / (1.0 + num_draws)
        p = np.minimum(1.0, 2.0 * np.minimum(upper, lower))
        p[~np.isfinite(observed)] = np.nan
        observed_all.append(observed)
        p_all.append(p)
    p_values = np.stack(p_all)
    applicable = np.maximum(1, np.sum(np.isfinite(p_values), axis=1))
    flagged = np.nanmin(np.where(np.isfinite(p_values), p_values, np.inf), axis=1) < (
        level / applicable)
    return PPCResult(names, np.stack(observed_all), p_values, float(level), flagged)
