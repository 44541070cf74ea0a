"""The globals' marginal posterior with every group's locals integrated out by Laplace.

Given the globals ``g``, group j's locals have the conditional density
``p(u_j, data_j | g)``; its Laplace integral (Newton steps to the mode ``u_j*``, then the
Gaussian there) gives ``log p(data_j | g)``, exact for a conditionally Gaussian model (eight
schools, the varying-slopes regression). Summed over groups and added to ``log p(g)`` it is the
globals' log marginal posterior up to a constant: the nested-Laplace idea of INLA (Rue, Martino
and Chopin 2009), here with automatic derivatives of the model's own density. Its mode and
Hessian in ``g`` (a few dimensions, whatever the number of groups) give a Gaussian over the
globals; :func:`marginal_newton` finds them by damped Newton steps.

Every quantity is a sum over groups of per-group terms, each evaluated on the model called with
that one group, so :func:`marginal_newton` streams over the groups in chunks of ``chunk_size``
(a ``lax.scan``): its memory is one chunk's, not the data set's, beyond the data and the
``(num_groups, local_dim)`` outputs.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from amortized_ppl import linalg
from amortized_ppl.hierarchy.chunks import default_starts, one_group, sum_over_chunks
from amortized_ppl.hierarchy.layout import log_joint_split
from amortized_ppl.hierarchy.problem import HierarchicalProblem

__all__ = [
    "GroupLaplace",
    "MarginalFit",
    "global_log_prior",
    "group_laplace",
    "log_marginal",
    "log_marginal_derivatives",
    "marginal_newton",
]

_LOG_2PI = 1.8378770664093453


class GroupLaplace(NamedTuple):
    """The Laplace fit of one group's locals given the globals.

    Attributes:
        mode: ``(k,)`` the conditional mode after the Newton steps.
        factor: ``(k, k)`` lower Cholesky factor of the negative Hessian (the precision).
        log_evidence: ``log p(data_j | g)`` by Laplace (0 for a padded group).
    """

    mode: jax.Array
    factor: jax.Array
    log_evidence: jax.Array


class MarginalFit(NamedTuple):
    """The globals' Gaussian from :func:`marginal_newton`.

    Attributes:
        mode: ``(global_dim,)`` the marginal mode.
        scale_tril: ``(global_dim, global_dim)`` Cholesky factor of the inverse negative Hessian.
        log_marginal: the log marginal density there (up to a constant).
        num_steps: Newton iterations run (a step not taken counts); ``converged``: whether a
            step was taken within the tolerance (False: the damping or the steps ran out).
        history: ``(max_steps,)`` log marginal after each step (NaN after stopping).
    """

    mode: jax.Array
    scale_tril: jax.Array
    log_marginal: jax.Array
    num_steps: jax.Array
    converged: jax.Array
    history: jax.Array


def group_laplace(problem: HierarchicalProblem, group_data: Mapping[str, Any], g: jax.Array,
                  start: jax.Array, num_steps: int) -> GroupLaplace:
    """Newton steps on one group's locals given ``g``, from ``start``; its Laplace evidence.

    ``group_data`` is the model's arguments for that group alone (leading axis of size 1). A step
    whose Hessian is not negative definite is not taken (the point stays); if the final one is not,
    the evidence is ``-inf`` (the group rules ``g`` out of the proposal rather than lie).
    """
    model, structure = problem.setup.model, problem.structure

    def term(u):
        return log_joint_split(model, structure, group_data, g, u[None])[1]

    def newton(point, _):
        grad = jax.grad(term)(point)
        factor = linalg.cholesky(-jax.hessian(term)(point))
        ok = jnp.all(jnp.isfinite(factor))
        step = linalg.cho_solve(jnp.where(ok, factor, jnp.eye(point.shape[0])), grad)
        return jnp.where(ok, point + step, point), None

    point, _ = jax.lax.scan(newton, start, None, length=num_steps)
    factor = linalg.cholesky(-jax.hessian(term)(point))
    log_det = jnp.sum(jnp.log(jnp.diagonal(factor)))
    evidence = term(point) + 0.5 * point.shape[0] * _LOG_2PI - log_det
    evidence = jnp.where(jnp.isfinite(evidence), evidence, -jnp.inf)
    padded = ~jnp.any(group_data[structure.mask])
    return GroupLaplace(point, factor, jnp.where(padded, 0.0, evidence))


def _evidence_sum(problem, part, g, starts_fn, inner_steps):
    """Sum of the Laplace log evidences of the groups in ``part``."""
    size = part[problem.structure.mask].shape[0]

    def one(index):
        group = one_group(problem, part, index)
        return group_laplace(problem, group, g, starts_fn(g, group), inner_steps).log_evidence

    return jnp.sum(jax.vmap(one)(jnp.arange(size)))


def global_log_prior(problem: HierarchicalProblem, data: Mapping[str, Any], g: jax.Array):
    """``log p(g)`` in unconstrained space (the globals' Jacobians included)."""
    return log_joint_split(problem.setup.model, problem.structure, one_group(problem, data, 0),
                           g, jnp.zeros((1, problem.structure.local_dim)))[0]


def log_marginal(problem: HierarchicalProblem, data: Mapping[str, Any], g: jax.Array, *,
                 starts_fn: Callable | None = None, inner_steps: int = 4,
                 chunk_size: int | None = None) -> jax.Array:
    """``log p(g) + sum_j log p(data_j | g)`` (Laplace per group): the globals' log marginal.

    Args:
        problem, data: the problem and one data set.
        g: ``(global_dim,)`` unconstrained globals.
        starts_fn: ``starts_fn(g, group_data) -> (local_dim,)`` Newton start of a group's locals
            (default: the prior's robust location of the locals).
        inner_steps: Newton steps per group.
        chunk_size: groups per chunk (default: all at once).
    """
    starts_fn = default_starts(problem) if starts_fn is None else starts_fn
    total = sum_over_chunks(problem, data, chunk_size,
                            lambda part: _evidence_sum(problem, part, g, starts_fn, inner_steps))
    return global_log_prior(problem, data, g) + total


def log_marginal_derivatives(problem: HierarchicalProblem, data: Mapping[str, Any],
                             g: jax.Array, *, starts_fn: Callable | None = None,
                             inner_steps: int = 4, chunk_size: int | None = None):
    """``(value, gradient, Hessian)`` of :func:`log_marginal` at ``g``, each chunk's share
    differentiated inside its chunk (so reverse mode keeps no residuals across chunks)."""
    starts_fn = default_starts(problem) if starts_fn is None else starts_fn

    def derivatives(fn):
        value, grad = jax.value_and_grad(fn)(g)
        return value, grad, jax.hessian(fn)(g)

    chunked = sum_over_chunks(problem, data, chunk_size, lambda part: derivatives(
        lambda x: _evidence_sum(problem, part, x, starts_fn, inner_steps)))
    prior = derivatives(lambda x: global_log_prior(problem, data, x))
    return jax.tree.map(jnp.add, prior, chunked)


def marginal_newton(problem: HierarchicalProblem, data: Mapping[str, Any], start: jax.Array, *,
                    starts_fn: Callable | None = None, inner_steps: int = 4,
                    max_steps: int = 20, tolerance: float = 1e-3,
                    chunk_size: int | None = None) -> MarginalFit:
    """Damped Newton steps on :func:`log_marginal` from ``start``; the Gaussian at the end.

    Each step solves with the negative Hessian plus ``c`` times its mean diagonal, ``c`` the
    least of ``0, 0.01, 0.1, ..., 1000`` at or above the current damping that makes it positive
    definite and moves no coordinate more than 3 prior robust scales (a trust region; if none
    does, the least positive definite one's step shrunk as a whole to that size: clipping each
    coordinate could turn it against the gradient), and halves it (up to 6 times) until the
    log marginal does not fall. A step that still falls is not taken and the damping rises
    tenfold (Levenberg-Marquardt: the next try is shorter and closer to the
    gradient); a step taken lowers it tenfold. It has converged when the undamped Newton
    decrement ``grad . H^-1 grad`` is below ``tolerance`` (nats) at the current point, or an
    undamped step gained less than the rounding allowance below, and gives
    up when the damping passes 1000 or ``max_steps`` run out (``converged`` False). "Does not
    fall" allows 1e-5 of the value's size: float32 rounding of a sum over many groups.
    """
    def value(g):
        return log_marginal(problem, data, g, starts_fn=starts_fn, inner_steps=inner_steps,
                            chunk_size=chunk_size)

    def derivatives(g):
        return log_marginal_derivatives(problem, data, g, starts_fn=starts_fn,
                                        inner_steps=inner_steps, chunk_size=chunk_size)
    cap = 3.0 * problem.global_scale
    eye = jnp.eye(start.shape[0])
    levels = jnp.array([0.0, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0])

    def damped_factor(neg_hess, minimum):
        scale = jnp.mean(jnp.abs(jnp.diagonal(neg_hess))) + 1e-6
        factors = jax.vmap(lambda c: linalg.cholesky(neg_hess + c * scale * eye))(levels)
        allowed = jnp.arange(levels.size) >= minimum
        oks = jnp.all(jnp.isfinite(factors), axis=(-2, -1)) & allowed
        return factors, oks

    def damped_step(neg_hess, grad, minimum):
        """The least damping (an index into ``levels``) at or above ``minimum`` whose step is
        positive definite and within the cap (a trust region); failing that, the least
        positive definite one's step shrunk as a whole to the cap."""
        factors, oks = damped_factor(neg_hess, minimum)
        safe = jnp.where(oks[:, None, None], factors, eye)
        steps = jax.vmap(lambda f: linalg.cho_solve(f, grad))(safe)
        fits = oks & jnp.all(jnp.abs(steps) <= cap, axis=-1)
        choice = jnp.where(fits.any(), jnp.argmax(fits), jnp.argmax(oks))
        step = steps[choice]
        step = step * jnp.minimum(1.0, jnp.min(cap / (jnp.abs(step) + 1e-30)))
        return step, steps[0], choice, oks.any(), oks[0]

    def body(carry):
        g, current, step_count, _, _, damping, history = carry
        _, grad, hess = derivatives(g)
        direction, newton, used, ok, undamped_ok = damped_step(-hess, grad, damping)
        decrement = jnp.dot(grad, newton)

        def halve(state):
            size, _ = state
            return size * 0.5, value(g + size * 0.5 * direction)

        # Float32 sums of thousands of terms are exact to about 1e-6 of their size: "not lower"
        # allows that much, or rounding alone would refuse every step near the mode.
        slack = 1e-5 * (1.0 + jnp.abs(current))

        def worse(state):
            size, new = state
            return (~(new >= current - slack) & (size > 1 / 64.0))

        converged = undamped_ok & (decrement < tolerance)
        size, new = jax.lax.while_loop(worse, halve, (1.0, value(g + direction)))
        accept = ok & jnp.isfinite(new) & (new >= current - slack) & ~converged
        # Or an undamped step gained less than rounding can resolve: the mode, as far as
        # float32 can tell (the decrement there can stay above a fine tolerance).
        converged = converged | (accept & (used == 0) & (new - current < slack))
        g_next = jnp.where(accept, g + size * direction, g)
        current = jnp.where(accept, new, current)
        damping = jnp.where(accept, jnp.maximum(used - 1, 0), used + 1)
        done = converged | (damping >= levels.size)
        return (g_next, current, step_count + 1, done, converged, damping,
                history.at[step_count].set(current))

    def cond(carry):
        _, _, step_count, done, *_ = carry
        return (step_count < max_steps) & ~done

    history = jnp.full((max_steps,), jnp.nan)
    false = jnp.zeros((), bool)
    g, current, steps, _, converged, _, history = jax.lax.while_loop(
        cond, body, (start, value(start), jnp.zeros((), jnp.int32), false, false,
                     jnp.zeros((), jnp.int32), history))
    factors, oks = damped_factor(-derivatives(g)[2], 0.0)
    factor = factors[jnp.argmax(oks)]
    inverse = linalg.cho_solve(factor, eye)
    scale_tril = linalg.cholesky(0.5 * (inverse + inverse.T))
    return MarginalFit(g, scale_tril, current, steps, converged, history)
