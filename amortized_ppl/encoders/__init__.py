"""Permutation-invariant encoders of data sets."""

from amortized_ppl.encoders.set_transformer import (
    InducedSetAttentionBlock,
    MultiheadAttentionBlock,
    PoolingByMultiheadAttention,
    SetAttentionBlock,
    SetTransformer,
)

__all__ = [
    "InducedSetAttentionBlock",
    "MultiheadAttentionBlock",
    "PoolingByMultiheadAttention",
    "SetAttentionBlock",
    "SetTransformer",
]
