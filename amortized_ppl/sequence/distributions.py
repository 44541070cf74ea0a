"""A categorical HMM as a NumPyro distribution over whole sequences, hidden states summed out.

``log_prob`` runs the forward filter (:func:`~amortized_ppl.sequence.hmm.forward_filter`), so a
NumPyro model can put a sequence of symbols behind one observed site and condition on it exactly;
``sample`` draws a hidden chain and its symbols with ``lax.scan``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints

from amortized_ppl.sequence.hmm import categorical_log_likelihoods, forward_filter

__all__ = ["CategoricalHMM"]


class CategoricalHMM(dist.Distribution):
    """Sequences of ``num_steps`` symbols from one HMM; event shape ``(num_steps,)``.

    Args:
        log_init: ``(S,)`` start distribution (log).
        log_trans: ``(S, S)`` transitions (log; ``-inf`` allowed).
        log_emit: ``(S, V)`` emissions (log).
        num_steps: sequence length T.

    Unbatched: one HMM per distribution (use it inside ``numpyro.plate`` via ``vmap`` outside,
    or index the matrices of a sampled environment).
    """

    arg_constraints = {}
    pytree_data_fields = ("log_init", "log_trans", "log_emit")
    pytree_aux_fields = ("num_steps",)

    def __init__(self, log_init, log_trans, log_emit, num_steps: int, *, validate_args=None):
        self.log_init, self.log_trans, self.log_emit = log_init, log_trans, log_emit
        self.num_steps = int(num_steps)
        self._support = constraints.integer_interval(0, log_emit.shape[-1] - 1)
        super().__init__(batch_shape=(), event_shape=(self.num_steps,),
                         validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self):
        return self._support

    def sample(self, key, sample_shape=()):
        def one(k):
            k0, k1 = jax.random.split(k)

            def step(z, kk):
                a, b = jax.random.split(kk)
                x = jax.random.categorical(a, self.log_emit[z])
                return jax.random.categorical(b, self.log_trans[z]), x

            first = jax.random.categorical(k0, self.log_init)
            return jax.lax.scan(step, first, jax.random.split(k1, self.num_steps))[1]

        keys = jax.random.split(key, max(1, math.prod(sample_shape)))
        draws = jax.vmap(one)(keys)
        return draws.reshape(tuple(sample_shape) + (self.num_steps,)).astype(jnp.int32)

    def log_prob(self, value):
        def one(x):
            ll = categorical_log_likelihoods(self.log_emit, x)
            return forward_filter(self.log_init, self.log_trans, ll).log_evidence

        flat = jnp.reshape(value, (-1, self.num_steps))
        return jax.vmap(one)(flat).reshape(jnp.shape(value)[:-1])
