"""Posterior draws of a hierarchical model from the network, the model's density, or both.

:func:`sample_hierarchical` draws globals from ``q(global | data)``; for each, every group's
locals from a Gaussian that is either the network's conditional ``q(local_j | global, data)`` or,
with ``newton_steps > 0``, the Gaussian at the conditional mode reached by that many Newton steps
on ``log p(local_j, data_j | global)`` from the network's mean (each group's
:func:`~amortized_ppl.hierarchy.marginal.group_laplace`, the same fit the globals' marginal uses:
cost linear in the number of groups).
With ``correct=True`` the joint draws are importance-weighted by the model's joint density,
Pareto-smoothed (PSIS, with k-hat reported) and resampled.

For a conditionally Gaussian model (eight schools, the varying-slopes regression) the Newton
Gaussian is the exact conditional, so every importance weight's spread comes from the globals'
proposal alone, a space of a few dimensions whatever the number of groups.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from amortized_ppl import linalg
from amortized_ppl._checks import check_int, check_key
from amortized_ppl.diagnostics.psis import importance_resample, psis
from amortized_ppl.hierarchy import layout
from amortized_ppl.hierarchy.chunks import one_group
from amortized_ppl.hierarchy.marginal import (
    MarginalFit,
    global_log_prior,
    group_laplace,
    marginal_newton,
)
from amortized_ppl.hierarchy.network import HierarchicalNetwork
from amortized_ppl.hierarchy.problem import HierarchicalProblem

__all__ = [
    "HierarchicalDraws",
    "check_data",
    "conditional_locals",
    "fit_marginal",
    "network_starts",
    "sample_hierarchical",
]


class HierarchicalDraws(NamedTuple):
    """Joint draws and their importance diagnostics.

    Attributes:
        g: ``(S, global_dim)`` unconstrained globals.
        u: ``(S, num_groups, local_dim)`` unconstrained locals.
        log_weights: ``(S,)`` raw log importance weights of the proposal draws (before any
            resampling): log p(g, u, data) - log q(g, u); with several local candidates,
            log p(g) + sum_j log p_hat(data_j | g) - log q(g).
        khat, ess: PSIS k-hat and effective sample size of those weights.
        resampled: whether ``g`` and ``u`` were resampled by the weights.
    """

    g: jax.Array
    u: jax.Array
    log_weights: jax.Array
    khat: jax.Array
    ess: jax.Array
    resampled: bool


def check_data(problem: HierarchicalProblem, data: Mapping[str, Any]) -> dict:
    """Validate one real data set; returns it with arrays as JAX arrays.

    Raises:
        ValueError: naming the argument, for a missing argument, a mask that is not a boolean
            ``(num_groups, max_size)`` array, a group with no observation, an array whose leading
            shape is not the mask's, or NaN/Inf.
    """
    structure = problem.structure
    needed = (structure.mask,) + structure.covariates + structure.observed
    missing = [name for name in needed if name not in data]
    if missing:
        raise ValueError(f"data is missing {missing} (the model's mask, covariates and "
                         "observations).")
    mask = np.asarray(data[structure.mask])
    if mask.dtype != np.bool_ or mask.ndim != 2:
        raise ValueError(f"data[{structure.mask!r}] must be a boolean (num_groups, max_size) "
                         f"array; got dtype {mask.dtype}, shape {mask.shape}.")
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise ValueError(f"Groups {empty[:10].tolist()} have no observation in "
                         f"data[{structure.mask!r}]; drop them.")
    out = dict(data)
    for name in structure.covariates + structure.observed:
        value = np.asarray(data[name])
        if value.shape[:2] != mask.shape:
            raise ValueError(f"data[{name!r}] must have leading shape {mask.shape} (the mask's);"
                             f" got {value.shape}.")
        if not np.all(np.isfinite(np.where(np.reshape(mask, mask.shape + (1,) * (
                value.ndim - 2)), value, 0.0))):
            raise ValueError(f"data[{name!r}] contains NaN or Inf at a real observation.")
        out[name] = jnp.asarray(value)
    out[structure.mask] = jnp.asarray(mask)
    return out


def conditional_locals(problem, data, g, loc, tril, newton_steps: int):
    """Per-group Gaussians ``(mean (G, k), scale_tril (G, k, k))`` of the locals given ``g``.

    With ``newton_steps == 0``: ``(loc, tril)`` unchanged. Otherwise each group's
    :func:`~amortized_ppl.hierarchy.marginal.group_laplace` from ``loc`` (Newton steps on
    ``log p(u_j, data_j | g)``, a step whose Hessian is not negative definite not taken) and the
    Gaussian at its last point with the negative Hessian as precision; a group whose final
    Hessian is not negative definite keeps the given Gaussian (the importance weights then
    correct for it).
    """
    if newton_steps == 0:
        return loc, tril

    def one(index, start):
        fit = group_laplace(problem, one_group(problem, data, index), g, start, newton_steps)
        return fit.mode, fit.factor

    point, factor = jax.vmap(one)(jnp.arange(loc.shape[0]), loc)
    ok = jnp.all(jnp.isfinite(factor), axis=(-2, -1)) & jnp.all(jnp.isfinite(point), axis=-1)
    eye = jnp.eye(point.shape[1])
    safe = jnp.where(ok[:, None, None], factor, eye)
    # Covariance (L L^T)^-1 = L^-T L^-1: its lower Cholesky factor is not L^-T (upper), so
    # take the factor of the inverse explicitly; k is a few coordinates.
    inverse = jax.vmap(lambda f: linalg.cho_solve(f, eye))(safe)
    cov_tril = jax.vmap(linalg.cholesky)(0.5 * (inverse + jnp.swapaxes(inverse, -1, -2)))
    return (jnp.where(ok[:, None], point, loc),
            jnp.where(ok[:, None, None], cov_tril, tril))


def _mvn_log_prob(x, mean, tril):
    z = jax.vmap(linalg.solve_lower)(tril, x - mean)
    k = x.shape[-1]
    return (-0.5 * jnp.sum(z ** 2, -1) - jnp.sum(jnp.log(jnp.abs(jnp.diagonal(tril, 0, -2, -1))),
                                                   -1) - 0.5 * k * jnp.log(2 * jnp.pi))


def _group_terms(problem, data, g, u):
    """``log p(u_j, data_j | g)`` for every group ``j``: ``(G,)``."""
    model, structure = problem.setup.model, problem.structure

    def one(index, local):
        return layout.log_joint_split(model, structure, one_group(problem, data, index), g,
                                      local[None])[1]

    return jax.vmap(one)(jnp.arange(u.shape[0]), u)


def _one_draw(key, problem, network, data, h, s, g, newton_steps, num_candidates):
    """Every group's locals given ``g`` and the draw's log weight but for ``q(g)``.

    Each group gets ``num_candidates`` proposals from its conditional Gaussian; their mean
    importance weight is an unbiased estimate of ``p(data_j | g)``, and one of them is kept with
    probability proportional to its weight. The product of the estimates over groups is an
    unbiased estimate of ``p(data | g)``, so weighting ``g`` by it is importance sampling on an
    extended space whose marginal is the posterior (IS^2, Tran et al. 2013): more candidates
    reduce the spread of the weights group by group, instead of multiplying every group's
    mismatch into one joint weight. One candidate is plain joint importance sampling.
    """
    local = network.local_posterior(problem, h, s, g)
    mean, tril = conditional_locals(problem, data, g, local.loc, local.scale_tril, newton_steps)
    draw_key, pick_key = jax.random.split(key)
    z = jax.random.normal(draw_key, (num_candidates,) + mean.shape)
    u = mean + jnp.einsum("gij,mgj->mgi", tril, z)  # (M, G, k)
    log_w = (jax.vmap(lambda uu: _group_terms(problem, data, g, uu))(u)
             - jax.vmap(lambda uu: _mvn_log_prob(uu, mean, tril))(u))  # (M, G)
    pick = jax.random.categorical(pick_key, log_w, axis=0)  # (G,)
    chosen = u[pick, jnp.arange(u.shape[1])]
    log_evidence = jax.nn.logsumexp(log_w, axis=0) - jnp.log(num_candidates)
    return chosen, global_log_prior(problem, data, g) + jnp.sum(log_evidence)


def network_starts(problem: HierarchicalProblem, network: HierarchicalNetwork, s: jax.Array):
    """``starts_fn(g, group_data)`` for :mod:`.marginal`: the network's conditional mean of a
    group's locals (its summary ``s`` of the whole data set given)."""

    def starts(g, group):
        mask = group[problem.structure.mask][0]
        tokens = problem.tokens(group)[0]
        h = network.group_encoder(tokens, mask.at[0].set(mask[0] | ~mask.any()))
        return network.local_posterior(problem, h[None], s, g).loc[0]

    return starts


