"""TARP: tests of accuracy with random points (Lemos et al., 2023).

For each of ``N`` simulations, with true parameters ``theta*_i``, posterior draws
``theta_ij ~ q(theta | x_i)`` and a random reference point ``r_i``, the coverage value

    f_i = mean_j 1[ |theta_ij - r_i| < |theta*_i - r_i| ]

is the credibility of the smallest ball around ``r_i`` that holds the truth. Under a correct
posterior every ``f_i`` is uniform on [0, 1]; the expected coverage probability
``ECP(alpha) = mean_i 1[f_i < alpha]`` is then the diagonal. Unlike SBC's ranks per coordinate,
the random balls make the check sensitive to the whole joint posterior (with references from a
distribution covering the prior, it is necessary and sufficient for ``q = p``; Lemos et al.,
Theorem 3). The ``sbi`` package ships it; this module computes it on JAX arrays, in the
reference-standardized space, with a one-sample Kolmogorov-Smirnov test of the ``f_i`` against the
uniform (where ``sbi`` tests the ECP curve against the diagonal as two samples).

References:
    Lemos, P., Coogan, A., Hezaveh, Y. and Perreault-Levasseur, L. (2023). Sampling-based
    accuracy testing of posterior estimators for general inference. *ICML*.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from amortized_ppl._checks import check_int, check_key

__all__ = ["TARPResult", "tarp"]


class TARPResult(NamedTuple):
    """What :func:`tarp` returns.

    Attributes:
        alpha: credibility levels ``(A,)``, 0 to 1.
        ecp: expected coverage probability at each level ``(A,)`` (the diagonal when calibrated;
            above it: too wide, below: too narrow or biased).
        coverage: the ``f_i`` of every simulation ``(N,)``.
        atc: area between the ECP curve and the diagonal for ``alpha >= 0.5`` (``sbi``'s
            "area to curve"); near 0 when calibrated, negative when overconfident.
        ks_pvalue: p-value of the one-sample Kolmogorov-Smirnov test of ``coverage`` against
            the uniform.
    """

    alpha: np.ndarray
    ecp: np.ndarray
    coverage: np.ndarray
    atc: float
    ks_pvalue: float


@jax.jit
def _coverage(draws, truths, references):
    """``f_i`` for every simulation: draws ``(N, S, D)``, truths and references ``(N, D)``."""
    draw_distance = jnp.linalg.norm(draws - references[:, None, :], axis=-1)  # (N, S)
    truth_distance = jnp.linalg.norm(truths - references, axis=-1)  # (N,)
    return jnp.mean(draw_distance < truth_distance[:, None], axis=-1)


def tarp(
    key: jax.Array,
    draws,
    truths,
    *,
    references=None,
    num_alphas: int = 101,
) -> TARPResult:
    """TARP's expected coverage of posterior draws against the parameters that made the data.

    Draws and truths are standardized by the truths' mean and SD per coordinate (so that no
    coordinate's units dominate the distances); the references default to uniform draws over the
    truths' bounding box in that space (as ``sbi`` chooses them).

    Args:
        key: PRNG key for the references.
        draws: posterior draws ``(N, S, D)``, ``S`` per simulation.
        truths: the parameters the data were simulated from ``(N, D)`` (draws of the prior).
        references: optional reference points ``(N, D)`` in the original units.
        num_alphas: credibility levels on [0, 1], at least 2.

    Returns:
        A :class:`TARPResult`.

    Raises:
        ValueError: on mismatched shapes, fewer than 2 simulations or draws, or non-finite
            values (naming the argument).

    Examples:
        >>> result = tarp(jax.random.key(0), draws, truths)  # doctest: +SKIP
        >>> result.ks_pvalue > 0.01  # doctest: +SKIP
    """
    check_key(key)
    num_alphas = check_int(num_alphas, "num_alphas", 2)
    draws, truths = jnp.asarray(draws), jnp.asarray(truths)
    if draws.ndim != 3 or truths.ndim != 2 or draws.shape[::2] != truths.shape:
        raise ValueError(f"draws and truths: expected shapes (N, S, D) and (N, D), got "
                         f"{draws.shape} and {truths.shape}.")
    if truths.shape[0] < 2 or draws.shape[1] < 2:
        raise ValueError(f"tarp needs at least 2 simulations and 2 draws each, got "
                         f"{truths.shape[0]} and {draws.shape[1]}.")
    arrays = {"draws": draws, "truths": truths}
    if references is not None:
        arrays["references"] = references = jnp.asarray(references)
        if references.shape != truths.shape:
            raise ValueError(f"references: expected the truths' shape {truths.shape}, got "
                             f"{references.shape}.")
    for name, value in arrays.items():
        if not bool(jnp.all(jnp.isfinite(value))):
            raise ValueError(f"{name}: holds NaN or Inf values.")
    loc = jnp.mean(truths, axis=0)
    scale = jnp.std(truths, axis=0)
    scale = jnp.where(scale > 0, scale, 1.0)
    z_truths = (truths - loc) / scale
    if references is None:
        low, high = jnp.min(z_truths, axis=0), jnp.max(z_truths, axis=0)
        z_references = jax.random.uniform(key, truths.shape, minval=low, maxval=high)
    else:
        z_references = (references - loc) / scale
    coverage = np.asarray(_coverage((draws - loc) / scale, z_truths, z_references))
    alpha = np.linspace(0.0, 1.0, num_alphas)
    # P(f < alpha), and P(f <= 1) = 1 at the top level (a truth farther from the reference than
    # every draw has f = 1).
    below = np.where(alpha[:, None] < 1.0, coverage[None, :] < alpha[:, None], True)
    ecp = np.mean(below, axis=1)
    upper = alpha >= 0.5
    atc = float(np.trapezoid(ecp[upper] - alpha[upper], alpha[upper]))
    ks_pvalue = float(stats.kstest(coverage, "uniform").pvalue)
    return TARPResult(alpha=alpha, ecp=ecp, coverage=coverage, atc=atc, ks_pvalue=ks_pvalue)
