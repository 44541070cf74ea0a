"""Out-of-distribution flags: data sets whose encoder summary lies far from the training simulations.

An amortized guide is trained on the prior predictive; a data set unlike any simulation (covariates
on another scale, gross outliers) gets an extrapolated posterior that may be wrong in ways the
importance weights cannot always see (a guide can miss a mode and still look fine). The detector
embeds simulations from the training distribution with the guide's own encoder, and adds a few
statistics of the standardized tokens the encoder reads (per feature: mean, log mean square,
log largest absolute value and log kurtosis), because the encoder's normalization layers can
squash a handful of gross outliers in an otherwise ordinary data set (contamination shows in the
kurtosis even when the outliers' scale is modest). Two distances are used: the Mahalanobis
distance, which sees joint shifts, and the largest per-feature z-score, which sees one extreme
feature that a distance over dozens of features would dilute; their p-values are combined by
Bonferroni. It fits the features' mean
and covariance on one half, and uses the Mahalanobis distances of the other half as the null
distribution: the p-value of a new data set is the fraction of held-out simulations at least as
far (a conformal p-value, valid whatever the shape of the summary distribution), so about
``alpha`` of in-distribution data sets are flagged at level ``alpha``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl._checks import check_int, check_key, check_open_unit
from amortized_ppl.simulate import check_num_obs

__all__ = ["OODDetector", "fit_ood_detector", "ood_features", "ood_pvalues"]


class OODDetector(NamedTuple):
    """Feature-space statistics of training simulations.

    Attributes:
        mean: mean feature vector (see :func:`ood_features`), ``(F,)``.
        whitening: ``W`` with ``W^T W = covariance^{-1}``, ``(F, F)``.
        scale: per-feature SD, ``(F,)``.
        null_log_obs: log data-set size of each held-out simulation, ``(M,)``.
        null_distances: their Mahalanobis distances, ``(M,)``.
        null_max_z: their largest absolute per-feature z-scores, ``(M,)``.
        num_obs: the ``(low, high)`` range of data-set sizes simulated.
        level: default flagging level of :meth:`flag`.
        num_neighbors: held-out simulations of the nearest sizes that each p-value is taken
            against (small data sets scatter much more than large ones, so a data set is
            compared with simulations of about its own size).
    """

    mean: np.ndarray
    whitening: np.ndarray
    scale: np.ndarray
    null_log_obs: np.ndarray
    null_distances: np.ndarray
    null_max_z: np.ndarray
    num_obs: tuple[int, int]
    level: float = 0.01
    num_neighbors: int = 600

    def _checked(self, features) -> tuple[np.ndarray, np.ndarray]:
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or features.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"features: expected shape (B, {self.mean.shape[0]}), got {features.shape}."
            )
        # A non-finite feature (overflowing input) is as far as it gets.
        return features, np.all(np.isfinite(features), axis=1)

    def distances(self, features) -> np.ndarray:
        """Mahalanobis distances of features ``(B, F)`` (:func:`ood_features`) -> ``(B,)``."""
        features, finite = self._checked(features)
        centred = np.where(finite[:, None], features - self.mean, 0.0)
        distances = np.linalg.norm(centred @ self.whitening.T, axis=1)
        return np.where(finite, distances, np.inf)

    def max_z(self, features) -> np.ndarray:
        """Largest absolute per-feature z-score of features ``(B, F)`` -> ``(B,)``."""
        features, finite = self._checked(features)
        z = np.where(finite[:, None], (features - self.mean) / self.scale, 0.0)
        return np.where(finite, np.max(np.abs(z), axis=1), np.inf)

    def p_values(self, features, num_obs) -> np.ndarray:
        """Conformal p-values ``(B,)`` of data sets of sizes ``num_obs (B,)``.

        The fraction of held-out simulations of about the same size at least as far, by the
        Mahalanobis distance and by the largest z-score (Bonferroni over the two).
        """
        distances, max_z = self.distances(features), self.max_z(features)
        log_obs = np.log(np.broadcast_to(np.asarray(num_obs, np.float64), distances.shape))
        p_values = np.empty(distances.shape)
        k = min(self.num_neighbors, self.null_log_obs.size)
        for b, value in enumerate(log_obs):
            near = np.argsort(np.abs(self.null_log_obs - value), kind="stable")[:k]
            p_joint = _conformal(self.null_distances[near], distances[b])
            p_max = _conformal(self.null_max_z[near], max_z[b])
            p_values[b] = min(1.0, 2.0 * min(p_joint, p_max))
        return p_values

    @property
    def smallest_p_value(self) -> float:
        """The smallest p-value this detector can give: ``2 / (K + 1)`` for ``K`` neighbours."""
        return 2.0 / (1.0 + min(self.num_neighbors, self.null_log_obs.size))

    def flag(self, features, num_obs, level: float | None = None) -> np.ndarray:
        """True for data sets out of distribution at ``level`` (default ``self.level``).

        Raises:
            ValueError: no p-value of this detector can fall below ``level``.
        """
        level = self.level if level is None else check_open_unit(level, "level")
        check_reachable(level, self.smallest_p_value)
        return self.p_values(features, num_obs) < level


def check_reachable(level: float, smallest_p_value: float) -> None:
    """Refuse a level that no p-value can fall below: such a detector would never flag."""
    if not smallest_p_value < level:
        raise ValueError(
            f"level={level:g} cannot be reached: the smallest p-value of this detector is "
            f"{smallest_p_value:.4g} (2 / (K + 1) for K held-out simulations of about each data "
            f"set's size), so it would never flag anything. Fit it with more simulations "
            f"(num_simulations >= {simulations_for_level(level)}) or use a larger level."
        )


def simulations_for_level(level: float) -> int:
    """The fewest ``num_simulations`` with which :func:`fit_ood_detector` can flag at ``level``."""
    # Half the simulations form the null; each p-value is taken against K = min(max(200,
    # null // 3), null) of them, and p < level is reachable once K >= floor(2 / level).
    k = int(np.floor(2.0 / level))
    return 2 * (k if k <= 200 else 3 * k)


def _conformal(null: np.ndarray, score: float) -> float:
    return (1.0 + np.sum(null >= score)) / (1.0 + null.size)


@eqx.filter_jit
def ood_features(problem, engine, arguments, mask) -> jax.Array:
    """Features of each data set: encoder summary and standardized-token statistics.

    Args:
        problem: the problem.
        engine: a one-shot engine with its parameters (it needs a whole-data-set summary).
        arguments: bound arguments with a leading data-set axis ``B`` (``guide.prepare``).
        mask: ``(B, N)`` bool.

    Returns:
        ``(B, summary_size + 1 + 4 * token_dim)``.
    """
    if not hasattr(engine, "summarize"):
        raise TypeError(
            f"The out-of-distribution check reads an encoder's summary of the whole data set; a "
            f"{type(engine).__name__} has none (an iterative engine reads mini-batches)."
        )
    mask = jnp.asarray(mask)
    tokens = eqx.filter_vmap(problem.tokens, in_axes=(eqx.if_array(0),))(arguments)
    z = problem.standardized_tokens(tokens, mask)
    weight = mask[..., None].astype(z.dtype)
    count = jnp.maximum(jnp.sum(weight, axis=1), 1.0)
    mean = jnp.sum(z, axis=1) / count
    log_square = jnp.log(jnp.sum(z**2, axis=1) / count + 1e-6)
    log_max = jnp.log(jnp.max(jnp.abs(z), axis=1) + 1e-6)
    centred = jnp.where(mask[..., None], z - mean[:, None], 0.0)
    variance = jnp.sum(centred**2, axis=1) / count
    fourth = jnp.sum(centred**4, axis=1) / count
    log_kurtosis = jnp.log(fourth / (variance**2 + 1e-12) + 1e-6)
    summaries = eqx.filter_vmap(lambda a, m: engine.summarize(problem, a, m),
                                in_axes=(eqx.if_array(0), 0))(arguments, mask)
    return jnp.concatenate([summaries, mean, log_square, log_max, log_kurtosis], axis=-1)


@eqx.filter_jit
def _simulated_features(key, problem, engine, design_fn, num_obs, num_simulations):
    # Module level, the engine's arrays as arguments: refitting (other keys, retrained
    # parameters) reuses the compiled program.
    batch = problem.simulator(design_fn, num_obs)(key, num_simulations)
    return ood_features(problem, engine, batch.arguments, batch.mask), batch.num_obs


def fit_ood_detector(
    key: jax.Array,
    guide,
    params,
    *,
    design_fn: Callable | None = None,
    num_obs=None,
    num_simulations: int = 4000,
    level: float = 0.01,
    ridge: float = 1e-6,
) -> OODDetector:
    """Fit an :class:`OODDetector` on ``num_simulations`` prior-predictive data sets.

    Args:
        key: PRNG key.
        guide, params: a trained amortized guide and its parameters.
        design_fn, num_obs: the training simulator's design function and size range (default:
            the problem's own).
        num_simulations: simulations in all; half fit the moments, half form the null, of
            which a third (the nearest in size, at least 200) judges each data set.
        level: default flagging level (``p < level``); against ``K`` neighbours the smallest
            possible p-value is ``2 / (K + 1)``, so keep ``K >= 20 / level``.
        ridge: added to the covariance diagonal (relative to its mean variance).

    Returns:
        The detector; ``guide.with_ood_detector(detector)`` gives a guide whose
        ``sample_posterior`` warns about out-of-distribution data sets.
    """
    check_key(key)
    num_simulations = check_int(num_simulations, "num_simulations", 200)
    level = check_open_unit(level, "level")
    problem, engine = guide.problem, guide.engine(params)
    low, high = problem.num_obs if num_obs is None else check_num_obs(num_obs)
    features, num_obs_sim = _simulated_features(key, problem, engine, design_fn, (low, high),
                                                num_simulations)
    features = np.asarray(features, np.float64)
    half = features.shape[0] // 2
    fit, held_out = features[:half], features[half:]
    cov = np.cov(fit, rowvar=False)
    cov += ridge * np.mean(np.diag(cov)) * np.eye(cov.shape[0])
    # Whitening by the inverse Cholesky factor (host NumPy; small F x F matrix).
    detector = OODDetector(
        mean=fit.mean(axis=0),
        whitening=np.linalg.inv(np.linalg.cholesky(cov)),
        scale=np.sqrt(np.diag(cov)),
        null_log_obs=np.log(np.asarray(num_obs_sim[half:], np.float64)),
        null_distances=np.empty(0),
        null_max_z=np.empty(0),
        num_obs=(low, high),
        level=float(level),
        num_neighbors=max(200, (features.shape[0] - half) // 3),
    )
    check_reachable(detector.level, detector.smallest_p_value)
    return detector._replace(
        null_distances=detector.distances(held_out), null_max_z=detector.max_z(held_out)
    )


def ood_pvalues(detector: OODDetector, guide, params, *args, data_mask=None, **kwargs):
    """Conformal OOD p-values ``(B,)`` of data sets (one, or a batch with a leading axis)."""
    arguments, mask, _ = guide.prepare(*args, data_mask=data_mask, **kwargs)
    features = ood_features(guide.problem, guide.engine(params), arguments, mask)
    return detector.p_values(features, np.asarray(mask).sum(axis=1))
