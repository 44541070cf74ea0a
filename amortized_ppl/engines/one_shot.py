"""The one-shot engine: an encoder reads the whole data set, a family maps its summary to q.

``OneShotPosterior`` is an ``equinox`` module built from a problem and two recipes: an encoder
(a Set Transformer for exchangeable observations, a sequence encoder for time series) and a
posterior family, optionally wrapped in stages that read the model's density
(:class:`~amortized_ppl.families.LaplaceRefined`). Its one pure method,
:meth:`OneShotPosterior.output`, maps ``(problem, data set, mask)`` to the posterior over the
flat unconstrained latents; callers ``vmap`` it over data sets.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from amortized_ppl._recipes import describe_recipe
from amortized_ppl.encoders.resolve import resolve_encoder
from amortized_ppl.families import DiagonalNormal, FamilyOutput
from amortized_ppl.problem import Problem

__all__ = ["OneShotPosterior"]


class OneShotPosterior(eqx.Module):
    """Data set -> encoder summary -> posterior family.

    The summary is the encoder's output and ``log(N) / log(max_obs)``: attention pooling is an
    average, so without the size the family could not tell 10 observations from 200 with the
    same empirical distribution, and the posterior's width depends on exactly that.

    Args:
        problem: the :class:`~amortized_ppl.problem.Problem`.
        encoder: an encoder recipe (:class:`~amortized_ppl.encoders.SetEncoder`,
            :class:`~amortized_ppl.encoders.SequenceEncoder`) or ``"set"`` / ``"sequence"``.
        family: a family recipe (:class:`~amortized_ppl.families.DiagonalNormal`,
            :class:`~amortized_ppl.families.MultivariateNormal`, or either wrapped in
            :class:`~amortized_ppl.families.LaplaceRefined`).
        key: PRNG key for the parameters.

    Examples:
        >>> engine = OneShotPosterior(problem, family=LaplaceRefined(MultivariateNormal(), 8),
        ...                           key=jax.random.key(1))
        >>> q = engine.posterior(problem, one_dataset_arguments, mask)
    """

    encoder: eqx.Module
    family: eqx.Module
    encoder_recipe: Any = eqx.field(static=True)
    family_recipe: Any = eqx.field(static=True)
    log_obs_scale: float = eqx.field(static=True)

    accepts_any_size: ClassVar[bool] = False
    """One-shot posteriors read at most ``problem.max_obs`` observations."""

    def __init__(self, problem: Problem, *, encoder: Any = "set", family: Any = None, key):
        encoder = resolve_encoder(encoder)
        family = DiagonalNormal() if family is None else family
        if not hasattr(family, "build"):
            raise TypeError(
                f"family: expected a family recipe such as MultivariateNormal(), got "
                f"{type(family).__name__}."
            )
        gives = getattr(encoder, "gives_factors", False)
        if gives != getattr(family, "needs_factors", False):
            raise ValueError(
                f"A {type(encoder).__name__} encoder and a {type(family).__name__} family do not "
                f"go together: the PseudoObservations encoder and the GaussianFactors family "
                f"only work as a pair (the family solves for the posterior the encoder's "
                f"summed factors imply).")
        encoder_key, family_key = jax.random.split(key)
        self.encoder = encoder.build(encoder_key, problem.token_dim, latent_dim=problem.latent_dim)
        self.family = family.build(family_key, problem.latent_dim, self.encoder.out_size + 1)
        self.encoder_recipe = encoder
        self.family_recipe = family
        self.log_obs_scale = math.log(max(problem.max_obs, 2))

    def summarize(self, problem: Problem, arguments, mask: jax.Array) -> jax.Array:
        """The summary of one data set, ``(encoder.out_size + 1,)``."""
        tokens = problem.standardized_tokens(problem.tokens(arguments), mask)
        summary = self.encoder(tokens, mask)
        num_obs = jnp.maximum(jnp.sum(mask), 1).astype(summary.dtype)
        return jnp.concatenate([summary, (jnp.log(num_obs) / self.log_obs_scale)[None]])

    def output(self, problem: Problem, arguments, mask: jax.Array, key=None) -> FamilyOutput:
        """The family's output for one data set (the posterior, and any auxiliary start).

        Args:
            problem: the problem.
            arguments: the model's bound arguments for one unbatched data set.
            mask: ``(N,)`` bool, False for padded observations.
            key: unused (the one-shot posterior is deterministic given the data).
        """
        del key
        context = self.summarize(problem, arguments, mask)

        def log_density(u):
            return problem.log_density(u, arguments, mask)

        return self.family(context, log_density=log_density, anchor=problem.latent_anchor,
                           prior=(problem.prior_loc, problem.prior_scale_tril))

    def posterior(self, problem: Problem, arguments, mask, key=None) -> dist.Distribution:
        """q(u | data) over the flat unconstrained latents of one data set (event ``(D,)``)."""
        return self.output(problem, arguments, mask, key).posterior

    def describe(self) -> dict:
        """The recipes this engine was built from (JSON-able)."""
        return {
            "type": type(self).__name__,
            "encoder": describe_recipe(self.encoder_recipe),
            "family": describe_recipe(self.family_recipe),
        }
