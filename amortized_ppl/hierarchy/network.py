"""The hierarchical posterior network: groups are sets of sets.

Each group's observations are encoded by a set encoder (masked: padded rows do not count) into a
group summary ``h_j``; the set of group summaries (with each group's log size) is encoded into a
data-set summary ``s`` (masked: padded groups do not count). From ``s``,
``q(global | data)`` is a full-rank Gaussian over the standardized unconstrained globals; from
``[h_j, s, global]``, ``q(local_j | global, data)`` is a full-rank Gaussian over group j's
standardized unconstrained locals. The factorization is the model's: given the globals, the
groups' locals are independent, and group j's depend on the rest of the data only through the
globals (``s`` is an input only to let the network correct for the globals it is given).

Zeroed last layers (:meth:`HierarchicalNetwork.network_off`) give the prior's robust location and
scale for the globals and for every group's locals: the engine with the network off.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from amortized_ppl.encoders.set_transformer import SetTransformer
from amortized_ppl.families.base import head_mlp, positive_scale
from amortized_ppl.families.flow import zero_last_layers
from amortized_ppl.hierarchy.problem import HierarchicalProblem

__all__ = ["HierarchicalNetwork", "gaussian_from_raw", "num_gaussian_params"]


def num_gaussian_params(dim: int) -> int:
    return dim + dim * (dim + 1) // 2


def gaussian_from_raw(raw: jax.Array, dim: int, loc: jax.Array, scale: jax.Array):
    """``(mean, scale_tril)`` of a Gaussian: standardized raw outputs mapped by ``loc + scale *``."""
    mean = loc + scale * raw[:dim]
    rows, cols = jnp.tril_indices(dim)
    tril = jnp.zeros((dim, dim)).at[rows, cols].set(raw[dim:])
    diagonal = positive_scale(jnp.diagonal(tril))
    tril = jnp.tril(tril, -1) * 0.3 + jnp.diag(diagonal)
    return mean, scale[:, None] * tril


class HierarchicalNetwork(eqx.Module):
    """Group encoder, set-of-groups encoder, global head and local head (see the module)."""

    group_encoder: SetTransformer
    set_encoder: SetTransformer
    global_head: eqx.nn.MLP
    local_head: eqx.nn.MLP
    global_dim: int = eqx.field(static=True)
    local_dim: int = eqx.field(static=True)

    def __init__(self, key, problem: HierarchicalProblem, *, width: int = 64,
                 summary_size: int = 64, depth: int = 2, num_heads: int = 4,
                 num_inducing: int | None = 16):
        keys = jax.random.split(key, 4)
        self.global_dim = problem.structure.global_dim
        self.local_dim = problem.structure.local_dim
        self.group_encoder = SetTransformer(problem.token_dim, summary_size, hidden_size=width,
                                            num_heads=num_heads, num_blocks=1,
                                            num_inducing=num_inducing, key=keys[0])
        self.set_encoder = SetTransformer(summary_size + 1, summary_size, hidden_size=width,
                                          num_heads=num_heads, num_blocks=1,
                                          num_inducing=num_inducing, key=keys[1])
        self.global_head = head_mlp(summary_size + 1, num_gaussian_params(self.global_dim),
                                    width, depth, key=keys[2])
        self.local_head = head_mlp(2 * summary_size + 1 + self.global_dim,
                                   num_gaussian_params(self.local_dim), width, depth, key=keys[3])

    def network_off(self) -> "HierarchicalNetwork":
        """The same network with zeroed last layers: the prior's robust Gaussians."""
        return zero_last_layers(self)

    def encode(self, problem: HierarchicalProblem, data):
        """``(h, s, group_mask)``: group summaries ``(G, H)``, data-set summary, real groups."""
        mask = jnp.asarray(data[problem.structure.mask])
        tokens = problem.tokens(data)
        group_mask = mask.any(axis=-1)
        # A padded group's rows are all masked; give it one harmless row so its (ignored)
        # summary stays finite.
        safe = mask.at[:, 0].set(mask[:, 0] | ~group_mask)
        h = jax.vmap(self.group_encoder)(tokens, safe)
        log_size = jnp.log(jnp.maximum(mask.sum(axis=-1), 1.0))[:, None]
        s = self.set_encoder(jnp.concatenate([h, log_size], axis=-1), group_mask)
        log_groups = jnp.log(jnp.maximum(group_mask.sum(), 1.0))[None]
        return h, jnp.concatenate([s, log_groups]), group_mask

    def global_posterior(self, problem: HierarchicalProblem, s) -> dist.MultivariateNormal:
        mean, tril = gaussian_from_raw(self.global_head(s), self.global_dim,
                                       problem.global_loc, problem.global_scale)
        return dist.MultivariateNormal(mean, scale_tril=tril)

    def local_posterior(self, problem: HierarchicalProblem, h, s, g) -> dist.MultivariateNormal:
        """q(local_j | g, data) for every group at once: batch shape ``(G,)``."""
        standard = (g - problem.global_loc) / problem.global_scale
        inputs = jnp.concatenate(
            [h, jnp.broadcast_to(s, (h.shape[0],) + s.shape),
             jnp.broadcast_to(standard, (h.shape[0],) + standard.shape)], axis=-1)
        raw = jax.vmap(self.local_head)(inputs)
        mean, tril = jax.vmap(lambda r: gaussian_from_raw(r, self.local_dim, problem.local_loc,
                                                           problem.local_scale))(raw)
        return dist.MultivariateNormal(mean, scale_tril=tril)


