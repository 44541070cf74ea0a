"""The trust ladder for a hierarchical data set: each rung pays more for a posterior it can trust.

1. ``"amortized"``: the network's draws, importance-resampled by the model's joint density (one
   density evaluation per draw), kept when the Pareto k-hat of those weights is at most 0.5 (a
   low k-hat alone does not make raw draws right: a proposal far wider than the posterior has a
   low k-hat, so the draws are always resampled);
2. ``"corrected"``: otherwise Newton steps on the globals' Laplace marginal, per-group Newton
   conditionals and PSIS resampling of the joint draws, kept when that k-hat is at most 0.7;
3. ``"nuts"``: otherwise blackjax NUTS on the model (4 chains, window adaptation).

The thresholds are those of Vehtari et al. (2024) as in :mod:`amortized_ppl.ladder`. Every rung's
draws are returned in the same ``(g, u)`` layout.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl._checks import check_key
from amortized_ppl.hierarchy.layout import flatten
from amortized_ppl.hierarchy.network import HierarchicalNetwork
from amortized_ppl.hierarchy.posterior import (
    HierarchicalDraws,
    check_data,
    fit_marginal,
    sample_hierarchical,
)
from amortized_ppl.hierarchy.problem import HierarchicalProblem
from amortized_ppl.reference import reference_posterior

__all__ = ["HierarchicalLadder", "hierarchical_trust_ladder"]


class HierarchicalLadder(NamedTuple):
    """The rung a data set stopped at, its draws and every rung's diagnostics.

    Attributes:
        path: ``"amortized"``, ``"corrected"`` or ``"nuts"``.
        draws: the final draws (for ``"nuts"``: the chains' draws in random order, with zero
            log weights).
        khat: k-hat of each rung tried, ``{"amortized": ..., "corrected": ...}``.
        seconds: wall time of each rung tried.
        nuts_rhat_max: the largest split R-hat when NUTS ran (NaN otherwise).
        nuts_divergent: divergent transitions after warm-up when NUTS ran (0 otherwise). NUTS
            is the last rung, not an oracle: on a funnel (eight schools centred) it diverges
            and its draws are biased; a reparametrized model is then the remedy.
    """

    path: str
    draws: HierarchicalDraws
    khat: dict[str, float]
    seconds: dict[str, float]
    nuts_rhat_max: float
    nuts_divergent: int = 0


def hierarchical_trust_ladder(
    key: jax.Array,
    problem: HierarchicalProblem,
    network: HierarchicalNetwork,
    data: Mapping[str, Any],
    *,
    num_draws: int = 4000,
    newton_steps: int = 4,
    amortized_khat: float = 0.5,
    corrected_khat: float = 0.7,
    nuts_kwargs: Mapping[str, Any] | None = None,
) -> HierarchicalLadder:
    """Climb the ladder for one data set (see the module).

    Args:
        key: PRNG key.
        problem, network: the problem and the trained network.
        data: the data set (real groups only).
        num_draws: draws per rung.
        newton_steps: per-group Newton steps of the corrected rung.
        amortized_khat, corrected_khat: the thresholds of the first two rungs.
        nuts_kwargs: keyword arguments of :func:`~amortized_ppl.reference.reference_posterior`.
    """
    key = check_key(key, "key")
    data = check_data(problem, data)
    first_key, second_key, nuts_key = jax.random.split(key, 3)
    khat, seconds = {}, {}
    start = time.perf_counter()
    draws = jax.block_until_ready(sample_hierarchical(
        first_key, problem, network, data, num_draws=num_draws))
    seconds["amortized"] = time.perf_counter() - start
    khat["amortized"] = float(draws.khat)
    if khat["amortized"] <= amortized_khat:
        return HierarchicalLadder("amortized", draws, khat, seconds, float("nan"))
    start = time.perf_counter()
    fit = fit_marginal(problem, network, data)
    draws = jax.block_until_ready(sample_hierarchical(
        second_key, problem, network, data, num_draws=num_draws, newton_steps=newton_steps,
        marginal=fit))
    seconds["corrected"] = time.perf_counter() - start
    khat["corrected"] = float(draws.khat)
    if khat["corrected"] <= corrected_khat:
        return HierarchicalLadder("corrected", draws, khat, seconds, float("nan"))
    start = time.perf_counter()
    ref = reference_posterior(nuts_key, problem.setup.model, **dict(nuts_kwargs or {}), **data)
    structure = problem.structure
    names = structure.global_names + structure.local_names
    samples = {n: jnp.asarray(np.asarray(ref.samples[n]).reshape(
        (-1,) + np.shape(ref.samples[n])[2:])) for n in names}
    g, u = jax.vmap(lambda v: flatten(structure, v))(samples)
    # Chains in random order, as the other rungs' resampled draws are: the first k draws are
    # then a spread sample, not one chain's autocorrelated start (SBC ranks the first k).
    order = jax.random.permutation(jax.random.fold_in(nuts_key, 1), g.shape[0])
    g, u = g[order], u[order]
    seconds["nuts"] = time.perf_counter() - start
    zeros = jnp.zeros(g.shape[0])
    nuts_draws = HierarchicalDraws(g, u, zeros, jnp.asarray(jnp.nan), jnp.asarray(g.shape[0],
                                                                                  float), False)
    rhat = max(float(np.max(v)) for v in ref.rhat.values())
    return HierarchicalLadder("nuts", nuts_draws, khat, seconds, rhat, int(ref.num_divergent))
