"""Checks of a hierarchical posterior: SBC on the joint, and ArviZ output with a group dimension.

:func:`hierarchical_sbc` simulates data sets from the prior at a fixed layout (every group
real), draws from any posterior function, and ranks the true globals and the true locals of
``num_locals`` groups picked at random per data set, plus the rank of the true latents' joint
log density among the draws' (a statistic of all latents at once, in place of an HPD rank: any
function of latents and data has uniform ranks under calibration, Modrák et al. 2023). The
tests and coverage are :func:`amortized_ppl.diagnostics.sbc.sbc_summary`'s.

:func:`hierarchical_inference_data` turns joint draws into an ArviZ object whose local sites
have a named ``group`` dimension (and the observations ``group`` and ``obs``).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from amortized_ppl._checks import check_int, check_key
from amortized_ppl._progress import resolve_progress
from amortized_ppl.diagnostics.arviz import to_inference_data
from amortized_ppl.diagnostics.sbc import MIN_DATASETS, SBCResult, sbc_summary
from amortized_ppl.hierarchy import layout
from amortized_ppl.hierarchy.posterior import HierarchicalDraws
from amortized_ppl.hierarchy.problem import HierarchicalProblem, random_mask

__all__ = ["constrained_draws", "hierarchical_inference_data", "hierarchical_sbc",
           "shrink_draws"]

PosteriorFn = Callable[[jax.Array, Mapping[str, Any]], HierarchicalDraws]


def shrink_draws(draws: HierarchicalDraws, sd_factor: float) -> HierarchicalDraws:
    """A deliberately miscalibrated copy: every coordinate's spread around its mean scaled by
    ``sd_factor`` (to check that SBC rejects a broken posterior)."""
    def shrink(x):
        mean = x.mean(axis=0, keepdims=True)
        return mean + sd_factor * (x - mean)

    return draws._replace(g=shrink(draws.g), u=shrink(draws.u))


def hierarchical_sbc(key: jax.Array, problem: HierarchicalProblem, posterior_fn: PosteriorFn, *,
                     num_datasets: int = 200, num_draws: int = 99, num_locals: int = 2,
                     progress: bool | None = None) -> SBCResult:
    """Simulation-based calibration of joint hierarchical draws.

    Args:
        key: PRNG key.
        problem: the problem (its design function and its largest layout give the data sets).
        posterior_fn: ``posterior_fn(key, data) -> HierarchicalDraws`` with at least
            ``num_draws`` draws, e.g. a closure over :func:`sample_hierarchical`.
        num_datasets: simulated data sets (at least ``MIN_DATASETS``, 50: what
            :func:`~amortized_ppl.diagnostics.sbc.sbc_summary` tests).
        num_draws: draws ranked per data set (the first ``num_draws`` of the function's).
        num_locals: groups per data set whose locals are ranked (picked at random).
        progress: show a progress bar (default: in a terminal or notebook).

    Returns:
        A :class:`~amortized_ppl.diagnostics.sbc.SBCResult` over the coordinates ``globals``
        then ``num_locals x local_dim`` locals; its ``hpd_ranks`` are the joint log-density
        ranks.
    """
    key = check_key(key, "key")
    num_datasets = check_int(num_datasets, "num_datasets", MIN_DATASETS)
    num_draws = check_int(num_draws, "num_draws", 2)
    num_locals = check_int(num_locals, "num_locals")
    structure = problem.structure
    num_groups = problem.setup.num_groups[1]
    if num_locals > num_groups:
        raise ValueError(f"num_locals must be at most the number of groups ({num_groups}); "
                         f"got {num_locals}.")
    model = problem.setup.model

    @jax.jit
    def simulate(k):
        layout_key, design_key, model_key, pick_key = jax.random.split(k, 4)
        mask = random_mask(layout_key, (num_groups, num_groups), problem.setup.group_sizes)
        design = dict(problem.setup.design_fn(design_key, mask), **{structure.mask: mask})
        data, g, u = layout.simulate(model_key, model, structure, design)
        picks = jax.random.choice(pick_key, num_groups, (num_locals,), replace=False)
        return data, g, u, picks

    @jax.jit
    def rank(data, g, u, picks, draw_g, draw_u):
        truth = jnp.concatenate([g, u[picks].reshape(-1)])
        draws = jnp.concatenate([draw_g, draw_u[:, picks].reshape(num_draws, -1)], axis=1)
        ranks = jnp.sum(draws < truth, axis=0)
        density = jax.vmap(lambda gg, uu: layout.log_joint(model, structure, data, gg, uu))
        true_density = layout.log_joint(model, structure, data, g, u)
        hpd = jnp.sum(density(draw_g, draw_u) > true_density)
        return ranks, hpd, truth, draws.mean(0), draws.std(0)

    start = time.perf_counter()
    rows = []
    for i in tqdm(range(num_datasets), disable=not resolve_progress(progress), desc="hierarchical SBC"):
        sim_key, post_key = jax.random.split(jax.random.fold_in(key, i))
        data, g, u, picks = simulate(sim_key)
        draws = posterior_fn(post_key, data)
        if draws.g.shape[0] < num_draws:
            raise ValueError(f"posterior_fn gave {draws.g.shape[0]} draws; num_draws is "
                             f"{num_draws}.")
        rows.append(jax.tree.map(np.asarray, rank(data, g, u, picks, draws.g[:num_draws],
                                                  draws.u[:num_draws])))
    ranks, hpd, truth, mean, sd = (np.stack(parts) for parts in zip(*rows))
    names = tuple(f"global[{i}]" for i in range(structure.global_dim)) + tuple(
        f"local[pick {j}][{i}]" for j in range(num_locals) for i in range(structure.local_dim))
    return sbc_summary(jax.random.fold_in(key, num_datasets), ranks, hpd, num_draws, names=names,
                       truth=truth, posterior_mean=mean, posterior_sd=sd,
                       seconds=time.perf_counter() - start)


def constrained_draws(problem: HierarchicalProblem, draws: HierarchicalDraws) -> dict:
    """Site values per draw: globals ``(S, *event)``, locals ``(S, num_groups, *event)``."""
    values, _ = jax.vmap(lambda g, u: layout.constrain(problem.structure, g, u))(draws.g,
                                                                                 draws.u)
    out = {}
    num_groups = draws.u.shape[1]
    for site in problem.structure.globals:
        out[site.name] = np.asarray(values[site.name])
    for site in problem.structure.locals:
        value = np.moveaxis(np.asarray(values[site.name]), 1 + site.group_axis, 1)
        out[site.name] = value.reshape((value.shape[0], num_groups) + site.event_shape)
    return out


def hierarchical_inference_data(problem: HierarchicalProblem, draws: HierarchicalDraws,
                                data: Mapping[str, Any] | None = None, *,
                                group_names: Any = None):
    """An ArviZ object of joint draws, local sites with a ``group`` dimension.

    Args:
        problem, draws: the problem and draws of one data set.
        data: the data set; its observations become ``observed_data`` (real entries only are
            meaningful: padded ones are kept as given) with dims ``("group", "obs")``.
        group_names: coordinate values of the ``group`` dimension (default ``0 .. G-1``).
    """
    samples = constrained_draws(problem, draws)
    num_groups = draws.u.shape[1]
    dims = {site.name: ["group"] + [f"{site.name}_dim_{i}" for i in range(len(site.event_shape))]
            for site in problem.structure.locals}
    observed = None
    if data is not None:
        observed = {name: np.asarray(data[name]) for name in problem.structure.observed}
        dims.update({name: ["group", "obs"] for name in observed})
    coords = {"group": list(range(num_groups)) if group_names is None else list(group_names)}
    if len(coords["group"]) != num_groups:
        raise ValueError(f"group_names has {len(coords['group'])} names for {num_groups} "
                         "groups.")
    return to_inference_data(samples, observed_data=observed, dims=dims, coords=coords,
                             sample_stats={"log_weight": np.asarray(draws.log_weights)})
