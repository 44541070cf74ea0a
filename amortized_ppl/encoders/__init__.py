"""Encoders of data sets: permutation-invariant for sets, positional for sequences.

Choose one with a recipe (:class:`SetEncoder`, :class:`SequenceEncoder`) or its name
(``"set"``, ``"sequence"``); the recipe builds the module (:class:`SetTransformer`,
:class:`SequenceTransformer`) for a problem's token width. :class:`FlatEncoder` is an MLP on the
concatenated rows, for data of a fixed size in fixed roles. :class:`PseudoObservations` turns
each observation into a Gaussian factor of the latents and sums them; it pairs with the
:class:`~amortized_ppl.families.GaussianFactors` family. :class:`MixedPrecision` runs any of the
others in bfloat16 on accelerators.
"""

from amortized_ppl.encoders.flat import FlatEncoder, FlatMLP
from amortized_ppl.encoders.mixed_precision import MixedPrecision, MixedPrecisionEncoder
from amortized_ppl.encoders.pseudo_observations import (
    PseudoObservationEncoder,
    PseudoObservations,
)
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
    "FlatEncoder",
    "FlatMLP",
    "MixedPrecision",
    "MixedPrecisionEncoder",
    "InducedSetAttentionBlock",
    "MultiheadAttentionBlock",
    "PoolingByMultiheadAttention",
    "PseudoObservationEncoder",
    "PseudoObservations",
    "SequenceEncoder",
    "SequenceTransformer",
    "SetAttentionBlock",
    "SetEncoder",
    "SetTransformer",
    "resolve_encoder",
    "sinusoidal_positions",
]
