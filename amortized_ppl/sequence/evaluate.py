"""Per-position comparisons of a predictor with the exact oracle, stratified by ambiguity.

All functions take arrays with a trailing vocabulary axis ``V`` and any leading axes (e.g.
``(B, T)``), in nats.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = [
    "ambiguity_bins",
    "backward_kl",
    "by_ambiguity",
    "environment_posterior_kl",
    "forward_kl",
    "token_nll",
]


def forward_kl(oracle_log_probs: jnp.ndarray, model_log_probs: jnp.ndarray) -> jnp.ndarray:
    """``KL(oracle || model)`` per position: ``(..., V)`` twice -> ``(...)``.

    Symbols the oracle rules out (probability 0, log ``-inf``) contribute nothing, as they should.
    """
    p = jnp.exp(oracle_log_probs)
    diff = jnp.where(p > 0, oracle_log_probs - model_log_probs, 0.0)
    return jnp.sum(p * diff, axis=-1)


def backward_kl(oracle_log_probs: jnp.ndarray, model_log_probs: jnp.ndarray) -> jnp.ndarray:
    """``KL(model || oracle)`` per position: ``(..., V)`` twice -> ``(...)``.

    The mode-seeking direction: it charges a predictor for mass where the oracle has little. It
    is ``+inf`` where the model gives mass to a symbol the oracle rules out (a smoothed Monte
    Carlo mixture can); symbols the model rules out contribute nothing.
    """
    q = jnp.exp(model_log_probs)
    diff = jnp.where(q > 0, model_log_probs - oracle_log_probs, 0.0)
    return jnp.sum(q * diff, axis=-1)


def token_nll(log_probs: jnp.ndarray, symbols: jnp.ndarray) -> jnp.ndarray:
    """``-log p(x_t | x_<t)`` of the observed symbols: ``(..., T, V)``, ``(..., T)`` -> ``(..., T)``."""
    return -jnp.take_along_axis(log_probs, symbols[..., None], axis=-1)[..., 0]


def environment_posterior_kl(
    oracle_log_posterior: jnp.ndarray, q_log_probs_of_envs: jnp.ndarray
) -> jnp.ndarray:
    """``KL(p(e | x_<t) || q(e | x_<t))`` over environments, per position.

    Args:
        oracle_log_posterior: ``(..., E)``, the exact posterior over the E environments of the
            oracle's prior.
        q_log_probs_of_envs: ``(..., E)``, the amortized posterior's log mass on the same
            environments (it may put mass elsewhere too, e.g. on held-out combinations; that mass
            counts against it through the missing mass here).
    """
    p = jnp.exp(oracle_log_posterior)
    diff = jnp.where(p > 0, oracle_log_posterior - q_log_probs_of_envs, 0.0)
    return jnp.sum(p * diff, axis=-1)


def ambiguity_bins(ambiguity: np.ndarray, num_bins: int = 3) -> np.ndarray:
    """Bin index ``0 .. num_bins - 1`` of every position by rank of ambiguity (equal counts).

    Ranks, not quantile edges: once the environment is identified many positions have ambiguity
    exactly 0, and quantile edges would then collapse and leave bins empty. Ties are broken by
    position order (a stable sort), so the split is deterministic. Bin ``num_bins - 1`` is the
    most ambiguous.
    """
    flat = np.asarray(ambiguity, dtype=np.float64).ravel()
    order = np.argsort(flat, kind="stable")
    index = np.empty(flat.size, dtype=np.int64)
    index[order] = (np.arange(flat.size) * num_bins) // max(flat.size, 1)
    return index.reshape(np.shape(ambiguity))


def by_ambiguity(values: np.ndarray, ambiguity: np.ndarray, *, num_bins: int = 3) -> dict:
    """Mean of ``values`` within equal-count ambiguity bins (terciles by default).

    Args:
        values: per-position values, any shape.
        ambiguity: same shape, the oracle's posterior entropy at each position.
        num_bins: number of bins (3: terciles), see :func:`ambiguity_bins`. Two predictors
            evaluated on the same positions get the same bins.

    Returns:
        ``{"ambiguity_range", "mean", "sem", "count"}`` as lists (JSON-able), bin 0 the least
        ambiguous; ``ambiguity_range[i]`` is the ``[min, max]`` ambiguity within bin i.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    ambiguity = np.asarray(ambiguity, dtype=np.float64).ravel()
    if values.shape != ambiguity.shape:
        raise ValueError(
            f"values and ambiguity must have the same size, got {values.size} and {ambiguity.size}."
        )
    if values.size < num_bins:
        raise ValueError(f"need at least num_bins={num_bins} positions, got {values.size}.")
    index = ambiguity_bins(ambiguity, num_bins)
    out = {"ambiguity_range": [], "mean": [], "sem": [], "count": []}
    for b in range(num_bins):
        v, a = values[index == b], ambiguity[index == b]
        out["ambiguity_range"].append([float(a.min()), float(a.max())])
        out["count"].append(int(v.size))
        out["mean"].append(float(v.mean()))
        out["sem"].append(float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan"))
    return out
