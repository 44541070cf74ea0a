"""Choosing an encoder: a recipe, or a name as a shortcut for one."""

from __future__ import annotations

from typing import Any

from amortized_ppl.encoders.sequence import SequenceEncoder
from amortized_ppl.encoders.set_transformer import SetEncoder

__all__ = ["ENCODERS", "resolve_encoder"]

ENCODERS = {"set": SetEncoder, "sequence": SequenceEncoder}
"""Encoder names: ``"set"`` for exchangeable observations, ``"sequence"`` for time-ordered ones."""


def resolve_encoder(encoder: Any = "set", **settings) -> Any:
    """The encoder recipe ``encoder`` names (made with ``settings``), or ``encoder`` itself.

    Args:
        encoder: a recipe (anything with ``build(key, token_dim)`` and ``summary_size``), or
            ``"set"`` / ``"sequence"``.
        settings: the named recipe's fields (``num_inducing`` is dropped for ``"sequence"``,
            whose attention must see every time step); ignored when a recipe is given.
    """
    if isinstance(encoder, str):
        if encoder not in ENCODERS:
            raise ValueError(
                f"encoder: expected one of {tuple(ENCODERS)} ('set' for exchangeable "
                f"observations, 'sequence' for time-ordered ones) or an encoder recipe, got "
                f"{encoder!r}."
            )
        if encoder == "sequence":
            settings.pop("num_inducing", None)
        return ENCODERS[encoder](**settings)
    if hasattr(encoder, "build") and hasattr(encoder, "summary_size"):
        return encoder
    raise TypeError(
        f"encoder: expected 'set', 'sequence' or an encoder recipe such as SetEncoder(), got "
        f"{type(encoder).__name__}."
    )
