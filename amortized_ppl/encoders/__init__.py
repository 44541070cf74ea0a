"""Encoders of data sets: permutation-invariant for sets, positional for sequences.

Choose one with a recipe (:class:`SetEncoder`, :class:`SequenceEncoder`) or its name
(``"set"``, ``"sequence"``); the recipe builds the module (:class:`SetTransformer`,
:class:`SequenceTransformer`) for a problem's token width.
"""

from amortized_ppl.encoders.resolve import ENCODERS, resolve_encoder
from amortized_ppl.encoders.sequence import (
    SequenceEncoder,
    SequenceTransformer,
    sinusoidal_positions,
)
from amortized_ppl.encoders.set_transformer import (
    InducedSetAttentionBlock,
    MultiheadAttentionBlock,
    PoolingByMultiheadAttention,
    SetAttentionBlock,
    SetEncoder,
    SetTransformer,
)

__all__ = [
    "ENCODERS",
    "InducedSetAttentionBlock",
    "MultiheadAttentionBlock",
    "PoolingByMultiheadAttention",
    "SequenceEncoder",
    "SequenceTransformer",
    "SetAttentionBlock",
    "SetEncoder",
    "SetTransformer",
    "resolve_encoder",
    "sinusoidal_positions",
]
