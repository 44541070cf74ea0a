"""Simulation-based calibration (SBC) of an amortized posterior, vectorized over data sets.

For data sets simulated from the model's prior predictive, the rank of the true latent among
``L`` posterior draws is uniform on ``{0, ..., L}`` for every coordinate when the posterior is
calibrated (Talts et al., 2018). An amortized guide makes this cheap: one compiled call simulates a
chunk of data sets, computes their posteriors and ranks, so thousands of data sets take seconds.

Uniformity is judged by the ECDF of the fractional ranks ``u = (r + 1) / (L + 1)`` against a
*simultaneous* confidence band (Säilynoja, Bürkner and Vehtari, 2022): under uniformity the count
of ranks at or below each evaluation point is binomial; the band's pointwise level is adjusted by
simulation so that a uniform sample stays inside it everywhere with the requested probability.
The same simulated null distribution of the smallest pointwise tail probability gives the
p-value of a uniformity test per coordinate. Coordinates are combined with Bonferroni.

Expected coverage curves report, for each credible level, the fraction of data sets whose true
value lies in the central interval of each marginal, and (jointly over all coordinates) in the
highest-density region of the guide, judged by the rank of ``log q(theta_true)`` among the draws'
log densities (as in the expected-coverage diagnostics of sbi and BayesFlow).

References:
    Talts, S., Betancourt, M., Simpson, D., Vehtari, A. and Gelman, A. (2018). Validating Bayesian
    inference algorithms with simulation-based calibration. arXiv:1804.06788.
    Säilynoja, T., Bürkner, P.-C. and Vehtari, A. (2022). Graphical test for discrete uniformity
    and its applications in goodness-of-fit evaluation and multiple sample comparison.
    *Statistics and Computing* 32, 32.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions.transforms import AffineTransform, IndependentTransform
from scipy import stats

from amortized_ppl._checks import check_int, check_key, check_open_unit
from amortized_ppl._progress import resolve_progress
from amortized_ppl.sharding import check_divides, constrain_batch, resolve_mesh
from amortized_ppl.simulate import SimulatedBatch, check_num_obs

__all__ = [
    "ECDFBand",
    "SBCResult",
    "coverage_curves",
    "ecdf_band",
    "ecdf_uniformity_pvalue",
    "perturb_posterior",
    "sbc",
    "sbc_ranks",
    "sbc_summary",
]

DEFAULT_LEVELS = np.round(np.linspace(0.05, 0.95, 19), 2)
MAX_EVAL_POINTS = 100

MIN_DATASETS = 50
"""The fewest simulated data sets an SBC uniformity test is run on."""


class ECDFBand(NamedTuple):
    """A simultaneous confidence band for the ECDF of ``num_datasets`` uniform fractional ranks.

    Attributes:
        z: evaluation points in (0, 1), shape ``(K,)``.
        lower, upper: the band for the ECDF at ``z``, shape ``(K,)``.
        level: the simultaneous coverage of the band (e.g. 0.99).
        null_statistics: sorted smallest pointwise two-sided tail probabilities of simulated
            uniform rank samples, shape ``(M,)``; the null distribution of the test statistic.
        num_datasets, num_draws: the sizes the band is for.
    """

    z: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    level: float
    null_statistics: np.ndarray
    num_datasets: int
    num_draws: int


class SBCResult(NamedTuple):
    """Ranks, uniformity tests and coverage of a simulation-based calibration run.

    Attributes:
        ranks: rank of the true value among the draws, ``(B, D)`` ints in ``{0, ..., L}``.
        hpd_ranks: number of draws with a higher guide density than the true value, ``(B,)``.
        num_draws: ``L``, the posterior draws per data set.
        names: a label per coordinate (``D``).
        band: the :class:`ECDFBand` used by the tests and plots.
        p_values: uniformity p-value per coordinate, ``(D,)``.
        joint_p_value: uniformity p-value of the HPD ranks (all coordinates jointly).
        p_value: Bonferroni combination over the ``D + 1`` tests.
        levels: credible levels, ``(M,)``.
        coverage: marginal central-interval coverage, ``(M, D)``.
        joint_coverage: HPD-region coverage, ``(M,)``.
        truth: the true (unconstrained) latents, ``(B, D)``.
        posterior_mean, posterior_sd: the draws' mean and SD per data set, ``(B, D)``.
        seconds: wall time of the simulation and ranking.
    """

    ranks: np.ndarray
    hpd_ranks: np.ndarray
    num_draws: int
    names: tuple[str, ...]
    band: ECDFBand
    p_values: np.ndarray
    joint_p_value: float
    p_value: float
    levels: np.ndarray
    coverage: np.ndarray
    joint_coverage: np.ndarray
    truth: np.ndarray
    posterior_mean: np.ndarray
    posterior_sd: np.ndarray
    seconds: float

    def rejects(self, alpha: float = 0.01) -> bool:
        """Whether the combined test rejects calibration at level ``alpha``."""
        return bool(self.p_value < alpha)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no per-data-set arrays)."""
        return {
            "num_datasets": int(self.ranks.shape[0]),
            "num_draws": int(self.num_draws),
            "p_value": float(self.p_value),
            "joint_p_value": float(self.joint_p_value),
            "p_values": {n: float(p) for n, p in zip(self.names, self.p_values)},
            "rejects_at_1pct": self.rejects(0.01),
            "levels": [float(v) for v in self.levels],
            "coverage_mean_over_dims": [float(v) for v in self.coverage.mean(axis=1)],
            "joint_coverage": [float(v) for v in self.joint_coverage],
            "seconds": float(self.seconds),
        }


