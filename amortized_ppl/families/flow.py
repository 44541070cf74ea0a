"""A normalizing-flow family: a Gaussian family's output reshaped by a conditional flow.

``Flow(gaussian=MultivariateNormal())`` builds two parts, both read the context: the Gaussian
family (which, inside :class:`~amortized_ppl.families.LaplaceRefined`, is a bounded correction of
the Laplace fit) and a conditional flowjax flow acting in that Gaussian's whitened frame
(:class:`~amortized_ppl.families.flow_posterior.FlowPosterior`). The flow's conditioners start
with a zero last layer, so the untrained flow is the identity: the family starts as its Gaussian
(as the Laplace fit, under the Newton stage) and learns only the departure from it, which is where
Laplace is biased (skewed, bounded, heavy-tailed, several modes).

flowjax (equinox-based, MIT) provides the bijections: rational-quadratic spline or affine
transformers in coupling or masked-autoregressive layers. Its ``Transformed`` distribution is not
used for the posterior, because NumPyro's interface is needed for the guide (see
``FlowPosterior``). Splines act on ``[-interval, interval]`` whitened SDs and are the identity
outside it, so tails stay the Gaussian's.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from flowjax.bijections import Chain, RationalQuadraticSpline
from flowjax.distributions import StandardNormal
from flowjax.flows import coupling_flow, masked_autoregressive_flow

from amortized_ppl._checks import check_int
from amortized_ppl._recipes import recipe
from amortized_ppl.families.base import FamilyOutput, gaussian_moments
from amortized_ppl.families.context_flow import ContextMixing, ContextSplines
from amortized_ppl.families.flow_posterior import FlowPosterior

__all__ = ["Flow", "FlowHead", "zero_last_layers"]

TRANSFORMERS = ("spline", "affine")
LAYERS = ("coupling", "autoregressive", "elementwise")


def zero_last_layers(tree):
    """``tree`` with the last layer of every ``eqx.nn.MLP`` in it set to zero: each flowjax
    conditioner then outputs the transformer's initial parameters, the identity."""

    def zero(value):
        return jnp.zeros_like(value) if eqx.is_inexact_array(value) else value

    def fix(node):
        if isinstance(node, eqx.nn.MLP):
            # Every float array of the last layer (a masked layer keeps its boolean mask).
            return eqx.tree_at(lambda m: m.layers[-1], node,
                               jax.tree.map(zero, node.layers[-1]))
        return node

    return jax.tree.map(fix, tree, is_leaf=lambda x: isinstance(x, eqx.nn.MLP))


class FlowHead(eqx.Module):
    """Context -> a Gaussian (the inner family) -> a conditional flow in its whitened frame."""

    gaussian: eqx.Module
    flow: Any

    def __call__(self, context, *, log_density=None, anchor=None, base=None,
                 prior=None) -> FamilyOutput:
        inner = self.gaussian(context, log_density=log_density, anchor=anchor, base=base,
                              prior=prior)
        loc, tril = gaussian_moments(inner.posterior)
        return FamilyOutput(FlowPosterior(self.flow, context, loc, tril), inner.start)


@recipe
class Flow:
    """Recipe of a normalizing-flow posterior (see the module's docstring).

    Attributes:
        gaussian: the inner Gaussian family's recipe (``MultivariateNormal()`` or
            ``DiagonalNormal()``), the frame the flow acts in.
        transformer: ``"spline"`` (rational-quadratic, Durkan et al. 2019) or ``"affine"``.
        layers: ``"coupling"`` (fast both ways), ``"autoregressive"`` (masked; sampling is
            ``D`` passes), or ``"elementwise"`` (per-coordinate splines and triangular mixings
            whose parameters depend on the data set only: one conditioner pass per data set, not
            per draw, so sampling is cheaper than with coupling layers, though still dearer than
            the Gaussian's (``benchmarks/results/flows_elementwise.json``); see
            :mod:`~amortized_ppl.families.context_flow`).
        num_layers: flow layers.
        knots, interval: the spline's inner knots and its half-width in whitened SDs.
        width, depth: each conditioner's MLP.
    """

    gaussian: Any = None
    transformer: str = "spline"
    layers: str = "coupling"
    num_layers: int = 4
    knots: int = 8
    interval: float = 4.0
    width: int = 64
    depth: int = 1

    def __post_init__(self):
        if self.gaussian is not None and not hasattr(self.gaussian, "build"):
            raise TypeError(f"gaussian: expected a Gaussian family recipe such as "
                            f"MultivariateNormal(), got {type(self.gaussian).__name__}.")
        if self.transformer not in TRANSFORMERS:
            raise ValueError(f"transformer: expected one of {TRANSFORMERS}, got "
                             f"{self.transformer!r}.")
        if self.layers not in LAYERS:
            raise ValueError(f"layers: expected one of {LAYERS}, got {self.layers!r}.")
        if self.layers == "elementwise" and self.transformer != "spline":
            raise ValueError("layers='elementwise' needs transformer='spline' (elementwise "
                             "affine maps and triangular mixings compose to a Gaussian).")
        for name in ("num_layers", "knots", "width", "depth"):
            check_int(getattr(self, name), name, 0 if name == "depth" else 1)
        if not float(self.interval) > 0:
            raise ValueError(f"interval: expected a positive half-width, got {self.interval!r}.")

    def build(self, key, latent_dim: int, context_dim: int) -> FlowHead:
        from amortized_ppl.families.mvn import MultivariateNormal

        gaussian_key, flow_key = jax.random.split(key)
        gaussian = (MultivariateNormal() if self.gaussian is None else self.gaussian).build(
            gaussian_key, latent_dim, context_dim)
        transformer = (RationalQuadraticSpline(knots=self.knots, interval=float(self.interval))
                       if self.transformer == "spline" else None)
        if self.layers == "elementwise":
            return FlowHead(gaussian, zero_last_layers(
                self._elementwise(flow_key, latent_dim, context_dim)))
        make = coupling_flow if self.layers == "coupling" else masked_autoregressive_flow
        flow = make(flow_key, base_dist=StandardNormal((latent_dim,)), transformer=transformer,
                    cond_dim=context_dim, flow_layers=self.num_layers, nn_width=self.width,
                    nn_depth=self.depth, nn_activation=jax.nn.gelu, invert=False)
        return FlowHead(gaussian, zero_last_layers(flow.bijection))

    def _elementwise(self, key, latent_dim: int, context_dim: int) -> Chain:
        """Splines, then a mixing, ..., then splines: ``num_layers`` spline layers."""
        keys = jax.random.split(key, 2 * self.num_layers - 1)
        net = dict(width=self.width, depth=self.depth)
        layers = []
        for i in range(self.num_layers):
            if i:
                layers.append(ContextMixing(keys[2 * i - 1], latent_dim, context_dim, **net))
            layers.append(ContextSplines(keys[2 * i], latent_dim, context_dim, knots=self.knots,
                                         interval=float(self.interval), **net))
        return Chain(layers)
