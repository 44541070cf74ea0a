"""An MLP on the concatenated rows: the encoder for data of a fixed size.

Where every data set has the same rows in the same roles (the sbibm tasks: one 2-d point, four
points of a trajectory, a vector of summary statistics), the Set Transformer's permutation
invariance and padding buy nothing; ``sbi``'s and BayesFlow's default for such data is the
identity (the flow reads ``x`` itself) or an MLP. :class:`FlatEncoder` reads the rows in order,
concatenated, with the mask as extra inputs (a padded row's values are zeroed first), so data
sets may still be padded, but are not treated as exchangeable.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from amortized_ppl._checks import check_int
from amortized_ppl._recipes import recipe
from amortized_ppl.encoders.set_transformer import check_rows

__all__ = ["FlatEncoder", "FlatMLP"]


class FlatMLP(eqx.Module):
    """MLP (GELU) from ``num_rows`` rows of ``in_size`` features and their mask to a summary.

    The layers are listed rather than an ``eqx.nn.MLP`` (whose activation is a non-array leaf),
    so the module passes through plain ``jax.jit`` as the other encoders do.
    """

    layers: tuple[eqx.nn.Linear, ...]
    num_rows: int = eqx.field(static=True)
    in_size: int = eqx.field(static=True)
    out_size: int = eqx.field(static=True)

    def __init__(self, num_rows: int, in_size: int, out_size: int, *, width: int, depth: int,
                 key: PRNGKeyArray):
        sizes = [num_rows * (in_size + 1)] + [width] * depth + [out_size]
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(eqx.nn.Linear(a, b, key=k)
                            for a, b, k in zip(sizes[:-1], sizes[1:], keys))
        self.num_rows = num_rows
        self.in_size = in_size
        self.out_size = out_size

    def __call__(self, tokens: Float[Array, "num_obs in_size"],
                 mask: Bool[Array, " num_obs"] | None = None) -> Float[Array, " out_size"]:
        """Encode one data set of exactly ``num_rows`` rows (padded rows marked False)."""
        tokens, mask = check_rows(tokens, mask, self.in_size, rows="num_obs", items="data sets")
        if tokens.shape[0] != self.num_rows:
            raise ValueError(f"tokens: FlatEncoder(num_rows={self.num_rows}) reads exactly "
                             f"{self.num_rows} rows, got {tokens.shape[0]}; set num_rows to "
                             f"the data's largest size (padded rows masked).")
        present = jnp.ones(self.num_rows, tokens.dtype) if mask is None else mask.astype(
            tokens.dtype)
        h = jnp.concatenate([tokens.reshape(-1), present])
        for layer in self.layers[:-1]:
            h = jax.nn.gelu(layer(h))
        return self.layers[-1](h)


@recipe
class FlatEncoder:
    """Recipe of a :class:`FlatMLP`: for data of a fixed number of rows in fixed roles.

    Attributes:
        num_rows: rows per data set (the largest, when some are padded).
        summary_size: width of the summary.
        width, depth: the MLP's hidden layers.
    """

    num_rows: int = 1
    summary_size: int = 32
    width: int = 128
    depth: int = 2

    def __post_init__(self):
        for name in ("num_rows", "summary_size", "width"):
            check_int(getattr(self, name), name, 1)
        check_int(self.depth, "depth", 0)

    def build(self, key: PRNGKeyArray, token_dim: int, latent_dim: int | None = None) -> FlatMLP:
        del latent_dim  # the summary's size does not depend on the latents
        return FlatMLP(self.num_rows, token_dim, self.summary_size, width=self.width,
                       depth=self.depth, key=key)