def fit_marginal(problem: HierarchicalProblem, network: HierarchicalNetwork,
                 data: Mapping[str, Any], *, inner_steps: int = 4, max_steps: int = 20,
                 chunk_size: int | None = None) -> MarginalFit:
    """:func:`~amortized_ppl.hierarchy.marginal.marginal_newton` started where the network says.

    The outer Newton steps start at the mean of the network's ``q(global | data)``, and every
    group's inner steps at the network's conditional mean of its locals; with
    :meth:`~HierarchicalNetwork.network_off` both are the prior's robust locations.
    """
    data = check_data(problem, data)
    inner_steps = check_int(inner_steps, "inner_steps", 0)
    max_steps = check_int(max_steps, "max_steps")
    chunk_size = None if chunk_size is None else check_int(chunk_size, "chunk_size")
    return _fit_marginal(problem, network, data, inner_steps, max_steps, chunk_size)


@eqx.filter_jit
def _fit_marginal(problem, network, data, inner_steps, max_steps, chunk_size):
    _, s, _ = network.encode(problem, data)
    start = network.global_posterior(problem, s).loc
    return marginal_newton(problem, data, start, starts_fn=network_starts(problem, network, s),
                           inner_steps=inner_steps, max_steps=max_steps, chunk_size=chunk_size)


