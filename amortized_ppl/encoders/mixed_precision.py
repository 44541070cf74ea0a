"""Mixed precision: any encoder computed in bfloat16, its parameters and summary in float32.

``MixedPrecision(SetEncoder())`` is a recipe like the one it wraps. The module it builds keeps
the wrapped encoder's parameters in float32 (the optimizer updates them there), casts them and
the data set's rows to ``compute_dtype`` for the forward pass, and returns the summary in
float32, so the posterior family, the Newton steps on the model's density and the loss stay in
full precision. The gradient flows back through the casts. On GPUs and TPUs bfloat16 halves the
activations' memory and runs on the matrix units; on a CPU it is emulated and slower: it is for
accelerators. ``benchmarks/bench_mixed_precision.py`` measures its accuracy against float32.

Written here because neither equinox nor optax casts a module's forward pass (jmp, DeepMind's
mixed-precision library, is for Haiku and unmaintained).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from amortized_ppl._recipes import recipe

__all__ = ["MixedPrecision", "MixedPrecisionEncoder"]

_DTYPES = {"bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _cast(tree, dtype):
    return jax.tree.map(lambda v: v.astype(dtype) if eqx.is_inexact_array(v) else v, tree)


class MixedPrecisionEncoder(eqx.Module):
    """An encoder module run in ``compute_dtype``; see the module docstring."""

    encoder: eqx.Module
    compute_dtype: str = eqx.field(static=True)

    @property
    def out_size(self) -> int:
        return self.encoder.out_size

    def __call__(self, tokens, mask=None):
        dtype = _DTYPES[self.compute_dtype]
        # Padded rows may hold inf or NaN (the encoders mask them); the cast keeps them so.
        summary = _cast(self.encoder, dtype)(tokens.astype(dtype), mask)
        return summary.astype(jnp.float32)


@recipe
class MixedPrecision:
    """Recipe: ``encoder`` (a recipe) computed in ``compute_dtype``.

    Attributes:
        encoder: the wrapped encoder's recipe, e.g. ``SetEncoder()``.
        compute_dtype: ``"bfloat16"`` (default) or ``"float16"``.
    """

    encoder: Any
    compute_dtype: str = "bfloat16"

    def __post_init__(self):
        if self.compute_dtype not in _DTYPES:
            raise ValueError(f"compute_dtype: expected one of {sorted(_DTYPES)}, got "
                             f"{self.compute_dtype!r}.")
        if not (hasattr(self.encoder, "build") and hasattr(self.encoder, "summary_size")):
            raise TypeError(f"encoder: expected an encoder recipe such as SetEncoder(), got "
                            f"{type(self.encoder).__name__}.")
        if getattr(self.encoder, "gives_factors", False):
            raise ValueError("encoder: the pseudo-observation encoder's sums of factors are "
                             "precisions; keep them in float32.")

    @property
    def summary_size(self) -> int:
        return self.encoder.summary_size

    def build(self, key: PRNGKeyArray, token_dim: int,
              latent_dim: int | None = None) -> MixedPrecisionEncoder:
        return MixedPrecisionEncoder(self.encoder.build(key, token_dim, latent_dim=latent_dim),
                                     self.compute_dtype)
