"""A continuous Bayesian hidden Markov model: three states, Gaussian emissions, ordered means.

One sequence ``y_1..T`` comes from

- ``means``: three increasing state means, ``means_1 ~ Normal(-1.5, 0.3)`` and gaps
  ``means_k+1 - means_k ~ LogNormal(log 1.5, 0.15)`` (:class:`OrderedMeans`). The order removes
  label switching: state 1 is the low state, state 3 the high one.
- ``transition``: a 3 x 3 row-stochastic matrix, each row ``k`` a sticky
  ``Dirichlet(1 + (STAY_CONCENTRATION - 1) e_k)``.
- ``noise``: the emission SD, ``LogNormal(log 0.4, 0.25)``.
- hidden states ``z_1 ~ Uniform{1, 2, 3}``, ``z_t+1 | z_t ~ Categorical(transition[z_t])`` and
  observations ``y_t | z_t ~ Normal(means[z_t], noise)``.

The hidden states are marginalized by the forward algorithm
(:func:`amortized_ppl.sequence.hmm.forward_filter`) inside :class:`GaussianHMM`, the distribution
of the observed site, so NUTS and the amortized ELBO see a continuous model with 10 unconstrained
latents (3 means, 2 x 3 stick-breaking coordinates, 1 noise).

How the sequence meets the guides' "one token per observation along a data plate": the observed
site sits in ``numpyro.plate("time", T)`` and :class:`GaussianHMM` has batch shape ``(T,)``; its
``log_prob`` returns the forward filter's one-step predictive terms ``log p(y_t | y_<t)``, whose
sum is the exact ``log p(y_1:T)``. The terms are not independent, but every consumer here sums
them, and a prefix of them is exactly the log-likelihood of the prefix ``y_1:n``, so masking the
tail (padding) is exact too. The one thing the plate must not do is subsample time steps.

The priors are chosen so that posteriors are identified at ``T`` of about 100-200 steps: the gaps
between means (about 1.5) are several noise SDs (about 0.4), and the means are anchored (prior SD
about 0.3 each) so that relabelled explanations of the data, where a cluster of observations is
claimed by a neighbouring state and an extra state sits unused beyond it, are minor modes. They
are not absent: with a state visited a handful of times or never, NUTS chains started far out
(``init_to_uniform``) can stick in them (2 or 3 of 20 prior-predictive sequences of 150 steps),
so reference runs start at the prior median (``init_to_median``).

All functions take one sequence; batch with :func:`jax.vmap`.

References:
    Rabiner, L. R. (1989). A tutorial on hidden Markov models and selected applications in
    speech recognition. *Proc. IEEE* 77(2) (the forward algorithm).
    Frühwirth-Schnatter, S. (2006). *Finite Mixture and Markov Switching Models*, ch. 11
    (Bayesian HMMs; identifiability by ordering constraints).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.util import validate_sample

from amortized_ppl.sequence.hmm import forward_filter

__all__ = [
    "FIRST_MEAN_LOC",
    "FIRST_MEAN_SCALE",
    "GAP_LOG_LOC",
    "GAP_LOG_SCALE",
    "NOISE_LOG_LOC",
    "NOISE_LOG_SCALE",
    "NUM_STATES",
    "NUM_STEPS",
    "STAY_CONCENTRATION",
    "GaussianHMM",
    "HMMDraw",
    "OrderedMeans",
    "design_fn",
    "log_likelihood",
    "model",
    "simulate",
    "transition_concentration",
]

NUM_STATES = 3
"""Hidden states."""

NUM_STEPS = 150
"""Default sequence length of the benchmark and the tests' held-out sequences."""

FIRST_MEAN_LOC, FIRST_MEAN_SCALE = -1.5, 0.3
"""Prior of the lowest state mean, ``Normal(-1.5, 0.3)``."""

GAP_LOG_LOC, GAP_LOG_SCALE = math.log(1.5), 0.15
"""Prior of each gap between consecutive means, ``LogNormal(log 1.5, 0.15)`` (95% in [1.1, 2.0])."""

NOISE_LOG_LOC, NOISE_LOG_SCALE = math.log(0.4), 0.25
"""Prior of the emission SD, ``LogNormal(log 0.4, 0.25)`` (median 0.4, 95% in [0.25, 0.65])."""