def sample_hierarchical(
    key: jax.Array,
    problem: HierarchicalProblem,
    network: HierarchicalNetwork,
    data: Mapping[str, Any],
    *,
    num_draws: int = 1000,
    newton_steps: int = 0,
    correct: bool = True,
    marginal: MarginalFit | None = None,
    marginal_weight: float = 0.5,
    local_candidates: int = 1,
) -> HierarchicalDraws:
    """Joint posterior draws for one data set (see the module).

    Args:
        key: PRNG key.
        problem, network: the problem and a (trained, or :meth:`network_off`) network.
        data: the model's keyword arguments for the data set (real groups only).
        num_draws: proposal draws (and draws returned).
        newton_steps: Newton steps per group on the locals given each global draw (0: the
            network's conditional alone).
        correct: importance-resample the draws by the model's joint density.
        marginal: a :class:`~amortized_ppl.hierarchy.marginal.MarginalFit` (e.g. from
            :func:`fit_marginal`); the globals' proposal is then the mixture
            ``marginal_weight * N(fit) + (1 - marginal_weight) * q(global | data)``, which
            keeps the network's tails where the Gaussian at the mode has none (defensive
            importance sampling, Hesterberg 1995).
        marginal_weight: the Gaussian's weight in that mixture, in [0, 1].
        local_candidates: proposals per group and global draw, one kept by its weight (IS^2,
            see ``_one_draw``); 1 is joint importance sampling. More help where the per-group
            Gaussians are not exact (a non-Gaussian likelihood), at that many times the cost
            of the locals' density.
    """
    key = check_key(key, "key")
    num_draws = check_int(num_draws, "num_draws", 2)
    newton_steps = check_int(newton_steps, "newton_steps", 0)
    local_candidates = check_int(local_candidates, "local_candidates")
    weight = float(marginal_weight)
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"marginal_weight must be in [0, 1]; got {marginal_weight!r}.")
    data = check_data(problem, data)
    return _sample(key, problem, network, data, num_draws, newton_steps, bool(correct),
                   marginal, weight, local_candidates)


def _global_proposal(q_global, marginal, weight):
    if marginal is None or weight == 0.0:
        return q_global
    gaussian = dist.MultivariateNormal(marginal.mode, scale_tril=marginal.scale_tril)
    if weight == 1.0:
        return gaussian
    components = dist.MultivariateNormal(
        jnp.stack([gaussian.loc, q_global.loc]),
        scale_tril=jnp.stack([gaussian.scale_tril, q_global.scale_tril]))
    return dist.MixtureSameFamily(dist.Categorical(probs=jnp.array([weight, 1.0 - weight])),
                                  components)


@eqx.filter_jit
def _sample(key, problem, network, data, num_draws, newton_steps, correct, marginal, weight,
            num_candidates):
    global_key, local_key, resample_key, order_key = jax.random.split(key, 4)
    h, s, _ = network.encode(problem, data)
    q_global = _global_proposal(network.global_posterior(problem, s), marginal, weight)
    g = q_global.sample(global_key, (num_draws,))
    log_qg = q_global.log_prob(g)
    u, log_ratio = jax.vmap(
        lambda k, gg: _one_draw(k, problem, network, data, h, s, gg, newton_steps,
                                num_candidates))(
        jax.random.split(local_key, num_draws), g)
    log_weights = log_ratio - log_qg
    result = psis(log_weights)
    if correct:
        index = importance_resample(resample_key, result.log_weights, num_draws)
        index = jax.random.permutation(order_key, index)
        g, u = g[index], u[index]
    return HierarchicalDraws(g, u, log_weights, result.khat, result.ess, correct)
