"""The MetaHMM family as a NumPyro model: discrete factor sites, then one marginalized HMM.

``model(symbols=None)`` samples one value per factor (uniform over each factor's values: the
compositional prior over all environments, the held-out combinations included), selects that
environment's matrices, and observes the sequence through
:class:`~amortized_ppl.sequence.distributions.CategoricalHMM`, the hidden states summed out by the
forward filter. It is the model an amortized posterior over the factors
(:class:`~amortized_ppl.sequence.AmortizedFactorGuide`) is a guide for.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from amortized_ppl.models.metahmm import MetaHMM, check_symbols, env_index
from amortized_ppl.sequence.distributions import CategoricalHMM

__all__ = ["make_model"]


def make_model(hmm: MetaHMM, seq_len: int | None = None):
    """A NumPyro model ``model(symbols=None)`` of the family; sites named ``hmm.factor_names``.

    Args:
        hmm: the built family.
        seq_len: length of simulated sequences when ``symbols`` is None (default: the config's).
    """
    default_len = hmm.config.seq_len if seq_len is None else int(seq_len)

    def model(symbols=None):
        if symbols is not None:
            symbols = check_symbols(symbols, hmm.num_symbols)
            if symbols.ndim != 1:
                raise ValueError(f"symbols: expected one sequence (T,), got shape {symbols.shape}.")
        num_steps = default_len if symbols is None else symbols.shape[0]
        factors = [
            numpyro.sample(name, dist.Categorical(logits=jnp.zeros(size)))
            for name, size in zip(hmm.factor_names, hmm.factor_sizes)
        ]
        env = env_index(hmm, jnp.stack(factors, axis=-1))
        numpyro.deterministic("env", env)
        numpyro.sample(
            "symbols",
            CategoricalHMM(hmm.log_init, hmm.log_trans[env], hmm.log_emit[env], num_steps),
            obs=symbols,
        )

    return model
