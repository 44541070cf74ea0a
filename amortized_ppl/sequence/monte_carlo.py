"""Monte Carlo predictors: infer the task latent, then predict with it (MetaHMM paper, section 5).

A plain next-token Transformer must fold task inference and prediction into one output. A Monte
Carlo predictor separates them:

    p_MC(x_t | x_<t) = 1/M sum_m p(x_t | x_<t, z_m),   z_m ~ q(z | x_<t),

where ``q`` is an amortized posterior over the discrete task latent and the decoder
``p(x_t | x_<t, z)`` is either (a) known, e.g. the HMM filter of the environment ``z`` names, or
(b) learned, a head that reads the context features and an embedding of ``z``. More samples M
spend more compute at test time for a better average: test-time scaling.

:class:`MonteCarloPredictor` holds one causal Transformer trunk, as large as the plain predictor's,
with two heads: the posterior and the latent-conditioned decoder. The posterior head is a value
passed in (a spec from :mod:`~amortized_ppl.sequence.posterior_heads`): a categorical per factor
(:class:`~amortized_ppl.sequence.posterior_heads.FactorizedPosterior`, the default), an
autoregressive head that holds correlated factors
(:class:`~amortized_ppl.sequence.autoregressive_posterior.AutoregressivePosterior`), or a
categorical over listed environments
(:class:`~amortized_ppl.sequence.environment_posterior.EnvironmentPosterior`). Training
minimizes ``-log q(z_true | x_<t) - log p(x_t | x_<t, z_true)`` averaged over positions, on
simulated (latent, sequence) pairs: forward KL for q plus maximum likelihood for the decoder.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from amortized_ppl.families.categorical import FactorizedCategorical
from amortized_ppl.sequence.posterior_heads import FactorizedHead, FactorizedPosterior
from amortized_ppl.sequence.transformer import CausalTransformer

__all__ = [
    "JointPosteriorTargets",
    "MonteCarloPredictor",
    "PosteriorDrawTargets",
    "mixture_log_probs",
]


class JointPosteriorTargets(NamedTuple):
    """Soft targets over whole environments for :meth:`MonteCarloPredictor.loss`.

    Attributes:
        log_posterior: the exact ``log p(e | x_<t)`` of every listed environment, ``(B, T, E)``
            (``-inf`` where the prefix rules ``e`` out).
        table: the listed environments' factor values, ``(E, F)``.
    """

    log_posterior: jax.Array
    table: jax.Array


class PosteriorDrawTargets(NamedTuple):
    """Labels drawn from the exact posterior for :meth:`MonteCarloPredictor.loss`.

    Attributes:
        factors: ``S`` environments drawn from ``p(e | x_<t)`` at every row, as factor values
            ``(B, S, T, F)``: an unbiased estimate of the joint cross-entropy of
            :class:`JointPosteriorTargets` at the cost of ``S`` labels, where scoring every
            environment at every row is too costly (the autoregressive head's table).
    """

    factors: jax.Array


class MonteCarloPredictor(eqx.Module):
    """An amortized posterior over factors and a factor-conditioned decoder on one trunk.

    Args:
        num_symbols, max_len: the vocabulary and the longest sequence of the trunk.
        factor_sizes: ``(K_1, ..., K_F)``, the values of each factor.
        key: PRNG key of the initialization.
        posterior: the posterior head's spec (``build(key, feature_size, factor_sizes)``);
            ``FactorizedPosterior()`` when None.
        **trunk_kwargs: passed to :class:`~amortized_ppl.sequence.transformer.CausalTransformer`.

    Attributes:
        trunk: the causal Transformer, ``(T,)`` symbols -> ``(T, size)`` features.
        posterior: the posterior head, features ``(T, size)`` -> ``q(z | x_<t)`` (see
            :mod:`~amortized_ppl.sequence.posterior_heads` for its interface).
        factor_embeddings: one embedding table per factor; a latent's embedding is their sum.
        decoder: MLP from ``[features, embedding]`` to next-symbol logits ``(V,)``.

    Examples:
        >>> from amortized_ppl.sequence.autoregressive_posterior import AutoregressivePosterior
        >>> model = MonteCarloPredictor(16, 64, (2, 2, 3), key=jax.random.key(0), size=32,
        ...                             posterior=AutoregressivePosterior(width=64))
        >>> model.sample_factors(jax.random.key(1), jnp.zeros(64, int), 5).shape
        (5, 64, 3)
    """

    trunk: CausalTransformer
    posterior: eqx.Module
    factor_embeddings: tuple[eqx.nn.Embedding, ...]
    decoder: eqx.nn.MLP
    factor_sizes: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        num_symbols: int,
        max_len: int,
        factor_sizes: Sequence[int],
        *,
        key: jax.Array,
        posterior=None,
        **trunk_kwargs,
    ):
        t_key, p_key, d_key, *e_keys = jax.random.split(key, 3 + len(factor_sizes))
        self.trunk = CausalTransformer(num_symbols, max_len, key=t_key, **trunk_kwargs)
        size = self.trunk.size
        self.factor_sizes = tuple(int(k) for k in factor_sizes)
        spec = FactorizedPosterior() if posterior is None else posterior
        if not hasattr(spec, "build"):
            raise TypeError(
                f"posterior: expected a posterior spec with build(key, feature_size, "
                f"factor_sizes), e.g. AutoregressivePosterior(), got {type(spec).__name__}."
            )
        self.posterior = spec.build(p_key, size, self.factor_sizes)
        self.factor_embeddings = tuple(
            eqx.nn.Embedding(k, size, key=ek) for k, ek in zip(self.factor_sizes, e_keys)
        )
        self.decoder = eqx.nn.MLP(2 * size, num_symbols, 2 * size, 1, activation=jax.nn.gelu,
                                  key=d_key)

    def _factorized(self, what: str) -> FactorizedHead:
        if not isinstance(self.posterior, FactorizedHead):
            raise ValueError(
                f"{what}: only defined for the factorized posterior (raw per-factor "
                f"parameters); this predictor's head is {type(self.posterior).__name__}. Use "
                "posterior.log_prob / sample / log_prob_table, which every head has."
            )
        return self.posterior

    @property
    def family(self) -> FactorizedCategorical:
        """The factorized family of the default head (an error for other heads)."""
        return self._factorized("family").family

    def posterior_raw(self, features: jax.Array) -> jax.Array:
        """Raw factorized posterior parameters ``(T, sum K_f)`` from features ``(T, size)``
        (the factorized head only)."""
        return self._factorized("posterior_raw").raw(features)

    def posterior_log_prob_table(self, symbols: jax.Array, table: jax.Array) -> jax.Array:
        """``log q(z | x_<t)`` of every row of ``table`` ``(E, F)`` for symbols ``(T,)``: ``(T, E)``."""
        return self.posterior.log_prob_table(self.trunk(symbols), table)

    def embed(self, factors: jax.Array) -> jax.Array:
        """Latent embedding: factors ``(..., F)`` -> ``(..., size)``."""
        out = 0.0
        for f, table in enumerate(self.factor_embeddings):
            out = out + jnp.take(table.weight, factors[..., f], axis=0)
        return out

    def decode(self, features: jax.Array, factors: jax.Array) -> jax.Array:
        """``log p(x_t = v | x_<t, z)``: features ``(T, size)``, factors ``(..., T, F)`` -> ``(..., T, V)``.

        Leading axes of ``factors`` (e.g. M samples) broadcast against the features.
        """
        emb = self.embed(factors)
        feats = jnp.broadcast_to(features, emb.shape)
        joint = jnp.concatenate([feats, emb], axis=-1)
        flat = joint.reshape(-1, joint.shape[-1])
        logits = jax.vmap(self.decoder)(flat).reshape(emb.shape[:-1] + (-1,))
        return jax.nn.log_softmax(logits, axis=-1)

    def loss(
        self,
        symbols: jax.Array,
        factors: jax.Array,
        targets: jax.Array | JointPosteriorTargets | PosteriorDrawTargets | None = None,
    ) -> jax.Array:
        """Training loss on a batch: symbols ``(B, T)``, true factors ``(B, F)`` -> scalar.

        Mean over positions of ``-log q(z | x_<t)`` plus ``-log p(x_t | x_<t, z)`` (nats).

        Soft targets replace the one label ``z`` of the first term by the exact posterior it is
        a draw from: the same objective in expectation over simulations, with the label's
        sampling noise integrated out (Rao-Blackwellized); only a family whose likelihood can be
        evaluated (here, enumerated) provides them.

        - ``targets`` an array ``(B, T, sum K_f)``, the exact marginals of each factor given
          ``x_<t`` (concatenated): the cross-entropy ``-sum_f sum_k p(z_f = k | x_<t)
          log q_f(k | x_<t)``, for the factorized head only;
        - ``targets`` a :class:`JointPosteriorTargets`: the joint cross-entropy
          ``-sum_e p(e | x_<t) log q(z_e | x_<t)`` over the listed environments, for any head
          (through its ``log_prob_table``). Its minimum over ``q`` is ``q = p``: forward KL to
          the exact posterior at every prefix;
        - ``targets`` a :class:`PosteriorDrawTargets`: the mean of ``-log q`` over ``S`` draws
          from that posterior at every row, an unbiased estimate of the joint cross-entropy.
        """
        joint = isinstance(targets, JointPosteriorTargets)
        draws = isinstance(targets, PosteriorDrawTargets)
        if (targets is not None and not joint and not draws
                and not hasattr(self.posterior, "marginal_cross_entropy")):
            raise ValueError(
                "targets: soft targets over each factor's marginal train the factorized "
                f"head only; {type(self.posterior).__name__} models the joint, whose "
                "cross-entropy needs the exact joint posterior (JointPosteriorTargets)."
            )
        if joint and (targets.log_posterior.shape[:2] != symbols.shape
                      or targets.table.ndim != 2
                      or targets.log_posterior.shape[-1] != targets.table.shape[0]):
            raise ValueError(
                f"targets: JointPosteriorTargets expects log_posterior (B, T, E) with (B, T) = "
                f"{symbols.shape} and a table (E, F); got {targets.log_posterior.shape} and "
                f"{targets.table.shape}.")
        if draws and (targets.factors.ndim != 4
                      or (targets.factors.shape[0], targets.factors.shape[2]) != symbols.shape):
            raise ValueError(
                f"targets: PosteriorDrawTargets expects factors (B, S, T, F) with (B, T) = "
                f"{symbols.shape}; got {targets.factors.shape}.")
        batched = (targets.log_posterior if joint else targets.factors if draws else targets)

        def posterior_term(feats, z, target):
            if target is None:
                return -self.posterior.log_prob(feats, z)  # one label, scored at every row
            if draws:
                return -jnp.mean(self.posterior.log_prob(feats, target), axis=0)  # (S, T)
            if not joint:
                return self.posterior.marginal_cross_entropy(feats, target)
            log_q = self.posterior.log_prob_table(feats, targets.table)  # (T, E)
            p = jnp.exp(target)
            # Environments the prefix rules out (p = 0) add nothing, even where log q = -inf.
            return -jnp.sum(jnp.where(p > 0, p * log_q, 0.0), axis=-1)

        def one(seq, z, target):
            feats = self.trunk(seq)
            z_t = jnp.broadcast_to(z, (seq.shape[0], z.shape[-1]))
            dec = self.decode(feats, z_t)
            nll = -jnp.take_along_axis(dec, seq[:, None], axis=-1)[:, 0]
            return jnp.mean(posterior_term(feats, z, target) + nll)

        return jnp.mean(jax.vmap(one)(symbols, factors, batched))

    def sample_factors(self, key: jax.Array, symbols: jax.Array, num_samples: int) -> jax.Array:
        """``z_m ~ q(z | x_<t)`` at every position: symbols ``(T,)`` -> ``(M, T, F)``."""
        return self.posterior.sample(key, self.trunk(symbols), (num_samples,))

    def predict(
        self,
        key: jax.Array,
        symbols: jax.Array,
        num_samples: int,
        env_log_probs: jax.Array | None = None,
        env_of_factors=None,
        smoothing: float = 1e-3,
        importance: bool = False,
    ) -> jax.Array:
        """Monte Carlo next-symbol log probabilities ``(T, V)`` for one sequence ``(T,)``.

        With ``env_log_probs`` (``(E, T, V)``, the known filters' predictives of every
        environment on this sequence, see
        :func:`~amortized_ppl.sequence.oracle.environment_predictives`) and ``env_of_factors``
        (factors ``(..., F)`` -> environment ids) the decoder is the known HMM filter;
        otherwise the learned decoder. ``smoothing`` mixes in a uniform distribution with that
        weight, so that a sampled environment that rules out the next symbol does not make the
        loss infinite.

        With ``importance=True`` (known decoder only) the samples are weighted by
        ``p(x_<t | env_m) / q(z_m | x_<t)`` (self-normalized), the likelihood read off the same
        filters. The implied prior is uniform over all factor combinations, the compositional
        prior; an oracle whose prior is a subset (e.g. only the training environments) is a
        different target, and at position 0 the two differ by ``log(all / subset)`` nats. A forward-KL posterior is
        mass-covering, so its samples include environments the prefix already rules out; the
        weights remove them, and the estimate converges to the exact Bayesian predictive (under
        that prior) as M grows, whatever q is.
        """
        feats = self.trunk(symbols)
        z = self.posterior.sample(key, feats, (num_samples,))  # (M, T, F)
        if env_log_probs is None:
            if importance:
                raise ValueError("importance: needs the known decoder (env_log_probs).")
            return mixture_log_probs(self.decode(feats, z), smoothing)
        if env_of_factors is None:
            raise ValueError("env_of_factors: required with env_log_probs (factors -> env ids).")
        envs = env_of_factors(z)  # (M, T)
        steps = jnp.arange(symbols.shape[0])
        comp = env_log_probs[envs, steps[None, :]]  # (M, T, V)
        if not importance:
            return mixture_log_probs(comp, smoothing)
        # log p(x_<t | e): exclusive cumulative sum of each environment's own token log probs.
        token_lp = jnp.take_along_axis(env_log_probs, symbols[None, :, None], axis=-1)[..., 0]
        # (Shifted, not cumsum - token_lp: that is -inf - -inf = nan after an impossible step.)
        cumulative = jnp.cumsum(token_lp, axis=-1)
        prefix = jnp.concatenate([jnp.zeros_like(cumulative[:, :1]), cumulative[:, :-1]], axis=-1)
        log_w = prefix[envs, steps[None, :]] - self.posterior.log_prob(feats, z)  # (M, T)
        return mixture_log_probs(comp, smoothing, log_weights=log_w)


def mixture_log_probs(
    component_log_probs: jax.Array,
    smoothing: float = 0.0,
    log_weights: jax.Array | None = None,
) -> jax.Array:
    """Mixture over the leading axis: ``(M, ..., V)`` -> ``(..., V)``, smoothed.

    ``(1 - smoothing) * sum_m w_m p_m + smoothing / V``, in log space; the weights are equal,
    or ``softmax(log_weights)`` over ``M`` (``log_weights`` shaped ``(M, ...)``). Components with
    weight ``-inf`` drop out; if every weight is ``-inf`` the mixture falls back to equal weights.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing: expected a weight in [0, 1), got {smoothing}.")
    num = component_log_probs.shape[0]
    if log_weights is None:
        log_mix = logsumexp(component_log_probs, axis=0) - jnp.log(num)
    else:
        ok = jnp.any(jnp.isfinite(log_weights), axis=0, keepdims=True)
        log_weights = jnp.where(ok, log_weights, 0.0)
        log_weights = log_weights - logsumexp(log_weights, axis=0, keepdims=True)
        # -inf components with zero weight would give nan (0 * -inf) without the where.
        terms = jnp.where(jnp.isneginf(log_weights)[..., None], -jnp.inf,
                          log_weights[..., None] + component_log_probs)
        log_mix = logsumexp(terms, axis=0)
    if smoothing <= 0:
        return log_mix
    vocab = component_log_probs.shape[-1]
    return jnp.logaddexp(jnp.log1p(-smoothing) + log_mix, jnp.log(smoothing / vocab))
