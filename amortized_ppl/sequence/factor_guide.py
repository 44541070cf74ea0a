"""A NumPyro guide over a model's discrete latent sites from an amortized factorized posterior.

:class:`AmortizedFactorGuide` turns the posterior head of a trained
:class:`~amortized_ppl.sequence.monte_carlo.MonteCarloPredictor` into a drop-in NumPyro guide for a
model with one ``Categorical`` site per factor and a sequence observed at ``data_arg``: calling
it with the model's arguments samples every factor site from ``q(factor | sequence)``, so it runs
under ``Predictive``, ``Trace_ELBO`` and ``handlers`` like any guide. The sequence's posterior is
read at the row after its last symbol, so a sequence may hold at most ``max_len - 1`` symbols of
the predictor's trunk.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro import handlers

from amortized_ppl._checks import check_key
from amortized_ppl.sequence.monte_carlo import MonteCarloPredictor

__all__ = ["AmortizedFactorGuide"]


class AmortizedFactorGuide:
    """Guide ``q(factors | x)``: one ``Categorical`` site per factor, independent given ``x``.

    Args:
        model: the NumPyro model; its discrete sites named ``site_names`` are the factors.
        predictor: a trained :class:`MonteCarloPredictor` whose factor sizes match the sites.
        site_names: the factor sites, in the predictor's factor order.
        data_arg: the model argument that carries the symbol sequence ``(T,)``.
    """

    def __init__(
        self,
        model,
        predictor: MonteCarloPredictor,
        site_names: Sequence[str],
        data_arg: str = "symbols",
    ):
        self.model = model
        self.predictor = predictor
        self.site_names = tuple(site_names)
        self.data_arg = data_arg
        if len(self.site_names) != len(predictor.factor_sizes):
            raise ValueError(
                f"site_names: {len(self.site_names)} names for a predictor of "
                f"{len(predictor.factor_sizes)} factors {predictor.factor_sizes}."
            )
        self._check_sites()

    def _check_sites(self) -> None:
        """Every named site must be a discrete sample site of the model with the right size."""
        trace = handlers.trace(handlers.seed(self.model, 0)).get_trace()
        sites = {n: s for n, s in trace.items() if s["type"] == "sample" and not s["is_observed"]}
        for name, size in zip(self.site_names, self.predictor.factor_sizes):
            if name not in sites:
                raise ValueError(
                    f"site_names: {name!r} is not a latent sample site of the model; its latent "
                    f"sites are {sorted(sites)}."
                )
            fn = sites[name]["fn"]
            if not fn.support.is_discrete:
                raise ValueError(f"site {name!r} is continuous; this guide handles discrete sites.")
            upper = getattr(fn.support, "upper_bound", None)
            if upper is not None and int(upper) + 1 != size:
                raise ValueError(
                    f"site {name!r} has {int(upper) + 1} values but the predictor's factor has "
                    f"{size}."
                )

    def _symbols(self, symbols) -> jax.Array:
        symbols = jnp.asarray(symbols)
        if symbols.ndim != 1 or symbols.shape[0] < 1:
            raise ValueError(f"{self.data_arg}: expected one non-empty sequence (T,), got shape "
                             f"{symbols.shape}.")
        limit = self.predictor.trunk.max_len - 1
        if symbols.shape[0] > limit:
            raise ValueError(
                f"{self.data_arg}: {symbols.shape[0]} symbols, but this predictor reads at most "
                f"{limit} (its trunk has max_len={limit + 1} rows and the posterior is read at the "
                "row after the last symbol)."
            )
        return symbols

    def posterior(self, symbols) -> tuple[dist.Categorical, ...]:
        """``q(factor_f | x)`` for one sequence ``(T,)``: one ``Categorical`` per factor."""
        symbols = self._symbols(symbols)
        # Append a placeholder so that the last row has read every real symbol; row T reads x_<T.
        padded = jnp.concatenate([symbols, symbols[-1:]])
        raw = self.predictor.posterior_raw(self.predictor.trunk(padded))[-1]
        return self.predictor.family.distributions(raw)

    def __call__(self, *args, **kwargs):
        symbols = kwargs.get(self.data_arg, args[0] if args else None)
        if symbols is None:
            raise ValueError(f"{self.data_arg}: the guide needs the observed sequence.")
        out = {}
        for name, q in zip(self.site_names, self.posterior(symbols)):
            out[name] = numpyro.sample(name, q)
        return out

    def sample_posterior(self, key, symbols, sample_shape: tuple[int, ...] = ()) -> dict:
        """Draws of every factor site, ``sample_shape`` each, for one sequence ``(T,)``."""
        check_key(key, "key")
        keys = jax.random.split(key, len(self.site_names))
        return {name: q.sample(k, sample_shape)
                for name, q, k in zip(self.site_names, self.posterior(symbols), keys)}
