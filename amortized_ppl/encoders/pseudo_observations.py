"""An encoder that turns every observation into a Gaussian pseudo-observation of the latents.

Each row of a data set gives, through one small network applied row by row, a factor
``U_n (D, r)`` and a target ``g_n (r,)``: the pseudo-likelihood ``g_n ~ N(U_n^T v, I_r)`` of
the latents ``v`` (in the prior's standardized frame). The data set's summary is the sum of
their natural parameters,

    precision = sum_n U_n U_n^T,      shift = sum_n U_n g_n,

with a mean-pooled feature vector beside them. Summing, not averaging, is what makes the
posterior's concentration follow the number of observations without being learned; and a
Gaussian posterior's natural parameters are exactly such sums for a linear-Gaussian model
(``U_n = L^T x_n / sigma``, ``g_n = (y_n - x_n m) / sigma``, both linear in the row), and
approximately so for a GLM, whose Laplace precision is the prior's plus one term per
observation. :class:`~amortized_ppl.families.GaussianFactors` turns the sums into the
posterior (``precision + I`` and a linear solve); it is this encoder's only partner.

This is Bayesian context aggregation (Volpp et al. 2021) with conjugate Gaussian factors as in
the structured VAE's recognition potentials (Johnson et al. 2016). It is written here because
neither NumPyro nor flowjax has a set encoder of this kind.

References:
    Volpp, M., Flurenbrock, F., Grossberger, L., Daniel, C., Neumann, G. (2021). Bayesian
    context aggregation for neural processes. ICLR.
    Johnson, M. J., Duvenaud, D., Wiltschko, A. B., Datta, S. R., Adams, R. P. (2016).
    Composing graphical models with neural networks for structured representations and fast
    inference. NeurIPS.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from amortized_ppl._checks import check_int
from amortized_ppl._recipes import recipe
from amortized_ppl.encoders.set_transformer import check_rows

__all__ = ["PseudoObservationEncoder", "PseudoObservations", "split_factor_summary"]

_INIT_SCALE = 0.1  # small initial factors: the untrained posterior is close to the prior


def split_factor_summary(summary: jax.Array, latent_dim: int):
    """``(precision (D, D), shift (D,), rest)`` of a :class:`PseudoObservationEncoder`'s
    output (``rest``: the pooled features and whatever the engine appended)."""
    d = latent_dim
    k = d * (d + 1) // 2
    rows, cols = np.tril_indices(d)
    lower = jnp.zeros((d, d), summary.dtype).at[rows, cols].set(summary[:k])
    precision = lower + lower.T - jnp.diag(jnp.diagonal(lower))
    return precision, summary[k:k + d], summary[k + d:]


class PseudoObservationEncoder(eqx.Module):
    """Rows -> Gaussian pseudo-observations, summed (see the module's docstring).

    Each row's outputs are a linear map of it plus an MLP of it: the linear part alone can
    represent a linear-Gaussian model's factors exactly, the MLP what departs from that.
    """

    linear: eqx.nn.Linear
    mlp: eqx.nn.MLP
    in_size: int = eqx.field(static=True)
    latent_dim: int = eqx.field(static=True)
    rank: int = eqx.field(static=True)
    feature_size: int = eqx.field(static=True)
    out_size: int = eqx.field(static=True)

    def __init__(self, in_size: int, latent_dim: int, *, rank: int, feature_size: int,
                 width: int, depth: int, key: PRNGKeyArray):
        linear_key, mlp_key = jax.random.split(key)
        size = latent_dim * rank + rank + feature_size
        linear = eqx.nn.Linear(in_size, size, key=linear_key)
        mlp = eqx.nn.MLP(in_size, size, width, depth, activation=jax.nn.gelu, key=mlp_key)
        self.linear = eqx.tree_at(lambda m: m.weight, linear, linear.weight * _INIT_SCALE)
        self.mlp = eqx.tree_at(lambda m: m.layers[-1].weight, mlp,
                               mlp.layers[-1].weight * _INIT_SCALE)
        self.in_size = in_size
        self.latent_dim = latent_dim
        self.rank = rank
        self.feature_size = feature_size
        self.out_size = latent_dim * (latent_dim + 1) // 2 + latent_dim + feature_size

    def __call__(self, tokens: Float[Array, "num_obs in_size"],
                 mask: Bool[Array, " num_obs"] | None = None) -> Float[Array, " out_size"]:
        """The summed natural parameters and the pooled features of one data set.

        Raises:
            ValueError, TypeError: as :func:`~amortized_ppl.encoders.set_transformer.check_rows`.
        """
        tokens, mask = check_rows(tokens, mask, self.in_size, rows="num_obs", items="data sets")
        weight = (jnp.ones(tokens.shape[:1], tokens.dtype) if mask is None
                  else mask.astype(tokens.dtype))
        raw = jax.vmap(lambda row: self.linear(row) + self.mlp(row))(tokens)
        d, r = self.latent_dim, self.rank
        factors = raw[:, : d * r].reshape(-1, d, r) * weight[:, None, None]
        targets = raw[:, d * r : d * r + r]
        precision = jnp.einsum("nir,njr->ij", factors, factors)
        shift = jnp.einsum("nir,nr->i", factors, targets)
        features = raw[:, d * r + r :]
        pooled = jnp.sum(features * weight[:, None], 0) / jnp.maximum(jnp.sum(weight), 1.0)
        rows, cols = np.tril_indices(d)
        return jnp.concatenate([precision[rows, cols], shift, pooled])


@recipe
class PseudoObservations:
    """Recipe of a :class:`PseudoObservationEncoder`; pair it with
    :class:`~amortized_ppl.families.GaussianFactors`.

    Attributes:
        rank: the dimension ``r`` of each observation's pseudo-observation (1 is exact for a
            scalar linear-Gaussian likelihood; more lets one row inform several directions).
        summary_size: the mean-pooled features beside the natural parameters (read by the
            family's correction on top).
        width, depth: the row network's MLP.
    """

    rank: int = 2
    summary_size: int = 16
    width: int = 64
    depth: int = 2

    gives_factors: ClassVar[bool] = True

    def __post_init__(self):
        check_int(self.rank, "rank", 1)
        check_int(self.summary_size, "summary_size", 0)
        check_int(self.width, "width", 1)
        check_int(self.depth, "depth", 0)

    def build(self, key: PRNGKeyArray, token_dim: int,
              latent_dim: int | None = None) -> PseudoObservationEncoder:
        if latent_dim is None:
            raise ValueError("PseudoObservations: its factors live in the latents' space, so it "
                             "needs latent_dim (a one-shot engine passes it).")
        return PseudoObservationEncoder(token_dim, latent_dim, rank=self.rank,
                                        feature_size=self.summary_size, width=self.width,
                                        depth=self.depth, key=key)
