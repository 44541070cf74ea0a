"""Every group's posterior for data with many groups, streamed in chunks.

:func:`stream_posterior` runs :func:`~amortized_ppl.hierarchy.marginal.marginal_newton` over the
groups in chunks (the globals' Gaussian), then one more pass that gives each group's locals a
Gaussian: the conditional Laplace fit at the globals' mode, widened by the globals' uncertainty
carried through the conditional mode (first order: ``cov_j = H_j^-1 + J_j Sigma_g J_j^T`` with
``J_j = d u_j* / d g``, by forward-mode differentiation through the group's Newton steps). Its
working memory is one chunk's whatever the number of groups; the outputs are
``(num_groups, local_dim)`` means and ``(num_groups, local_dim, local_dim)`` covariances.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from amortized_ppl import linalg
from amortized_ppl.hierarchy.chunks import default_starts, map_over_chunks, one_group
from amortized_ppl.hierarchy.marginal import MarginalFit, group_laplace, marginal_newton
from amortized_ppl.hierarchy.problem import HierarchicalProblem

__all__ = ["StreamedPosterior", "group_posteriors", "stream_posterior"]


class StreamedPosterior(NamedTuple):
    """Globals' Gaussian and every group's Gaussian, unconstrained.

    Attributes:
        globals: the :class:`MarginalFit`.
        local_mean: ``(num_groups, local_dim)``.
        local_cov: ``(num_groups, local_dim, local_dim)``.
    """

    globals: MarginalFit
    local_mean: jax.Array
    local_cov: jax.Array


def group_posteriors(problem: HierarchicalProblem, data: Mapping[str, Any], fit: MarginalFit, *,
                     starts_fn: Callable | None = None, inner_steps: int = 4,
                     chunk_size: int | None = None):
    """``(means, covariances)`` of every group's locals given the globals' Gaussian ``fit``."""
    starts_fn = default_starts(problem) if starts_fn is None else starts_fn
    sigma_g = fit.scale_tril @ fit.scale_tril.T
    eye = jnp.eye(problem.structure.local_dim)

    def one(group):
        def mode_at(g):
            return group_laplace(problem, group, g, starts_fn(g, group), inner_steps).mode

        laplace = group_laplace(problem, group, fit.mode, starts_fn(fit.mode, group),
                                inner_steps)
        jac = jax.jacfwd(mode_at)(fit.mode)
        conditional = linalg.cho_solve(laplace.factor, eye)
        return laplace.mode, conditional + jac @ sigma_g @ jac.T

    def chunk(part):
        size = part[problem.structure.mask].shape[0]
        return jax.vmap(lambda i: one(one_group(problem, part, i)))(jnp.arange(size))

    return map_over_chunks(problem, data, chunk_size, chunk)


def stream_posterior(problem: HierarchicalProblem, data: Mapping[str, Any], start: jax.Array, *,
                     chunk_size: int = 1000, inner_steps: int = 4, max_steps: int = 20,
                     starts_fn: Callable | None = None) -> StreamedPosterior:
    """The globals' Gaussian and every group's, over chunks of ``chunk_size`` groups (jittable).

    Args:
        problem, data: the problem and one data set (any number of groups).
        start: ``(global_dim,)`` where the globals' Newton steps start (e.g. the prior's robust
            location ``problem.global_loc``, or a network's mean on a subset of the groups).
        chunk_size: groups per chunk: the working memory.
        inner_steps, max_steps: Newton steps per group and on the globals.
        starts_fn: per-group Newton starts (default: the prior's robust location).
    """
    fit = marginal_newton(problem, data, start, starts_fn=starts_fn, inner_steps=inner_steps,
                          max_steps=max_steps, chunk_size=chunk_size)
    means, covs = group_posteriors(problem, data, fit, starts_fn=starts_fn,
                                   inner_steps=inner_steps, chunk_size=chunk_size)
    return StreamedPosterior(fit, means, covs)
