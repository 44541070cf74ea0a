"""A finite mixture of posteriors over the flat latents, for posteriors with several modes.

The Laplace stage with several starts (:class:`~amortized_ppl.families.LaplaceRefined`,
``num_starts > 1``) finds one fit per start and corrects each with the inner family; this class
puts them together with fixed weights. NumPyro's ``MixtureSameFamily`` would need its components
to support ``expand``, which a flow posterior does not; here the components are one distribution
with batch shape ``(K,)`` (made by ``vmap``), and sampling draws every component and picks one per
draw (K is small). Draws are reparameterized within their component; the weights are not
differentiated (they come from the model's density at the modes, not from a network).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints

__all__ = ["MixturePosterior"]


class MixturePosterior(dist.Distribution):
    """``sum_k softmax(logits)_k q_k(u)``.

    Args:
        logits: ``(..., K)`` unnormalized log weights.
        components: a distribution with batch shape ``(..., K)`` and event shape ``(D,)``.
    """

    arg_constraints = {"logits": constraints.real_vector}
    support = constraints.real_vector
    has_rsample = True
    pytree_data_fields = ("logits", "components")

    def __init__(self, logits, components, *, validate_args=None):
        self.logits = logits
        self.components = components
        super().__init__(batch_shape=jnp.shape(logits)[:-1],
                         event_shape=components.event_shape, validate_args=validate_args)

    @property
    def weights(self):
        return jax.nn.softmax(self.logits, axis=-1)

    def log_prob(self, value):
        value = jnp.asarray(value)
        # (..., D) -> (..., 1, D): scored under every component at once
        per_component = self.components.log_prob(jnp.expand_dims(value, -2))
        return jax.nn.logsumexp(jax.nn.log_softmax(self.logits, axis=-1) + per_component,
                                axis=-1)

    def rsample(self, key, sample_shape=()):
        which_key, draw_key = jax.random.split(key)
        sample_shape = tuple(sample_shape)
        draws = self.components.rsample(draw_key, sample_shape)  # (*S, ..., K, D)
        which = jax.random.categorical(which_key, jax.lax.stop_gradient(self.logits),
                                       shape=sample_shape + self.batch_shape)
        picked = jnp.take_along_axis(draws, which[..., None, None], axis=-2)
        return picked[..., 0, :]

    def sample(self, key, sample_shape=()):
        return self.rsample(key, sample_shape)
