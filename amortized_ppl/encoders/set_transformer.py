"""Set Transformer: a permutation-invariant encoder for data sets of varying size.

Every module here works on one unbatched data set, a matrix of rows (observations) with an
optional boolean padding mask; batch with `jax.vmap` outside. Padding lets data sets of
different sizes share one array: pad each to a common number of rows and mark the real rows
with `mask=True`. Padded rows never influence the outputs of real rows or the pooled output.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from amortized_ppl._recipes import recipe

__all__ = [
    "check_rows",
    "InducedSetAttentionBlock",
    "MultiheadAttentionBlock",
    "PoolingByMultiheadAttention",
    "SetAttentionBlock",
    "SetEncoder",
    "SetTransformer",
]


def _masked_softmax(
    logits: Float[Array, "... num_keys"], mask: Bool[Array, " num_keys"] | None
) -> Float[Array, "... num_keys"]:
    """Softmax over the last axis that gives masked-out keys exactly zero weight.

    Where every key is masked out the weights are all zero (not NaN, and not uniform, which
    would let padding leak into the output).
    """
    if mask is None:
        return jax.nn.softmax(logits, axis=-1)
    fill = jnp.finfo(logits.dtype).min
    # The max over valid keys only; masked entries use the most negative finite number so that
    # they never win. Stop its gradient as jax.nn.softmax does: softmax is shift-invariant.
    row_max = jax.lax.stop_gradient(jnp.max(jnp.where(mask, logits, fill), axis=-1, keepdims=True))
    # Masked entries get the harmless exponent 0 before `exp` and are then zeroed. Feeding them
    # `fill - row_max` could overflow to -inf, and a double `where` keeps gradients finite even
    # when the unselected branch holds large values.
    shifted = jnp.where(mask, logits - row_max, 0.0)
    unnormalised = jnp.where(mask, jnp.exp(shifted), 0.0)
    total = jnp.sum(unnormalised, axis=-1, keepdims=True)
    # total >= 1 whenever a key is valid (the max contributes exp(0)); it is 0 only when every
    # key is masked, and then the weights are zero.
    return unnormalised / jnp.where(total > 0, total, 1.0)


def check_rows(tokens, mask, in_size: int, *, rows: str, items: str):
    """Validate one encoder input and zero its padded rows; shared by the set and sequence encoders.

    Raises ``ValueError`` on a shape other than ``(n >= 1, in_size)`` or a mask of another length,
    ``TypeError`` on a non-boolean mask. Padded rows are replaced by zeros before anything touches
    them, so garbage (even inf or NaN) cannot reach valid outputs or gradients. Returns
    ``(tokens, mask)``; ``mask`` stays None when it was None.
    """
    if tokens.ndim != 2 or tokens.shape[-1] != in_size:
        raise ValueError(
            f"tokens must have shape ({rows}, {in_size}) for in_size={in_size}; "
            f"got shape {tokens.shape}. Use jax.vmap to encode a batch of {items}."
        )
    if tokens.shape[0] == 0:
        raise ValueError(f"tokens must have at least one row; got shape {tokens.shape}.")
    if mask is None:
        return tokens, None
    if mask.shape != tokens.shape[:1]:
        raise ValueError(
            f"mask must have shape ({tokens.shape[0]},) to match tokens of shape "
            f"{tokens.shape}; got shape {mask.shape}."
        )
    if mask.dtype != jnp.bool_:
        raise TypeError(f"mask must be a boolean array; got dtype {mask.dtype}.")
    return jnp.where(mask[:, None], tokens, 0.0), mask


def _rowwise(layer, x: Float[Array, "n d"]) -> Float[Array, "n e"]:
    """Apply a per-vector equinox layer to every row of `x`."""
    return jax.vmap(layer)(x)


class _FeedForward(eqx.Module):
    """Two-layer GELU network on one vector.

    Written out rather than `eqx.nn.MLP`, whose activation is a non-array leaf: without it every
    leaf of `SetTransformer` is an array, so the module passes through plain `jax.jit`.
    """

    hidden: eqx.nn.Linear
    output: eqx.nn.Linear

    def __init__(self, in_size: int, out_size: int, width: int, *, key: PRNGKeyArray):
        hidden_key, output_key = jax.random.split(key)
        self.hidden = eqx.nn.Linear(in_size, width, key=hidden_key)
        self.output = eqx.nn.Linear(width, out_size, key=output_key)

    def __call__(self, x: Float[Array, " in_size"]) -> Float[Array, " out_size"]:
        return self.output(jax.nn.gelu(self.hidden(x)))


class MultiheadAttentionBlock(eqx.Module):
    """Multihead attention block MAB(X, Y) with pre-layer-norm residual connections.

    Computes `H = X + MHA(LN(X), LN(Y))` and returns `H + rFF(LN(H))`, where the queries come
    from `X` and the keys and values from `Y`. This is the pre-norm variant of the MAB of Lee
    et al. (2019), which trains more stably than the post-norm original.

    References:
        Lee, J., Lee, Y., Kim, J., Kosiorek, A., Choi, S., Teh, Y. W. (2019). Set Transformer:
        A framework for attention-based permutation-invariant neural networks. ICML.
    """

    query_proj: eqx.nn.Linear
    key_proj: eqx.nn.Linear
    value_proj: eqx.nn.Linear
    output_proj: eqx.nn.Linear
    query_norm: eqx.nn.LayerNorm
    key_value_norm: eqx.nn.LayerNorm
    feedforward_norm: eqx.nn.LayerNorm
    feedforward: _FeedForward
    size: int = eqx.field(static=True)
    num_heads: int = eqx.field(static=True)

    def __init__(self, size: int, num_heads: int, *, key: PRNGKeyArray):
        """Initialise the block.

        Args:
            size: Width of every row, in and out.
            num_heads: Number of attention heads; must divide `size`.
            key: PRNG key for the parameters.
        """
        if size % num_heads != 0:
            raise ValueError(
                f"num_heads must divide size; got size={size} and num_heads={num_heads}."
            )
        q_key, k_key, v_key, o_key, ff_key = jax.random.split(key, 5)
        self.query_proj = eqx.nn.Linear(size, size, key=q_key)
        self.key_proj = eqx.nn.Linear(size, size, key=k_key)
        self.value_proj = eqx.nn.Linear(size, size, key=v_key)
        self.output_proj = eqx.nn.Linear(size, size, key=o_key)
        self.query_norm = eqx.nn.LayerNorm(size)
        self.key_value_norm = eqx.nn.LayerNorm(size)
        self.feedforward_norm = eqx.nn.LayerNorm(size)
        self.feedforward = _FeedForward(size, size, size, key=ff_key)
        self.size = size
        self.num_heads = num_heads

    def __call__(
        self,
        x: Float[Array, "num_queries size"],
        y: Float[Array, "num_keys size"],
        mask: Bool[Array, " num_keys"] | None = None,
    ) -> Float[Array, "num_queries size"]:
        """Attend from the rows of `x` to the rows of `y`.

        Args:
            x: Queries, shape (num_queries, size).
            y: Keys and values, shape (num_keys, size).
            mask: Optional, shape (num_keys,); False marks rows of `y` that get zero attention.
                If every key is masked, the attention term is zero.

        Returns:
            Shape (num_queries, size).
        """
        head_size = self.size // self.num_heads

        def split_heads(z):  # (n, size) -> (num_heads, n, head_size)
            return z.reshape(z.shape[0], self.num_heads, head_size).transpose(1, 0, 2)

        normed_x = _rowwise(self.query_norm, x)
        normed_y = _rowwise(self.key_value_norm, y)
        queries = split_heads(_rowwise(self.query_proj, normed_x))
        keys = split_heads(_rowwise(self.key_proj, normed_y))
        values = _rowwise(self.value_proj, normed_y)
        if mask is not None:
            # Zero padded values too: a zero weight times an inf or NaN value is still NaN.
            values = jnp.where(mask[:, None], values, 0.0)
        values = split_heads(values)

        logits = jnp.einsum("hqd,hkd->hqk", queries, keys) / math.sqrt(head_size)
        weights = _masked_softmax(logits, mask)
        attended = jnp.einsum("hqk,hkd->hqd", weights, values)
        attended = attended.transpose(1, 0, 2).reshape(x.shape[0], self.size)

        h = x + _rowwise(self.output_proj, attended)
        return h + _rowwise(self.feedforward, _rowwise(self.feedforward_norm, h))


class SetAttentionBlock(eqx.Module):
    """Set attention block SAB(X) = MAB(X, X): self-attention, cost quadratic in the rows.

    Permutation-equivariant: permuting the rows of the input permutes the output rows.
    """

    block: MultiheadAttentionBlock

    def __init__(self, size: int, num_heads: int, *, key: PRNGKeyArray):
        """Initialise the block; see `MultiheadAttentionBlock` for the arguments."""
        self.block = MultiheadAttentionBlock(size, num_heads, key=key)

    def __call__(
        self, x: Float[Array, "n size"], mask: Bool[Array, " n"] | None = None
    ) -> Float[Array, "n size"]:
        """Apply self-attention over the rows of `x` (shape (n, size)), ignoring masked rows."""
        return self.block(x, x, mask)


class InducedSetAttentionBlock(eqx.Module):
    """Induced set attention block: ISAB(X) = MAB(X, MAB(I, X)) with learned points I.

    The `num_inducing` learned inducing points summarise the set first, so the cost is
    O(n * num_inducing) rather than O(n^2). Permutation-equivariant like `SetAttentionBlock`.
    """

    inducing_points: Float[Array, "num_inducing size"]
    summarise: MultiheadAttentionBlock
    broadcast: MultiheadAttentionBlock
    num_inducing: int = eqx.field(static=True)

    def __init__(self, size: int, num_heads: int, num_inducing: int, *, key: PRNGKeyArray):
        """Initialise the block.

        Args:
            size: Width of every row, in and out.
            num_heads: Number of attention heads; must divide `size`.
            num_inducing: Number of learned inducing points, at least 1.
            key: PRNG key for the parameters.
        """
        if num_inducing < 1:
            raise ValueError(f"num_inducing must be at least 1; got {num_inducing}.")
        points_key, summarise_key, broadcast_key = jax.random.split(key, 3)
        self.inducing_points = jax.random.normal(points_key, (num_inducing, size)) / math.sqrt(size)
        self.summarise = MultiheadAttentionBlock(size, num_heads, key=summarise_key)
        self.broadcast = MultiheadAttentionBlock(size, num_heads, key=broadcast_key)
        self.num_inducing = num_inducing

    def __call__(
        self, x: Float[Array, "n size"], mask: Bool[Array, " n"] | None = None
    ) -> Float[Array, "n size"]:
        """Apply the block to `x` (shape (n, size)); masked rows are not attended to."""
        # Only the first step reads the (possibly padded) rows of x as keys; the second attends
        # to the inducing summary, which has no padding.
        summary = self.summarise(self.inducing_points, x, mask)
        return self.broadcast(x, summary)


class PoolingByMultiheadAttention(eqx.Module):
    """Pooling by multihead attention: PMA(X) = MAB(S, rFF(X)) with learned seeds S.

    Permutation-invariant: returns `num_seeds` vectors whatever the number of rows.
    """

    seeds: Float[Array, "num_seeds size"]
    row_norm: eqx.nn.LayerNorm
    row_feedforward: _FeedForward
    block: MultiheadAttentionBlock
    num_seeds: int = eqx.field(static=True)

    def __init__(self, size: int, num_heads: int, num_seeds: int, *, key: PRNGKeyArray):
        """Initialise the pooling layer.

        Args:
            size: Width of every row, in and out.
            num_heads: Number of attention heads; must divide `size`.
            num_seeds: Number of learned seed vectors (pooled outputs), at least 1.
            key: PRNG key for the parameters.
        """
        if num_seeds < 1:
            raise ValueError(f"num_seeds must be at least 1; got {num_seeds}.")
        seeds_key, ff_key, block_key = jax.random.split(key, 3)
        self.seeds = jax.random.normal(seeds_key, (num_seeds, size)) / math.sqrt(size)
        self.row_norm = eqx.nn.LayerNorm(size)
        self.row_feedforward = _FeedForward(size, size, size, key=ff_key)
        self.block = MultiheadAttentionBlock(size, num_heads, key=block_key)
        self.num_seeds = num_seeds

    def __call__(
        self, x: Float[Array, "n size"], mask: Bool[Array, " n"] | None = None
    ) -> Float[Array, "num_seeds size"]:
        """Pool the rows of `x` (shape (n, size)) into shape (num_seeds, size)."""
        # Residual rFF on the rows, in pre-norm form so it matches the MAB.
        rows = x + _rowwise(self.row_feedforward, _rowwise(self.row_norm, x))
        return self.block(self.seeds, rows, mask)


class SetTransformer(eqx.Module):
    """Permutation-invariant encoder of one data set: embed, attention blocks, pool, read out.

    Rows are embedded by a linear layer, passed through `num_blocks` SABs (or ISABs when
    `num_inducing` is given), pooled by a PMA with `num_seeds` seeds, and the flattened seeds
    are mapped to `out_size` by an MLP. Padded rows (mask False) do not change the output.

    References:
        Lee, J., Lee, Y., Kim, J., Kosiorek, A., Choi, S., Teh, Y. W. (2019). Set Transformer:
        A framework for attention-based permutation-invariant neural networks. ICML.

    Examples:
        >>> encoder = SetTransformer(3, 8, num_inducing=16, key=jax.random.key(0))
        >>> tokens = jnp.zeros((5, 10, 3))            # 5 data sets padded to 10 rows
        >>> mask = jnp.arange(10) < jnp.array([[4], [10], [7], [1], [9]])
        >>> jax.vmap(encoder)(tokens, mask).shape
        (5, 8)
    """

    embedding: eqx.nn.Linear
    blocks: tuple[SetAttentionBlock | InducedSetAttentionBlock, ...]
    pooling: PoolingByMultiheadAttention
    output_norm: eqx.nn.LayerNorm
    readout: _FeedForward
    in_size: int = eqx.field(static=True)
    out_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    num_heads: int = eqx.field(static=True)
    num_blocks: int = eqx.field(static=True)
    num_inducing: int | None = eqx.field(static=True)
    num_seeds: int = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        *,
        hidden_size: int = 64,
        num_heads: int = 4,
        num_blocks: int = 2,
        num_inducing: int | None = None,
        num_seeds: int = 1,
        key: PRNGKeyArray,
    ):
        """Initialise the encoder.

        Args:
            in_size: Width of each input row (observation).
            out_size: Width of the output vector.
            hidden_size: Width of the attention layers; must be divisible by `num_heads`.
            num_heads: Number of attention heads.
            num_blocks: Number of SAB/ISAB blocks (0 is allowed: embed then pool).
            num_inducing: Number of inducing points per block; an int selects ISABs, whose cost
                is linear in the number of rows, and None selects SABs (quadratic).
            num_seeds: Number of PMA seed vectors; they are flattened before the readout.
            key: PRNG key for the parameters.
        """
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be non-negative; got {num_blocks}.")
        embed_key, pool_key, readout_key, *block_keys = jax.random.split(key, 3 + num_blocks)
        self.embedding = eqx.nn.Linear(in_size, hidden_size, key=embed_key)
        if num_inducing is None:
            self.blocks = tuple(
                SetAttentionBlock(hidden_size, num_heads, key=k) for k in block_keys
            )
        else:
            self.blocks = tuple(
                InducedSetAttentionBlock(hidden_size, num_heads, num_inducing, key=k)
                for k in block_keys
            )
        self.pooling = PoolingByMultiheadAttention(hidden_size, num_heads, num_seeds, key=pool_key)
        # Pre-norm blocks leave the residual stream un-normalised: normalise once before readout.
        self.output_norm = eqx.nn.LayerNorm(hidden_size)
        self.readout = _FeedForward(num_seeds * hidden_size, out_size, hidden_size, key=readout_key)
        self.in_size = in_size
        self.out_size = out_size
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.num_blocks = num_blocks
        self.num_inducing = num_inducing
        self.num_seeds = num_seeds

    def __call__(
        self,
        tokens: Float[Array, "num_obs in_size"],
        mask: Bool[Array, " num_obs"] | None = None,
    ) -> Float[Array, " out_size"]:
        """Encode one data set.

        Args:
            tokens: The rows (observations) of one data set, shape (num_obs, in_size). Padded
                rows may hold any values, including inf or NaN.
            mask: Optional boolean array of shape (num_obs,); True marks real observations.
                None means every row is real. If every entry is False the output is finite but
                otherwise meaningless (the pooling attends to nothing).

        Returns:
            The encoding, shape (out_size,).

        Raises:
            ValueError: If `tokens` or `mask` has the wrong shape.
            TypeError: If `mask` is not boolean.
        """
        tokens, mask = check_rows(tokens, mask, self.in_size, rows="num_obs", items="data sets")

        x = _rowwise(self.embedding, tokens)
        for block in self.blocks:
            x = block(x, mask)
            if mask is not None:
                # Padded query rows are never read as keys, but keep them at zero so they stay
                # bounded however many blocks are stacked.
                x = jnp.where(mask[:, None], x, 0.0)
        pooled = _rowwise(self.output_norm, self.pooling(x, mask))
        return self.readout(pooled.reshape(-1))


@recipe
class SetEncoder:
    """Recipe of a :class:`SetTransformer` that reads a data set as an exchangeable set.

    The defaults train in minutes on a 2-core CPU.

    Attributes:
        summary_size: width of the summary.
        hidden_size, num_heads, num_blocks: the attention layers.
        num_inducing: inducing points of induced set attention (cost linear in N); None gives
            full self-attention.
    """

    summary_size: int = 32
    hidden_size: int = 32
    num_heads: int = 4
    num_blocks: int = 1
    num_inducing: int | None = 16

    def build(self, key: PRNGKeyArray, token_dim: int,
              latent_dim: int | None = None) -> SetTransformer:
        del latent_dim  # the summary's size does not depend on the latents
        return SetTransformer(token_dim, self.summary_size, hidden_size=self.hidden_size,
                              num_heads=self.num_heads, num_blocks=self.num_blocks,
                              num_inducing=self.num_inducing, key=key)
