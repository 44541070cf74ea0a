"""A positional encoder for one sequence: order matters, padding at the end is ignored.

A set encoder (``SetTransformer``) forgets the order of its rows, which throws away exactly what a
time series' posterior depends on: which value follows which. :class:`SequenceTransformer` keeps it in
two ways, each cheap:

- local convolutions over time (zero padding at the edges), so every step sees its neighbours and
  pooled features can count transitions ``(y_t, y_t+1)``, the sufficient statistics of Markov
  models; and
- sinusoidal position features added to the embedding, so bidirectional self-attention (the
  project's pre-norm ``MultiheadAttentionBlock``) can relate distant steps and their order.

A learned-seed attention pooling then reads one summary vector out of the sequence. The encoder
is bidirectional: it summarizes a whole sequence for a posterior over global parameters (no
causal mask is needed for that).

Padding: rows where ``mask`` is False are zeroed after the embedding and never attended to, so a
sequence of length ``n`` padded at the end to any length gives the same summary as the unpadded
sequence (the convolutions see zeros past the end either way, and positions count from the
start). A False row in the middle acts as a gap (zeros in the convolution), which is not the same
as deleting it; masks are meant to mark a prefix.

Like every encoder here it works on one unbatched sequence; batch with :func:`jax.vmap`.

References:
    Vaswani, A. et al. (2017). Attention is all you need. NeurIPS (sinusoidal positions).
    Lee, J. et al. (2019). Set Transformer. ICML (pooling by multihead attention).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from amortized_ppl._checks import check_int
from amortized_ppl._recipes import recipe
from amortized_ppl.encoders.set_transformer import (
    MultiheadAttentionBlock,
    PoolingByMultiheadAttention,
    check_rows,
)

__all__ = ["SequenceEncoder", "SequenceTransformer", "sinusoidal_positions"]


def sinusoidal_positions(num_steps: int, size: int, *, max_period: float = 1000.0) -> jax.Array:
    """Fixed position features ``(num_steps, size)``: sines and cosines of geometric frequencies.

    Column pairs ``(2i, 2i+1)`` hold ``sin(t w_i)`` and ``cos(t w_i)`` with
    ``w_i = max_period ** (-2i / size)``; an odd ``size`` leaves the last column zero.
    """
    half = size // 2
    frequencies = max_period ** (-jnp.arange(half) / max(half, 1))
    angles = jnp.arange(num_steps)[:, None] * frequencies[None, :]
    features = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(num_steps, 2 * half)
    return jnp.pad(features, ((0, 0), (0, size - 2 * half)))


class _LocalMixing(eqx.Module):
    """Residual pre-norm convolution over time: ``x + Conv(GELU(Conv(LN(x))))`` on ``(T, size)``."""

    norm: eqx.nn.LayerNorm
    first: eqx.nn.Conv1d
    second: eqx.nn.Conv1d

    def __init__(self, size: int, kernel_size: int, *, key: PRNGKeyArray):
        first_key, second_key = jax.random.split(key)
        self.norm = eqx.nn.LayerNorm(size)
        self.first = eqx.nn.Conv1d(size, size, kernel_size, padding="SAME", key=first_key)
        self.second = eqx.nn.Conv1d(size, size, 1, key=second_key)

    def __call__(self, x: Float[Array, "T size"], mask: Bool[Array, " T"]) -> Float[Array, "T size"]:
        h = jnp.where(mask[:, None], jax.vmap(self.norm)(x), 0.0)
        h = self.second(jax.nn.gelu(self.first(h.T))).T  # Conv1d takes (channels, length)
        return x + h


class SequenceTransformer(eqx.Module):
    """Order-aware encoder of one sequence: embed + positions, convolutions, attention, pool.

    Same call signature as :class:`~amortized_ppl.encoders.set_transformer.SetTransformer`:
    ``(tokens (N, in_size), mask (N,)) -> (out_size,)``, so the guides can use either. Unlike it,
    the output changes when the rows are permuted.

    Examples:
        >>> encoder = SequenceTransformer(1, 8, key=jax.random.key(0))
        >>> tokens = jnp.zeros((5, 150, 1))            # 5 sequences padded to 150 steps
        >>> mask = jnp.arange(150) < jnp.array([[100], [150], [120], [1], [99]])
        >>> jax.vmap(encoder)(tokens, mask).shape
        (5, 8)
    """

    embedding: eqx.nn.Linear
    local: tuple[_LocalMixing, ...]
    blocks: tuple[MultiheadAttentionBlock, ...]
    pooling: PoolingByMultiheadAttention
    output_norm: eqx.nn.LayerNorm
    readout_hidden: eqx.nn.Linear
    readout_output: eqx.nn.Linear
    in_size: int = eqx.field(static=True)
    out_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        *,
        hidden_size: int = 64,
        num_heads: int = 4,
        num_blocks: int = 2,
        num_conv: int = 2,
        kernel_size: int = 3,
        num_seeds: int = 1,
        key: PRNGKeyArray,
    ):
        """Initialise the encoder.

        Args:
            in_size: Width of each input row (one time step's token).
            out_size: Width of the summary.
            hidden_size: Width of every layer; must be divisible by ``num_heads``.
            num_heads: Attention heads.
            num_blocks: Bidirectional self-attention blocks (0 allowed).
            num_conv: Residual convolution layers before attention (0 allowed; then only the
                position features carry the order).
            kernel_size: Odd width of each convolution (in time steps).
            num_seeds: Seed vectors of the attention pooling, flattened before the readout.
            key: PRNG key for the parameters.
        """
        for name, value, low in (
            ("in_size", in_size, 1),
            ("out_size", out_size, 1),
            ("hidden_size", hidden_size, 1),
            ("num_blocks", num_blocks, 0),
            ("num_conv", num_conv, 0),
            ("num_seeds", num_seeds, 1),
        ):
            check_int(value, name, low)
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd positive int; got {kernel_size!r}.")
        if hidden_size % num_heads != 0:
            raise ValueError(
                f"num_heads must divide hidden_size; got hidden_size={hidden_size} and "
                f"num_heads={num_heads}."
            )
        keys = jax.random.split(key, 4 + num_conv + num_blocks)
        embed_key, pool_key, hidden_key, output_key = keys[:4]
        self.embedding = eqx.nn.Linear(in_size, hidden_size, key=embed_key)
        self.local = tuple(
            _LocalMixing(hidden_size, kernel_size, key=k) for k in keys[4 : 4 + num_conv]
        )
        self.blocks = tuple(
            MultiheadAttentionBlock(hidden_size, num_heads, key=k) for k in keys[4 + num_conv :]
        )
        self.pooling = PoolingByMultiheadAttention(hidden_size, num_heads, num_seeds, key=pool_key)
        self.output_norm = eqx.nn.LayerNorm(hidden_size)
        self.readout_hidden = eqx.nn.Linear(num_seeds * hidden_size, hidden_size, key=hidden_key)
        self.readout_output = eqx.nn.Linear(hidden_size, out_size, key=output_key)
        self.in_size = in_size
        self.out_size = out_size
        self.hidden_size = hidden_size

    def __call__(
        self,
        tokens: Float[Array, "num_steps in_size"],
        mask: Bool[Array, " num_steps"] | None = None,
    ) -> Float[Array, " out_size"]:
        """Encode one sequence.

        Args:
            tokens: One row per time step, in time order, shape ``(num_steps, in_size)``. Padded
                rows may hold any values, including inf or NaN.
            mask: Optional boolean ``(num_steps,)``; True marks real steps (a prefix). None means
                every row is real.

        Returns:
            The summary, shape ``(out_size,)``.

        Raises:
            ValueError: If ``tokens`` or ``mask`` has the wrong shape, or there are no rows.
            TypeError: If ``mask`` is not boolean.
        """
        tokens, mask = check_rows(tokens, mask, self.in_size, rows="num_steps", items="sequences")
        num_steps = tokens.shape[0]
        if mask is None:
            mask = jnp.ones((num_steps,), bool)
        # Padded rows are zero now; they are zeroed again after the embedding, whose bias would
        # otherwise make padding look like data to the convolutions.
        x = jax.vmap(self.embedding)(tokens)
        x = x + sinusoidal_positions(num_steps, self.hidden_size).astype(x.dtype)
        x = jnp.where(mask[:, None], x, 0.0)
        for layer in self.local:
            x = jnp.where(mask[:, None], layer(x, mask), 0.0)
        for block in self.blocks:
            x = jnp.where(mask[:, None], block(x, x, mask), 0.0)
        pooled = jax.vmap(self.output_norm)(self.pooling(x, mask))
        return self.readout_output(jax.nn.gelu(self.readout_hidden(pooled.reshape(-1))))


@recipe
class SequenceEncoder:
    """Recipe of a :class:`SequenceTransformer` that reads a data set as a time series.

    The rows are time steps along the data plate, in order; data sets are prefixes (the mask
    marks the first ``n`` steps).

    Attributes:
        summary_size: width of the summary.
        hidden_size, num_heads, num_blocks: the attention layers.
        num_conv, kernel_size: the residual convolutions before attention.
    """

    summary_size: int = 32
    hidden_size: int = 32
    num_heads: int = 4
    num_blocks: int = 1
    num_conv: int = 2
    kernel_size: int = 3

    def build(self, key: PRNGKeyArray, token_dim: int,
              latent_dim: int | None = None) -> SequenceTransformer:
        del latent_dim  # the summary's size does not depend on the latents
        return SequenceTransformer(token_dim, self.summary_size, hidden_size=self.hidden_size,
                                   num_heads=self.num_heads, num_blocks=self.num_blocks,
                                   num_conv=self.num_conv, kernel_size=self.kernel_size, key=key)