STAY_CONCENTRATION = 4.0
"""Dirichlet concentration on the diagonal of the transition matrix (1 elsewhere).

A priori a state persists with probability 2/3 (mean run length 3): runs long enough to be seen,
short enough that a sequence of 150 steps holds about 50 of them, so most rows of the matrix
see many transitions (a stickier prior left more states nearly unvisited, and more posteriors
multimodal).
"""


# ---------------------------------------------------------------------------------------------
# Distributions
# ---------------------------------------------------------------------------------------------


class OrderedMeans(dist.Distribution):
    """Increasing vector: a Normal first entry plus LogNormal gaps.

    ``x_1 ~ Normal(first_loc, first_scale)`` and ``x_k+1 - x_k ~ LogNormal(gap_log_loc,
    gap_log_scale)``, independently. The map from ``(x_1, gaps)`` to ``x`` has unit Jacobian, so
    ``log_prob`` is the sum of the parts; in NumPyro's unconstrained space for
    ``constraints.ordered_vector`` (``x_1``, ``log gaps``) the prior is exactly Normal.

    Args:
        num_states: length of the vector (event shape ``(num_states,)``), at least 1.
        first_loc, first_scale: the first entry's Normal.
        gap_log_loc, gap_log_scale: each gap's LogNormal.
    """

    arg_constraints = {
        "first_loc": constraints.real,
        "first_scale": constraints.positive,
        "gap_log_loc": constraints.real,
        "gap_log_scale": constraints.positive,
    }
    support = constraints.ordered_vector
    reparametrized_params = ["first_loc", "first_scale", "gap_log_loc", "gap_log_scale"]

    def __init__(
        self,
        num_states: int = NUM_STATES,
        first_loc=FIRST_MEAN_LOC,
        first_scale=FIRST_MEAN_SCALE,
        gap_log_loc=GAP_LOG_LOC,
        gap_log_scale=GAP_LOG_SCALE,
        *,
        validate_args=None,
    ):
        _check_count(num_states, "num_states")
        self.num_states = num_states
        params = [jnp.asarray(p) for p in (first_loc, first_scale, gap_log_loc, gap_log_scale)]
        batch_shape = jax.lax.broadcast_shapes(*(p.shape for p in params))
        (self.first_loc, self.first_scale, self.gap_log_loc, self.gap_log_scale) = (
            jnp.broadcast_to(p, batch_shape) for p in params
        )
        super().__init__(batch_shape, (num_states,), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape
        eps = jax.random.normal(key, shape + (self.num_states,))
        first = self.first_loc + self.first_scale * eps[..., :1]
        log_gaps = self.gap_log_loc[..., None] + self.gap_log_scale[..., None] * eps[..., 1:]
        return jnp.cumsum(jnp.concatenate([first, jnp.exp(log_gaps)], axis=-1), axis=-1)

    @validate_sample
    def log_prob(self, value):
        first = dist.Normal(self.first_loc, self.first_scale).log_prob(value[..., 0])
        gaps = jnp.diff(value, axis=-1)
        safe = jnp.where(gaps > 0, gaps, 1.0)
        log_gaps = dist.LogNormal(self.gap_log_loc[..., None], self.gap_log_scale[..., None])
        terms = jnp.where(gaps > 0, log_gaps.log_prob(safe), -jnp.inf)
        return first + jnp.sum(terms, axis=-1)


class GaussianHMM(dist.Distribution):
    """One sequence of a Gaussian-emission HMM, hidden states summed out, laid along a plate.

    Batch shape ``(num_steps,)``, event shape ``()``: one entry per time step, so the site sits
    in a ``numpyro.plate`` over time. ``log_prob(y)`` returns the one-step predictive terms
    ``log p(y_t | y_<t)`` (shape ``(..., num_steps)``) from the forward filter; their sum is the
    log evidence ``log p(y_1:T | means, transition, noise)`` and the sum of the first ``n`` the
    log evidence of the prefix. ``sample`` simulates a hidden chain with :func:`jax.lax.scan`
    and its emissions. The initial state is uniform.

    The parameters describe one HMM (no batch dimensions); batch models with :func:`jax.vmap`.

    Args:
        means: state means ``(S,)``.
        transition: ``(S, S)``, row ``i`` is ``p(z_t+1 | z_t = i)``.
        noise: emission SD, a positive scalar.
        num_steps: sequence length ``T``, at least 1.
    """

    arg_constraints = {
        "means": constraints.real_vector,
        "transition": constraints.simplex,
        "noise": constraints.positive,
    }
    support = constraints.real
    reparametrized_params = []

    def __init__(self, means, transition, noise, num_steps: int, *, validate_args=None):
        _check_count(num_steps, "num_steps")
        means, transition, noise = (jnp.asarray(v) for v in (means, transition, noise))
        num_states = jnp.shape(means)[-1] if jnp.ndim(means) == 1 else None
        if num_states is None or transition.shape != (num_states, num_states) or noise.ndim:
            raise ValueError(
                "GaussianHMM takes one HMM: means (S,), transition (S, S) and a scalar noise; got "
                f"shapes {means.shape}, {transition.shape} and {noise.shape}. Batch with jax.vmap."
            )
        self.means, self.transition, self.noise = means, transition, noise
        self.num_steps = num_steps
        super().__init__((num_steps,), (), validate_args=validate_args)

    def simulate(self, key) -> tuple[jax.Array, jax.Array]:
        """Hidden states ``(T,)`` (int) and observations ``(T,)`` of one sequence."""
        init_key, step_key, noise_key = jax.random.split(key, 3)
        num_states = self.means.shape[0]
        log_trans = jnp.log(self.transition)
        first = jax.random.randint(init_key, (), 0, num_states)

        def step(state, step_key):
            following = jax.random.categorical(step_key, log_trans[state])
            return following, following

        keys = jax.random.split(step_key, self.num_steps - 1)
        _, rest = jax.lax.scan(step, first, keys)
        states = jnp.concatenate([first[None], rest])
        eps = jax.random.normal(noise_key, (self.num_steps,), self.means.dtype)
        return states, self.means[states] + self.noise * eps

    def sample(self, key, sample_shape=()):
        num = math.prod(sample_shape)
        keys = jax.random.split(key, max(num, 1))
        _, y = jax.vmap(self.simulate)(keys)
        return y[:num].reshape(sample_shape + (self.num_steps,))

    @validate_sample
    def log_prob(self, value):
        log_lik = dist.Normal(self.means, self.noise).log_prob(value[..., None])  # (..., T, S)
        num_states = self.means.shape[0]
        log_init = jnp.full((num_states,), -math.log(num_states), log_lik.dtype)
        tiny = jnp.finfo(log_lik.dtype).tiny  # an exact 0 from the Dirichlet gives -inf, not NaN
        log_trans = jnp.log(jnp.maximum(self.transition, tiny))
        flat = log_lik.reshape((-1,) + log_lik.shape[-2:])
        terms = jax.vmap(lambda ll: forward_filter(log_init, log_trans, ll).log_normalizers)(flat)
        return terms.reshape(log_lik.shape[:-1])


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


def transition_concentration(num_states: int = NUM_STATES) -> jax.Array:
    """Dirichlet concentrations ``(S, S)`` of the transition rows: STAY on the diagonal, 1 off."""
    return 1.0 + (STAY_CONCENTRATION - 1.0) * jnp.eye(num_states)


def model(y=None, num_steps=None):
    """Bayesian 3-state Gaussian HMM over one sequence, hidden states marginalized.

    Latent sites ``means`` ``(3,)`` (increasing), ``transition`` ``(3, 3)`` (rows on the
    simplex) and ``noise`` ``()``; the observed site ``y`` sits in the ``"time"`` plate.

    Args:
        y: the sequence, shape ``(T,)``, or None to simulate one (then ``num_steps`` is needed).
        num_steps: ``T``; optional when ``y`` is given (it must then match ``y``).

    Raises:
        ValueError: ``y`` is not 1-D, is empty, holds NaN/Inf (checked when concrete), or
            disagrees with ``num_steps``; or neither is given.

    Examples:
        >>> from numpyro.infer import Predictive
        >>> Predictive(model, num_samples=2)(jax.random.key(0), num_steps=100)["y"].shape
        (2, 100)
    """
    num_steps = _check_sequence(y, num_steps)
    means = numpyro.sample("means", OrderedMeans(NUM_STATES))
    transition = numpyro.sample(
        "transition", dist.Dirichlet(transition_concentration()).to_event(1)
    )
    noise = numpyro.sample("noise", dist.LogNormal(NOISE_LOG_LOC, NOISE_LOG_SCALE))
    with numpyro.plate("time", num_steps):
        numpyro.sample("y", GaussianHMM(means, transition, noise, num_steps), obs=y)


def design_fn(key, num_obs: int) -> tuple[tuple, dict]:
    """The model's inputs for one sequence without its observations: ``((), {"num_steps": T})``.

    Args:
        key: A JAX PRNG key (unused: the model has no covariates).
        num_obs: the sequence length ``T``, at least 1.
    """
    del key
    _check_count(num_obs, "num_obs")
    return (), {"num_steps": num_obs}


# ---------------------------------------------------------------------------------------------
# Simulator and likelihood
# ---------------------------------------------------------------------------------------------


class HMMDraw(NamedTuple):
    """One draw from the prior predictive (leading axes when vmapped).

    Attributes:
        means: ``(3,)``; transition: ``(3, 3)``; noise: ``()``; states: ``(T,)`` int;
        y: ``(T,)``.
    """

    means: jax.Array
    transition: jax.Array
    noise: jax.Array
    states: jax.Array
    y: jax.Array


def simulate(key, num_steps: int = NUM_STEPS) -> HMMDraw:
    """Draw parameters from the prior, then a hidden chain and its sequence.

    Jit with ``num_steps`` static; vmap over keys for many sequences.

    Examples:
        >>> draws = jax.vmap(simulate, in_axes=(0, None))(jax.random.split(jax.random.key(0), 4), 50)
        >>> draws.y.shape, draws.states.shape
        ((4, 50), (4, 50))
    """
    _check_count(num_steps, "num_steps")
    means_key, trans_key, noise_key, chain_key = jax.random.split(key, 4)
    means = OrderedMeans(NUM_STATES).sample(means_key)
    transition = dist.Dirichlet(transition_concentration()).sample(trans_key)
    noise = dist.LogNormal(NOISE_LOG_LOC, NOISE_LOG_SCALE).sample(noise_key)
    states, y = GaussianHMM(means, transition, noise, num_steps).simulate(chain_key)
    return HMMDraw(means, transition, noise, states, y)


def log_likelihood(y, means, transition, noise) -> jax.Array:
    """``log p(y_1:T | means, transition, noise)`` with the hidden states summed out (a scalar).

    Args:
        y: the sequence ``(T,)``.
        means: ``(S,)``; transition: ``(S, S)`` row-stochastic; noise: a positive scalar.

    Raises:
        ValueError: on a bad shape, an empty sequence, or NaN/Inf in ``y`` (when concrete).
    """
    num_steps = _check_sequence(y, None)
    return jnp.sum(GaussianHMM(means, transition, noise, num_steps).log_prob(jnp.asarray(y)))


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def _check_count(value, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}.")
    return int(value)


def _check_sequence(y, num_steps) -> int:
    """The sequence length; raise naming ``y`` or ``num_steps`` when they are unusable."""
    if y is None:
        if num_steps is None:
            raise ValueError(
                "model: pass the observations y (shape (T,)) or, to simulate, num_steps."
            )
        return _check_count(num_steps, "num_steps")
    if jnp.ndim(y) != 1:
        raise ValueError(
            f"y must be a 1-D sequence of shape (T,); got shape {jnp.shape(y)}. Batch "
            "sequences with jax.vmap (or pass a batch to the guide's sample_posterior)."
        )
    length = jnp.shape(y)[0]
    if length == 0:
        raise ValueError("y must hold at least one time step; got an empty sequence.")
    if num_steps is not None and _check_count(num_steps, "num_steps") != length:
        raise ValueError(f"num_steps={num_steps} disagrees with y of length {length}.")
    if not isinstance(y, jax.core.Tracer):
        array = np.asarray(y)
        if not np.all(np.isfinite(array)):
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            raise ValueError(f"y contains {bad} NaN or Inf value(s).")
    return int(length)
