"""Encoders of data sets: permutation-invariant for sets, positional for sequences."""

from amortized_ppl.encoders.sequence import SequenceEncoder, sinusoidal_positions
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
    "SequenceEncoder",
    "SetAttentionBlock",
    "SetTransformer",
    "sinusoidal_positions",
]