# ------------------------------------------------------------------------------------- ranks
def _dataset_ranks(key, posterior, truth, num_draws: int):
    """Ranks of one data set's truth ``(D,)`` among ``num_draws`` draws of its posterior."""
    draws = posterior.sample(key, (num_draws,))  # (L, D)
    ranks = jnp.sum(draws < truth[None], axis=0)
    # Density ranks: how many draws the guide finds more probable than the truth.
    hpd_ranks = jnp.sum(posterior.log_prob(draws) > posterior.log_prob(truth))
    return ranks, hpd_ranks, jnp.mean(draws, 0), jnp.std(draws, 0, ddof=1)


def _chunk_ranks(key, start, chunk_size: int, simulate, posterior_fn, num_draws: int,
                 mesh=None):
    """Ranks of data sets ``start, ..., start + chunk_size - 1``.

    Data set ``i`` is simulated and its posterior drawn from ``fold_in(key, i)`` alone, so the
    ranks do not depend on how the data sets are split into chunks. ``posterior_fn(key,
    arguments, mask)`` gives one data set's posterior.
    """

    def one(k):
        sim_key, posterior_key, draw_key = jax.random.split(k, 3)
        batch = simulate(sim_key, 1)
        batch = jax.tree.map(lambda v: v[0] if eqx.is_array(v) else v, batch)
        posterior = posterior_fn(posterior_key, batch.arguments, batch.mask)
        ranks, hpd, mean, sd = _dataset_ranks(draw_key, posterior, batch.latents, num_draws)
        return ranks, hpd, batch.latents, mean, sd

    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(chunk_size))
    return eqx.filter_vmap(one)(constrain_batch(keys, mesh))


def _collect(key, one_chunk, num_datasets: int, chunk_size: int, progress: bool):
    """Run ``one_chunk(key, start)`` over enough chunks and stack the outputs, cut to size."""
    starts = range(0, num_datasets, chunk_size)
    if resolve_progress(progress):
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="SBC", unit="chunk")
    outputs = [jax.device_get(one_chunk(key, jnp.asarray(start))) for start in starts]
    names = ("ranks", "hpd_ranks", "truth", "mean", "sd")
    return {
        name: np.concatenate([out[j] for out in outputs])[:num_datasets]
        for j, name in enumerate(names)
    }


