"""The ambiguity study: plain next-token Transformer vs Monte Carlo predictors vs the exact oracle.

Works on any finite family of categorical HMMs given as an object with the attributes of
``amortized_ppl.models.metahmm.MetaHMM``: ``log_init (S,)``, ``log_trans (E, S, S)``, ``log_emit (E, S, V)``,
``factors (E, F)``, ``factor_sizes``, ``train_envs``, ``ood_envs``.

For each evaluation sequence and position ``t`` it records the oracle's ambiguity (entropy of
``p(env | x_<t)``), and each predictor's forward ``KL(oracle || predictor)`` and NLL. The oracle's
prior is uniform over the training environments for in-distribution sequences and over all
environments for held-out ones (the Bayes-optimal predictor for a learner that knows the whole
compositional family: a held-out environment has probability zero under the training prior, so
that oracle would be undefined on it).
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl.sequence.evaluate import (
    ambiguity_bins,
    backward_kl,
    by_ambiguity,
    environment_posterior_kl,
    forward_kl,
    token_nll,
)
from amortized_ppl.sequence.monte_carlo import (
    JointPosteriorTargets,
    MonteCarloPredictor,
    PosteriorDrawTargets,
    mixture_log_probs,
)
from amortized_ppl.sequence.oracle import environment_predictives, oracle_batch
from amortized_ppl.sequence.posterior_heads import mixed_radix_index

__all__ = [
    "env_of_factors",
    "evaluate_predictors",
    "exact_posterior_mc_log_probs",
    "factorized_floor_kl",
    "inverse_cdf_draws",
    "make_sample_fn",
    "monte_carlo_log_probs",
    "plain_log_probs",
    "posterior_kl_by_position",
    "summarize",
]


def env_of_factors(factor_sizes: Sequence[int], factors: jax.Array) -> jax.Array:
    """Environment ids ``(...)`` of factor values ``(..., F)`` (mixed radix, last factor fastest)."""
    return mixed_radix_index(factor_sizes, factors)


def inverse_cdf_draws(key: jax.Array, log_probs: jax.Array, num: int) -> jax.Array:
    """``num`` draws of a category from each row of ``log_probs`` ``(..., E)``: ``(num, ...)``.

    One uniform per draw against the row's cumulative probabilities (inverse CDF), rather than
    ``jax.random.categorical``'s Gumbel noise over every category: for 16 draws over 448
    environments at every row of a training batch, the whole batch ran 8x faster here
    (0.67 s -> 0.08 s on 2 CPU cores). Categories of probability 0 (``-inf``) are never drawn.
    """
    probs = jnp.exp(log_probs)
    cdf = jnp.cumsum(probs, axis=-1)
    u = jax.random.uniform(key, (num,) + log_probs.shape[:-1]) * cdf[..., -1]
    picks = jnp.minimum(jnp.sum(cdf[None] <= u[..., None], axis=-1), log_probs.shape[-1] - 1)
    # A cumulative sum that rounds flat across a zero-probability category could land a draw
    # on it; step back to the nearest category below with mass (there is always one).
    has_mass = jnp.broadcast_to(probs > 0, (num,) + probs.shape)
    last_with_mass = jax.lax.cummax(
        jnp.where(has_mass, jnp.arange(probs.shape[-1]), -1), axis=has_mass.ndim - 1)
    return jnp.take_along_axis(last_with_mass, picks[..., None], axis=-1)[..., 0]


def make_sample_fn(family, sample_sequences, split: str = "train",
                   exact_targets: str | None = None, num_target_draws: int = 16):
    """``(key, batch_size) -> (factors (B, F), symbols (B, T))`` on the training environments.

    ``sample_sequences(key, family, env_ids) -> (symbols, states)`` is the family's sampler
    (``amortized_ppl.models.metahmm.sample_sequences``). ``exact_targets`` adds a third output,
    the oracle's posterior given each prefix (the prior uniform over the sampled pool), as soft
    targets for :meth:`MonteCarloPredictor.loss` (the family's exact likelihood put to use):

    - ``"marginals"``: every factor's marginal, ``(B, T, sum K_f)`` (the factorized head);
    - ``"joint"``: :class:`~amortized_ppl.sequence.monte_carlo.JointPosteriorTargets`, the
      posterior over the pool's environments ``(B, T, E')`` with their factors ``(E', F)``
      (any head);
    - ``"draws"``: :class:`~amortized_ppl.sequence.monte_carlo.PosteriorDrawTargets`,
      ``num_target_draws`` environments drawn from that posterior at every row,
      ``(B, S, T, F)`` (any head, at the cost of ``S`` labels).
    """
    if split not in ("train", "ood"):
        raise ValueError(f"split: expected 'train' or 'ood', got {split!r}.")
    if exact_targets not in (None, "marginals", "joint", "draws"):
        raise ValueError(f"exact_targets: expected None, 'marginals', 'joint' or 'draws', got "
                         f"{exact_targets!r}.")
    if isinstance(num_target_draws, bool) or not isinstance(num_target_draws, int) or (
            num_target_draws < 1):
        raise ValueError(f"num_target_draws: expected an int >= 1, got {num_target_draws!r}.")
    pool = {"train": family.train_envs, "ood": family.ood_envs}[split]
    one_hots = [jax.nn.one_hot(family.factors[pool, f], k)
                for f, k in enumerate(family.factor_sizes)]
    table = jnp.concatenate(one_hots, axis=-1)  # (E', sum K_f)

    def sample_fn(key, batch_size):
        # Three keys, the third for the "draws" labels. With JAX's partitionable threefry the
        # first two equal split(key)'s, as before that mode existed. (fold_in(key, 1), tried
        # first, is the sequences' key under that scheme: the labels reused their noise.)
        e_key, s_key, d_key = jax.random.split(key, 3)
        envs = pool[jax.random.randint(e_key, (batch_size,), 0, pool.shape[0])]
        symbols, _ = sample_sequences(s_key, family, envs)
        if exact_targets is None:
            return family.factors[envs], symbols
        oracle = oracle_batch(family.log_init, family.log_trans[pool], family.log_emit[pool],
                              symbols, return_posterior=True)
        if exact_targets == "draws":
            picks = inverse_cdf_draws(d_key, oracle.log_posterior, num_target_draws)
            return family.factors[envs], symbols, PosteriorDrawTargets(
                jnp.moveaxis(family.factors[pool][picks], 0, 1))
        if exact_targets == "joint":
            return family.factors[envs], symbols, JointPosteriorTargets(
                oracle.log_posterior, family.factors[pool])
        return family.factors[envs], symbols, jnp.exp(oracle.log_posterior) @ table

    return sample_fn


@eqx.filter_jit
def plain_log_probs(model, symbols: jax.Array) -> jax.Array:
    """A next-token model's ``(B, T, V)`` log predictives for symbols ``(B, T)``."""
    return jax.vmap(model)(symbols)


# filter_jit: Python ints, strings and tuples (M, the decoder, the sizes) are static.
@eqx.filter_jit
def monte_carlo_log_probs(
    key: jax.Array,
    model: MonteCarloPredictor,
    log_init: jax.Array,
    log_trans: jax.Array,
    log_emit: jax.Array,
    symbols: jax.Array,
    *,
    num_samples: int,
    decoder: str,
    factor_sizes: tuple[int, ...],
    smoothing: float = 1e-3,
) -> jax.Array:
    """Monte Carlo predictives ``(B, T, V)`` for symbols ``(B, T)``.

    ``decoder="hmm"`` decodes each sampled factor combination with the known filter of its
    environment (``log_trans``/``log_emit`` hold every environment, indexed by
    :func:`env_of_factors`); ``"hmm_is"`` also weights the samples by importance (likelihood of
    the prefix over q); ``decoder="learned"`` uses the model's own decoder.
    """
    keys = jax.random.split(key, symbols.shape[0])
    to_env = partial(env_of_factors, factor_sizes)

    def one(args):
        k, seq = args
        if decoder in ("hmm", "hmm_is"):
            per_env = environment_predictives(log_init, log_trans, log_emit, seq)
            return model.predict(k, seq, num_samples, env_log_probs=per_env,
                                 env_of_factors=to_env, smoothing=smoothing,
                                 importance=decoder == "hmm_is")
        return model.predict(k, seq, num_samples, smoothing=smoothing)

    return jax.lax.map(one, (keys, symbols), batch_size=8)


@eqx.filter_jit
def exact_posterior_mc_log_probs(
    key: jax.Array,
    log_init: jax.Array,
    log_trans: jax.Array,
    log_emit: jax.Array,
    symbols: jax.Array,
    oracle_log_posterior: jax.Array,
    *,
    num_samples: int,
    smoothing: float = 1e-3,
) -> jax.Array:
    """The Monte Carlo predictor's ceiling: environments sampled from the exact posterior.

    ``log_trans``/``log_emit`` hold the oracle's E' environments and ``oracle_log_posterior``
    ``(B, T, E')`` its posterior; returns ``(B, T, V)``. The gap between this and the amortized
    version is the cost of an imperfect ``q``; the gap between this and the oracle is Monte Carlo
    error alone.
    """
    keys = jax.random.split(key, symbols.shape[0])

    def one(args):
        k, seq, log_post = args
        per_env = environment_predictives(log_init, log_trans, log_emit, seq)  # (E', T, V)
        envs = jax.random.categorical(k, log_post, shape=(num_samples,) + log_post.shape[:1])
        comp = per_env[envs, jnp.arange(seq.shape[0])[None, :]]
        return mixture_log_probs(comp, smoothing)

    return jax.lax.map(one, (keys, symbols, oracle_log_posterior), batch_size=8)


@eqx.filter_jit
def posterior_kl_by_position(
    model: MonteCarloPredictor,
    symbols: jax.Array,
    oracle_log_posterior: jax.Array,
    oracle_factors: jax.Array,
    factor_sizes: tuple[int, ...] | None = None,
    *,
    chunk_size: int = 4,
) -> jax.Array:
    """``KL(p(env | x_<t) || q(env | x_<t))`` for every sequence and position, ``(B, T)``.

    ``oracle_log_posterior`` ``(B, T, E')`` is over the oracle's E' environments whose factor
    values are ``oracle_factors`` ``(E', F)``; ``q`` is the model's posterior head, whatever it
    is. Sequences go ``chunk_size`` at a time (the autoregressive head's table of every
    combination is ``T x 2 prod K_f x width`` floats per sequence). ``factor_sizes`` is unused
    (the model's own), kept for callers that pass it.
    """
    del factor_sizes
    if oracle_log_posterior.shape[:2] != symbols.shape:
        raise ValueError(f"oracle_log_posterior: expected (B, T, E') with (B, T) = "
                         f"{symbols.shape}, got {oracle_log_posterior.shape}.")

    def one(args):
        seq, log_post = args
        q = model.posterior_log_prob_table(seq, oracle_factors)  # (T, E')
        return environment_posterior_kl(log_post, q)

    return jax.lax.map(one, (symbols, oracle_log_posterior), batch_size=chunk_size)


def factorized_floor_kl(
    oracle_log_posterior: jax.Array, oracle_factors: jax.Array, factor_sizes: Sequence[int]
) -> jax.Array:
    """The least KL any factorized ``q`` can reach: ``KL(p || prod_f p_f)``, ``(...)``.

    ``p`` is the exact posterior ``(..., E')`` over environments with factors
    ``oracle_factors`` ``(E', F)`` and ``p_f`` its marginals; the product of the marginals is the
    best factorized approximation in forward KL, and this KL (the total correlation of ``p``) is
    what a factorized head must lose, however well trained. An autoregressive head can reach 0.
    """
    log_p = jnp.asarray(oracle_log_posterior)
    p = jnp.exp(log_p)
    log_q = 0.0
    for f, size in enumerate(factor_sizes):
        one_hot = jax.nn.one_hot(oracle_factors[:, f], size, dtype=p.dtype)  # (E', K_f)
        marginal = p @ one_hot  # (..., K_f)
        # A gather, not a product with one_hot.T: a zero marginal's -inf times 0 would be NaN.
        log_q = log_q + jnp.take(jnp.log(marginal), oracle_factors[:, f], axis=-1)  # (..., E')
    return environment_posterior_kl(log_p, log_q)


def evaluate_predictors(
    key: jax.Array,
    family,
    symbols: jax.Array,
    split: str,
    *,
    plain=None,
    monte_carlo: MonteCarloPredictor | None = None,
    num_samples: Sequence[int] = (1, 5, 20),
    decoders: Sequence[str] = ("hmm", "hmm_is", "learned"),
    exact_posterior: bool = False,
    smoothing: float = 1e-3,
    label: str = "",
) -> dict:
    """Per-position KL to the oracle and NLL for every predictor, plus the oracle's ambiguity.

    Args:
        key: PRNG key for the Monte Carlo samples.
        family: the HMM family (see the module docstring).
        symbols: ``(B, T)`` evaluation sequences.
        split: ``"train"`` (oracle over the training environments) or ``"ood"`` (over all).
        plain: a next-token model, or None.
        monte_carlo: a :class:`MonteCarloPredictor`, or None.
        num_samples: the M values to evaluate.
        decoders: any of ``"hmm"`` (known filter), ``"hmm_is"`` (known filter, importance
            weighted) and ``"learned"``.
        exact_posterior: also evaluate the ceiling, environments sampled from the oracle's
            posterior (``"mc_exact_M<m>"``).
        smoothing: the Monte Carlo mixtures' uniform weight.
        label: names the Monte Carlo predictor's rows ``"mc_<label>_<decoder>_M<m>"`` (e.g.
            ``"ar"`` for an autoregressive head), so that several predictors' results merge;
            empty: ``"mc_<decoder>_M<m>"``.

    Returns:
        ``{"ambiguity": (B, T), "oracle_nll": (B, T), "kl": {name: (B, T)}, "backward_kl":
        {name: (B, T)}, "nll": {name: (B, T)},
        "posterior_kl": (B, T) or None, "factorized_floor_kl": (B, T) or None}`` as NumPy
        arrays; names are ``"transformer"`` and ``"mc_<decoder>_M<m>"`` (``"mc_exact_M<m>"`` for
        the ceiling). ``posterior_kl`` is the Monte Carlo predictor's ``q`` against the oracle's
        posterior; ``factorized_floor_kl`` the least any factorized ``q`` can reach there.
    """
    envs = family.train_envs if split == "train" else jnp.arange(family.log_trans.shape[0])
    # The posterior feeds q's KL (a Monte Carlo predictor) and the ceiling (exact_posterior).
    oracle = oracle_batch(family.log_init, family.log_trans[envs], family.log_emit[envs], symbols,
                          return_posterior=monte_carlo is not None or exact_posterior)
    out = {
        "ambiguity": np.asarray(oracle.ambiguity),
        "oracle_nll": np.asarray(-oracle.token_log_probs),
        "kl": {},
        "backward_kl": {},
        "nll": {},
        "posterior_kl": None,
        "factorized_floor_kl": None,
    }
    prefix = f"mc_{label}_" if label else "mc_"

    def record(name, log_probs):
        out["kl"][name] = np.asarray(forward_kl(oracle.log_probs, log_probs))
        out["backward_kl"][name] = np.asarray(backward_kl(oracle.log_probs, log_probs))
        out["nll"][name] = np.asarray(token_nll(log_probs, symbols))

    if plain is not None:
        record("transformer", plain_log_probs(plain, symbols))
    if monte_carlo is not None:
        sizes = tuple(int(k) for k in family.factor_sizes)
        for decoder in decoders:
            for m in num_samples:
                lp = monte_carlo_log_probs(
                    jax.random.fold_in(key, m), monte_carlo, family.log_init, family.log_trans,
                    family.log_emit, symbols, num_samples=int(m), decoder=decoder,
                    factor_sizes=sizes, smoothing=smoothing,
                )
                record(f"{prefix}{decoder}_M{m}", lp)
        out["posterior_kl"] = np.asarray(posterior_kl_by_position(
            monte_carlo, symbols, oracle.log_posterior, family.factors[envs]))
    if oracle.log_posterior is not None:
        out["factorized_floor_kl"] = np.asarray(factorized_floor_kl(
            oracle.log_posterior, family.factors[envs], tuple(family.factor_sizes)))
    if exact_posterior:
        for m in num_samples:
            lp = exact_posterior_mc_log_probs(
                jax.random.fold_in(key, 10_000 + m), family.log_init, family.log_trans[envs],
                family.log_emit[envs], symbols, oracle.log_posterior, num_samples=int(m),
                smoothing=smoothing,
            )
            record(f"mc_exact_M{m}", lp)
    return out


def _backward_summary(backward: np.ndarray, ambiguity: np.ndarray, num_bins: int) -> dict:
    """Backward KL's mean over the finite positions, the share of infinite ones (the predictor
    gives mass to a symbol the oracle rules out), and its finite mean within the same
    ambiguity bins as the forward KL's (``ambiguity_bins`` over every position)."""
    backward = np.asarray(backward, np.float64)
    finite = np.isfinite(backward)
    bins = ambiguity_bins(ambiguity, num_bins)
    by_bin = {"mean": [], "count_finite": [], "count": []}
    for b in range(num_bins):
        in_bin = bins == b
        kept = backward[in_bin & finite]
        by_bin["mean"].append(float(kept.mean()) if kept.size else None)
        by_bin["count_finite"].append(int(kept.size))
        by_bin["count"].append(int(in_bin.sum()))
    return {"backward_kl_infinite_share": float(1.0 - finite.mean()),
            "mean_backward_kl": float(backward[finite].mean()) if finite.any() else None,
            "backward_kl_by_ambiguity": by_bin}


def summarize(results: dict, num_bins: int = 3) -> dict:
    """Mean KL overall, per equal-count ambiguity bin (terciles) and per position, per predictor."""
    amb = results["ambiguity"]
    summary = {"predictors": {}, "mean_ambiguity_by_position": np.mean(amb, axis=0).tolist()}
    for name, kl in results["kl"].items():
        summary["predictors"][name] = {
            "mean_kl": float(np.mean(kl)),
            "mean_nll_excess": float(np.mean(results["nll"][name] - results["oracle_nll"])),
            "kl_by_ambiguity": by_ambiguity(kl, amb, num_bins=num_bins),
            "kl_by_position": np.mean(kl, axis=0).tolist(),
        }
        backward = results.get("backward_kl", {}).get(name)
        if backward is not None:
            summary["predictors"][name].update(_backward_summary(backward, amb, num_bins))
    if results["posterior_kl"] is not None:
        summary["posterior_kl_by_position"] = np.mean(results["posterior_kl"], axis=0).tolist()
    if results.get("factorized_floor_kl") is not None:
        summary["posterior_kl_floor_factorized_by_position"] = np.mean(
            results["factorized_floor_kl"], axis=0).tolist()
    return summary
