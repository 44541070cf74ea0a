"""A flow whose parameters depend on the data set only: splines and mixings set per data set.

flowjax's coupling and autoregressive layers condition each transformer on other coordinates of
the draw as well as on the context, so their conditioner MLPs run once per draw: 1,000 draws of
one data set cost 1,000 MLP passes per layer (``benchmarks/results/flows.json`` has the coupling
flow guide's time per data set beside the Gaussian guide's). Here every layer's parameters are a function of the context alone:

- :class:`ContextSplines`: a rational-quadratic spline per coordinate (flowjax's
  ``RationalQuadraticSpline``), its knots set by an MLP of the context;
- :class:`ContextMixing`: ``x -> x + S x`` with ``S`` strictly lower triangular, set by an MLP of
  the context (log-determinant 0), so that later splines act on mixed coordinates.

Under ``jax.vmap`` over the draws of one data set (as in
:class:`~amortized_ppl.families.flow_posterior.FlowPosterior`) the MLPs see an unbatched context
and run once per data set; each draw then costs a few spline evaluations and a triangular
matrix-vector product per layer. The price is expressiveness: a coordinate's transform does not
depend on the others' values, only through the mixings (no heteroscedastic dependence such as a
funnel's, which coupling layers can express).

flowjax has no layer of this kind (its conditioners always read the transformed draw's other
coordinates), so the two layers are written here on flowjax's bijection interface, reusing its
spline and its ravelled-parameter constructor.
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import paramax
from flowjax.bijections import AbstractBijection, RationalQuadraticSpline, Vmap
from flowjax.utils import get_ravelled_pytree_constructor

__all__ = ["ContextMixing", "ContextSplines"]


class ContextSplines(AbstractBijection):
    """One rational-quadratic spline per coordinate, its parameters an MLP of the context.

    At initialization the MLP's last layer is zero (set by the caller, see
    :func:`~amortized_ppl.families.flow.zero_last_layers`) and every spline is the identity.
    """

    conditioner: eqx.nn.MLP
    constructor: Callable  # ravelled spline parameters -> a spline (not an array: static)
    shape: tuple[int, ...]
    cond_shape: tuple[int, ...]

    def __init__(self, key, dim: int, cond_dim: int, *, knots: int, interval: float,
                 width: int, depth: int, activation=jax.nn.gelu):
        spline = RationalQuadraticSpline(knots=knots, interval=interval)
        self.constructor, num_params = get_ravelled_pytree_constructor(
            spline, filter_spec=eqx.is_inexact_array,
            is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable))
        self.conditioner = eqx.nn.MLP(cond_dim, dim * num_params, width, depth,
                                      activation=activation, key=key)
        self.shape = (dim,)
        self.cond_shape = (cond_dim,)

    def _splines(self, condition):
        params = self.conditioner(condition).reshape(self.shape[0], -1)
        return Vmap(eqx.filter_vmap(self.constructor)(params), in_axes=eqx.if_array(0))

    def transform_and_log_det(self, x, condition=None):
        return self._splines(condition).transform_and_log_det(x)

    def inverse_and_log_det(self, y, condition=None):
        return self._splines(condition).inverse_and_log_det(y)


class ContextMixing(AbstractBijection):
    """``x -> x + S x``, ``S`` strictly lower triangular from an MLP of the context (unit
    Jacobian determinant). The identity at initialization (zero last layer)."""

    conditioner: eqx.nn.MLP
    shape: tuple[int, ...]
    cond_shape: tuple[int, ...]

    def __init__(self, key, dim: int, cond_dim: int, *, width: int, depth: int,
                 activation=jax.nn.gelu):
        self.conditioner = eqx.nn.MLP(cond_dim, max(dim * (dim - 1) // 2, 1), width, depth,
                                      activation=activation, key=key)
        self.shape = (dim,)
        self.cond_shape = (cond_dim,)

    def _strict_lower(self, condition):
        dim = self.shape[0]
        rows, cols = jnp.tril_indices(dim, -1)
        values = self.conditioner(condition)[: rows.size]
        return jnp.zeros((dim, dim), values.dtype).at[rows, cols].set(values)

    def transform_and_log_det(self, x, condition=None):
        return x + self._strict_lower(condition) @ x, jnp.zeros((), x.dtype)

    def inverse_and_log_det(self, y, condition=None):
        # (I + S) x = y with unit diagonal: forward substitution
        unit = jnp.eye(self.shape[0], dtype=y.dtype) + self._strict_lower(condition)
        x = jax.scipy.linalg.solve_triangular(unit, y, lower=True, unit_diagonal=True)
        return x, jnp.zeros((), y.dtype)