def _check_sizes(num_datasets, num_draws, chunk_size) -> tuple[int, int, int]:
    # Checked before any simulation (the uniformity test needs 50 data sets at least).
    num_datasets = check_int(num_datasets, "num_datasets", MIN_DATASETS)
    num_draws = check_int(num_draws, "num_draws", 10)
    chunk_size = check_int(chunk_size, "chunk_size")
    return num_datasets, num_draws, min(chunk_size, num_datasets)


def sbc_ranks(
    key: jax.Array,
    simulate: Callable[[jax.Array, int], SimulatedBatch],
    posterior_fn: Callable[[jax.Array, dict[str, Any], jax.Array], dist.Distribution],
    *,
    num_datasets: int = 1000,
    num_draws: int = 100,
    chunk_size: int = 250,
    progress: bool | None = None,
    mesh=None,
) -> dict[str, np.ndarray]:
    """SBC ranks of simulated data sets, a compiled chunk of data sets at a time.

    Args:
        key: PRNG key.
        simulate: ``simulate(key, batch_size) -> SimulatedBatch``, e.g.
            ``problem.simulator(design_fn, num_obs)``.
        posterior_fn: ``posterior_fn(key, arguments, mask)``: the posterior of one data set (its
            bound arguments and ``(N,)`` mask) over the flat unconstrained latents, a NumPyro
            distribution with event shape ``(D,)``, e.g.
            ``lambda k, a, m: engine.posterior(problem, a, m, k)``.
        num_datasets: ``B``, data sets in all (rounded up to whole chunks, then cut).
            Data set ``i`` depends on ``key`` and ``i`` alone: the ranks do not depend on
            ``chunk_size``.
        num_draws: ``L``, posterior draws per data set.
        chunk_size: data sets per compiled call (bounds memory).
        progress: show a tqdm bar over chunks (default: in a terminal or notebook).
        mesh: split each chunk's data sets over a device mesh (a device count or a
            :class:`jax.sharding.Mesh`; ``chunk_size`` must divide evenly); default one device.
            The ranks do not depend on it.

    Returns:
        ``{"ranks": (B, D), "hpd_ranks": (B,), "truth": (B, D), "mean": (B, D), "sd": (B, D)}``
        as NumPy arrays.
    """
    check_key(key)
    num_datasets, num_draws, chunk_size = _check_sizes(num_datasets, num_draws, chunk_size)
    mesh = resolve_mesh(mesh)
    check_divides(chunk_size, mesh, "chunk_size")

    @eqx.filter_jit
    def one_chunk(key, start):
        return _chunk_ranks(key, start, chunk_size, simulate, posterior_fn, num_draws, mesh)

    return _collect(key, one_chunk, num_datasets, chunk_size, progress)


@eqx.filter_jit
def _engine_chunk(key, start, problem, engine, design_fn, num_obs, chunk_size, num_draws,
                  transform, mesh):
    # Module level, with the problem's structure, the engine's statics and the settings static:
    # repeated `sbc` calls on one problem reuse the compiled program.
    def posterior_fn(k, arguments, mask):
        posterior = engine.posterior(problem, arguments, mask, k)
        return posterior if transform is None else transform(posterior)

    simulate = problem.simulator(design_fn, num_obs)
    return _chunk_ranks(key, start, chunk_size, simulate, posterior_fn, num_draws, mesh)


MOMENT_DRAWS = 1024
"""Draws behind :func:`perturb_posterior`'s moments where the posterior has no closed form."""


def perturb_posterior(
    posterior: dist.Distribution, *, sd_factor: float = 1.0, shift_sd: float = 0.0
) -> dist.Distribution:
    """A deliberately miscalibrated copy of a posterior over a vector (event shape ``(D,)``).

    Draws become ``mean + sd_factor * (draw - mean) + shift_sd * sd`` per coordinate: SDs are
    scaled by ``sd_factor`` and the mean moves by ``shift_sd`` marginal SDs. Used to check that
    calibration tests reject a broken guide. Posteriors without closed-form moments (flows,
    mixtures) use estimates from :data:`MOMENT_DRAWS` draws under a fixed key, so the copy is a
    deterministic function of the posterior.
    """
    try:
        mean, sd = posterior.mean, jnp.sqrt(posterior.variance)
    except NotImplementedError:
        draws = posterior.sample(jax.random.key(0), (MOMENT_DRAWS,))
        mean, sd = jnp.mean(draws, axis=0), jnp.std(draws, axis=0)
    shift = (1.0 - sd_factor) * mean + shift_sd * sd
    scale = jnp.full_like(mean, sd_factor)
    transform = IndependentTransform(AffineTransform(shift, scale), 1)
    return dist.TransformedDistribution(posterior, transform)


# --------------------------------------------------------------------------- ECDF test & band

def _eval_ranks(num_draws: int) -> np.ndarray:
    """Rank values ``k`` whose ECDF ``P(r <= k)`` is checked (all of them, or an even grid)."""
    ks = np.arange(num_draws)  # P(r <= L) = 1 always, so it is left out
    if ks.size > MAX_EVAL_POINTS:
        ks = np.unique(np.round(np.linspace(0, num_draws - 1, MAX_EVAL_POINTS)).astype(int))
    return ks


def _min_tail_probability(counts: np.ndarray, num_datasets: int, z: np.ndarray) -> np.ndarray:
    """Smallest two-sided binomial tail probability over evaluation points; ``counts (..., K)``."""
    below = stats.binom.cdf(counts, num_datasets, z)
    above = stats.binom.sf(counts - 1, num_datasets, z)
    return np.min(np.minimum(1.0, 2.0 * np.minimum(below, above)), axis=-1)


def _counts_at(ranks: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """Number of ranks ``<= k`` for each ``k``; ranks ``(..., B)`` -> ``(..., K)``."""
    ordered = np.sort(ranks, axis=-1)
    flat = ordered.reshape(-1, ordered.shape[-1])
    counts = np.stack([np.searchsorted(row, ks, side="right") for row in flat])
    return counts.reshape(ranks.shape[:-1] + (ks.size,))


def ecdf_band(
    key: jax.Array,
    num_datasets: int,
    num_draws: int,
    *,
    level: float = 0.99,
    num_simulations: int = 2000,
) -> ECDFBand:
    """Simultaneous ECDF band for ``num_datasets`` ranks uniform on ``{0, ..., num_draws}``.

    The pointwise level is adjusted by simulating ``num_simulations`` uniform rank samples
    (Säilynoja et al., 2022, the simulation method), so the whole ECDF of a calibrated sample
    lies inside the band with probability ``level``.
    """
    check_key(key)
    num_datasets = check_int(num_datasets, "num_datasets", 2)
    num_draws = check_int(num_draws, "num_draws", 1)
    num_simulations = check_int(num_simulations, "num_simulations", 100)
    level = check_open_unit(level, "level")
    ks = _eval_ranks(num_draws)
    z = (ks + 1.0) / (num_draws + 1.0)
    null_ranks = np.asarray(
        jax.random.randint(key, (num_simulations, num_datasets), 0, num_draws + 1)
    )
    null = np.sort(_min_tail_probability(_counts_at(null_ranks, ks), num_datasets, z))
    gamma = float(np.quantile(null, 1.0 - float(level)))
    lower = stats.binom.ppf(gamma / 2.0, num_datasets, z) / num_datasets
    upper = stats.binom.ppf(1.0 - gamma / 2.0, num_datasets, z) / num_datasets
    return ECDFBand(z, lower, upper, float(level), null, num_datasets, num_draws)


def ecdf_uniformity_pvalue(ranks, band: ECDFBand) -> np.ndarray:
    """P-value of uniformity per column of ``ranks (B, ...)``, from the band's null statistics.

    Raises:
        ValueError: if the ranks do not match the band's sizes or lie outside ``{0, ..., L}``.
    """
    ranks = np.asarray(ranks)
    if ranks.shape[0] != band.num_datasets:
        raise ValueError(
            f"ranks: the band is for {band.num_datasets} data sets, got {ranks.shape[0]}."
        )
    if ranks.min() < 0 or ranks.max() > band.num_draws:
        raise ValueError(
            f"ranks: expected values in 0..{band.num_draws} (the band's num_draws), got "
            f"{ranks.min()}..{ranks.max()}."
        )
    ks = _eval_ranks(band.num_draws)
    columns = np.moveaxis(ranks, 0, -1)  # (..., B)
    observed = _min_tail_probability(_counts_at(columns, ks), band.num_datasets, band.z)
    num_as_extreme = np.searchsorted(band.null_statistics, observed, side="right")
    return (1.0 + num_as_extreme) / (1.0 + band.null_statistics.size)


def coverage_curves(
    ranks, num_draws: int, levels=DEFAULT_LEVELS, *, central: bool = True, key=None
):
    """Empirical coverage of credible regions at each level, from SBC ranks.

    With ``key`` the fractional position of each rank is randomized within its cell,
    ``u = (r + U) / (L + 1)`` with ``U ~ Uniform(0, 1)`` (a randomized PIT), which is exactly
    uniform under calibration, so the expected coverage is exactly the level. Without it the
    mid-rank ``(r + 1/2) / (L + 1)`` is used, whose coverage under calibration differs from the
    level by up to ``1 / (L + 1)`` (e.g. 94.1% at 95% with L = 100).

    Args:
        ranks: ``(B, ...)`` ranks in ``{0, ..., num_draws}``.
        num_draws: ``L``.
        levels: credible levels ``(M,)`` in (0, 1).
        central: ranks of the true value among draws (central intervals) when True; HPD ranks
            (draws with a higher density) when False.
        key: optional PRNG key for the randomized positions.

    Returns:
        ``(M, ...)`` fractions of data sets whose true value lies inside the region.
    """
    levels = np.asarray(levels, float)
    if levels.ndim != 1 or np.any((levels <= 0) | (levels >= 1)):
        raise ValueError(f"levels: expected a 1-D array of values in (0, 1), got {levels!r}.")
    ranks = np.asarray(ranks, float)
    offset = 0.5 if key is None else np.asarray(jax.random.uniform(key, ranks.shape))
    u = (ranks + offset) / (num_draws + 1.0)
    levels = levels.reshape((-1,) + (1,) * u.ndim)
    inside = np.abs(u - 0.5) <= levels / 2.0 if central else u <= levels
    return inside.mean(axis=1)


def sbc_summary(
    key: jax.Array,
    ranks,
    hpd_ranks,
    num_draws: int,
    *,
    names=None,
    levels=DEFAULT_LEVELS,
    band_level: float = 0.99,
    num_simulations: int = 2000,
    truth=None,
    posterior_mean=None,
    posterior_sd=None,
    seconds: float = 0.0,
) -> SBCResult:
    """Tests and coverage curves from SBC ranks ``(B, D)`` and HPD ranks ``(B,)``."""
    ranks = np.asarray(ranks)
    hpd_ranks = np.asarray(hpd_ranks)
    if ranks.ndim != 2 or hpd_ranks.shape != ranks.shape[:1]:
        raise ValueError(
            f"ranks: expected (B, D) with hpd_ranks (B,), got {ranks.shape} and {hpd_ranks.shape}."
        )
    num_datasets, dim = ranks.shape
    if num_datasets < MIN_DATASETS:
        raise ValueError(
            f"num_datasets: SBC needs at least {MIN_DATASETS} data sets for a meaningful "
            f"uniformity test, got {num_datasets}."
        )
    names = tuple(names) if names is not None else tuple(f"theta[{i}]" for i in range(dim))
    if len(names) != dim:
        raise ValueError(f"names: expected {dim} labels, got {len(names)}.")
    band_key, marginal_key, joint_key = jax.random.split(key, 3)
    band = ecdf_band(
        band_key, num_datasets, num_draws, level=band_level, num_simulations=num_simulations
    )
    p_values = ecdf_uniformity_pvalue(ranks, band)
    joint_p = float(ecdf_uniformity_pvalue(hpd_ranks[:, None], band)[0])
    combined = min(1.0, (dim + 1) * float(min(p_values.min(), joint_p)))
    nan = np.full(ranks.shape, np.nan)
    return SBCResult(
        ranks=ranks,
        hpd_ranks=hpd_ranks,
        num_draws=int(num_draws),
        names=names,
        band=band,
        p_values=p_values,
        joint_p_value=joint_p,
        p_value=combined,
        levels=np.asarray(levels, float),
        coverage=coverage_curves(ranks, num_draws, levels, key=marginal_key),
        joint_coverage=coverage_curves(hpd_ranks, num_draws, levels, central=False, key=joint_key),
        truth=nan if truth is None else np.asarray(truth),
        posterior_mean=nan if posterior_mean is None else np.asarray(posterior_mean),
        posterior_sd=nan if posterior_sd is None else np.asarray(posterior_sd),
        seconds=float(seconds),
    )


def sbc(
    key: jax.Array,
    guide,
    params,
    *,
    design_fn: Callable | None = None,
    num_obs=None,
    num_datasets: int = 1000,
    num_draws: int = 100,
    chunk_size: int = 250,
    levels=DEFAULT_LEVELS,
    band_level: float = 0.99,
    progress: bool | None = None,
    posterior_transform: Callable | None = None,
    mesh=None,
) -> SBCResult:
    """Simulation-based calibration of a trained amortized guide.

    Simulates ``num_datasets`` data sets from the model's prior predictive (covariates from
    ``design_fn``, sizes uniform in ``num_obs``), draws ``num_draws`` posterior samples each from
    the guide, and tests the ranks of the true latents for uniformity. Ranks are taken in the
    guide's unconstrained coordinates; they equal the constrained ones for elementwise supports.

    Args:
        key: PRNG key.
        guide: a set-up amortized guide (its problem and engine are read).
        params: its trained parameters.
        design_fn: ``design_fn(key, num_obs) -> (args, kwargs)`` (default: the problem's own).
        num_obs: data-set size or inclusive ``(low, high)`` range, within the guide's
            ``max_obs`` (default: the problem's range).
        num_datasets, num_draws, chunk_size, progress: see :func:`sbc_ranks`.
        levels: credible levels of the coverage curves.
        band_level: simultaneous level of the ECDF band.
        posterior_transform: optional ``f(distribution) -> distribution`` applied to each data
            set's posterior before drawing (e.g. to check that a deliberately broken posterior fails).
            It is part of the compiled program's key: pass the same function object to reuse it.
        mesh: split each chunk's data sets over a device mesh (see :func:`sbc_ranks`).

    Returns:
        An :class:`SBCResult`.

    Examples:
        >>> result = sbc(jax.random.key(0), guide, params, design_fn=design_fn,
        ...              num_obs=(10, 200))  # doctest: +SKIP
        >>> result.p_value, result.rejects(0.01)  # doctest: +SKIP
    """
    check_key(key)
    problem, engine = guide.problem, guide.engine(params)
    low, high = problem.num_obs if num_obs is None else check_num_obs(num_obs)
    if guide.max_obs is not None and high > guide.max_obs:
        raise ValueError(
            f"num_obs: the guide takes at most {guide.max_obs} observations, got up to {high}."
        )
    rank_key, band_key = jax.random.split(key)
    num_datasets, num_draws, chunk_size = _check_sizes(num_datasets, num_draws, chunk_size)
    mesh = resolve_mesh(mesh)
    check_divides(chunk_size, mesh, "chunk_size")

    def one_chunk(chunk_key, start):
        return _engine_chunk(chunk_key, start, problem, engine, design_fn, (low, high),
                             chunk_size, num_draws, posterior_transform, mesh)

    start = time.perf_counter()
    out = _collect(rank_key, one_chunk, num_datasets, chunk_size, progress)
    seconds = time.perf_counter() - start
    return sbc_summary(
        band_key,
        out["ranks"],
        out["hpd_ranks"],
        num_draws,
        names=problem.sites.flat_names,
        levels=levels,
        band_level=band_level,
        truth=out["truth"],
        posterior_mean=out["mean"],
        posterior_sd=out["sd"],
        seconds=seconds,
    )
