"""The NumPyro adapter: one guide class for every posterior engine.

:class:`AutoAmortized` follows NumPyro's guide interface (``__call__`` with the model's signature,
``sample_posterior``, ``median``, ``quantiles``, ``get_posterior``), so ``SVI`` and ``Predictive``
take it unchanged, and it accepts a batch of data sets (a leading axis on every data argument)
wherever a posterior is asked for outside a NumPyro program. It holds a
:class:`~amortized_ppl.problem.Problem` (the model described once) and an engine template (an
``equinox`` module whose arrays are the guide's parameters); the posterior itself is the engine's
pure ``output(problem, data set, mask, key)``. Compiled programs are keyed by the problem and the
engine, never by the guide, and every result is fixed by the key passed in.

Set-up is lazy, as in NumPyro's autoguides: a guide made from a model builds its problem on the
first :meth:`AutoAmortized.setup` (``fit`` calls it with the design function and data sizes) or on
the first call inside a NumPyro program (from that data set); a guide made from a problem and an
engine is set up at once. Either way the problem is set once and never replaced.

``AutoAmortizedNormal``, ``AutoAmortizedMultivariateNormal``, ``AutoIterativeAmortizedNormal``
and ``AutoIterativeAmortizedMultivariateNormal`` are this adapter with an engine chosen by their
arguments.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import warnings
from typing import Any, Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import ndtri
from numpyro.contrib.module import eqx_module
from numpyro.distributions.batch_util import promote_batch_shape

from amortized_ppl._checks import check_int, check_key, check_sample_shape, list_some
from amortized_ppl.data import model_signature
from amortized_ppl.encoders.resolve import resolve_encoder
from amortized_ppl.engines import IterativePosterior, OneShotPosterior
from amortized_ppl.families import (
    DiagonalNormal,
    Flow,
    GaussianFactors,
    LaplaceRefined,
    MultivariateNormal,
)
from amortized_ppl.families.base import gaussian_moments
from amortized_ppl.problem import Problem, inspect_problem, problem_from_data

__all__ = [
    "AutoAmortized",
    "AutoAmortizedFlow",
    "AutoAmortizedMultivariateNormal",
    "AutoAmortizedNormal",
    "AutoIterativeAmortizedMultivariateNormal",
    "AutoIterativeAmortizedNormal",
]

# ------------------------------------------------------------------ compiled programs
# Module level, so that the compilation cache is keyed by the problem (compared by identity) and
# the engine's static structure, never by a guide object.
@eqx.filter_jit
def _one_posterior(key, problem: Problem, engine, arguments, mask):
    # Compiled even where NumPyro runs the guide eagerly (SVI's init, Predictive): one
    # compilation instead of dispatching every operation of the engine one by one.
    return engine.output(problem, arguments, mask, key).posterior


@functools.partial(eqx.filter_jit)
def _batched_outputs(key, problem: Problem, engine, arguments, mask):
    keys = jax.random.split(key, mask.shape[0])
    one = lambda k, a, m: engine.output(problem, a, m, k).posterior  # noqa: E731
    return eqx.filter_vmap(one, in_axes=(0, eqx.if_array(0), 0))(keys, arguments, mask)


@functools.partial(eqx.filter_jit)
def _batched_samples(key, problem: Problem, engine, arguments, mask, sample_shape):
    def one(k, a, m):
        output_key, draw_key = jax.random.split(k)
        flat = engine.output(problem, a, m, output_key).posterior.sample(draw_key, sample_shape)
        return problem.sites.constrain(flat)

    keys = jax.random.split(key, mask.shape[0])
    samples = eqx.filter_vmap(one, in_axes=(0, eqx.if_array(0), 0))(keys, arguments, mask)
    return samples, problem.token_excess(arguments, mask)


QUANTILE_DRAWS = 4096
"""Draws per data set behind the quantiles of a non-Gaussian posterior (a flow)."""


@functools.partial(eqx.filter_jit)
def _batched_quantiles(key, problem: Problem, engine, arguments, mask, levels):
    """Marginal quantiles ``(B, Q, D)`` of the flat posterior: exact for a Gaussian, else
    empirical from ``QUANTILE_DRAWS`` draws (fixed by the key)."""

    def one(k, a, m):
        output_key, draw_key = jax.random.split(k)
        posterior = engine.output(problem, a, m, output_key).posterior
        try:
            loc, tril = gaussian_moments(posterior)
        except TypeError:
            draws = posterior.sample(draw_key, (QUANTILE_DRAWS,))
            return jnp.quantile(draws, levels, axis=0)
        scale = jnp.sqrt(jnp.sum(tril**2, axis=-1))  # marginal SDs
        return loc[None, :] + scale[None, :] * ndtri(levels)[:, None]

    keys = jax.random.split(key, mask.shape[0])
    return eqx.filter_vmap(one, in_axes=(0, eqx.if_array(0), 0))(keys, arguments, mask)


def _build_engine(factory, problem: Problem, key):
    """``factory(problem, key=key)``. (Built eagerly: compiling the initialization as one
    program was measured slower, 3.4 s against 1.4 s, for a small one-shot engine.)"""
    return factory(problem, key=key)


# ------------------------------------------------------------------ the adapter
class AutoAmortized:
    """A NumPyro guide whose posterior is an engine's output for the data set at hand.

    Args:
        model: a NumPyro model (set up lazily) or a :class:`~amortized_ppl.problem.Problem`.
        engine: with a model, a factory ``engine(problem, *, key) -> engine module`` (default: a
            :class:`~amortized_ppl.engines.OneShotPosterior` with a diagonal Normal); with a
            problem, a built engine module (its arrays are the initial parameters) or a factory.
        prefix: prefix of the guide's NumPyro site names.
        observed, covariates, max_obs: how the model's arguments form a data set (see
            :func:`~amortized_ppl.problem.inspect_problem`); only with a model.
        ood_detector: an optional :class:`~amortized_ppl.diagnostics.ood.OODDetector`;
            ``sample_posterior`` then warns about data sets far from the training simulations.
        key: with a problem and an engine factory, the key that initializes the engine.

    Examples:
        >>> guide = AutoAmortizedMultivariateNormal(model, newton_steps=8)
        >>> result = fit(jax.random.key(0), guide, design_fn=design_fn, num_obs=(10, 200))
        >>> draws = guide.sample_posterior(jax.random.key(1), result.params, x, y,
        ...                                sample_shape=(1000,))
    """

    def __init__(
        self,
        model: Callable | Problem,
        engine: Any = None,
        *,
        prefix: str = "amortized",
        observed: Sequence[str] | Mapping[str, str] | None = None,
        covariates: Sequence[str] | None = None,
        max_obs: int | None = None,
        ood_detector=None,
        key: jax.Array | None = None,
    ):
        problem = model if isinstance(model, Problem) else None
        model = problem.model if problem is not None else model
        if not callable(model):
            raise TypeError(f"model: expected a callable NumPyro model, got {type(model).__name__}.")
        self.model = model
        self.signature = model_signature(model)
        self.prefix = str(prefix)
        if problem is not None and any(v is not None for v in (observed, covariates, max_obs)):
            raise ValueError(
                "observed, covariates and max_obs describe how to build a problem; the guide was "
                "given a built one (pass them to inspect_problem instead)."
            )
        arguments = (observed.values() if isinstance(observed, Mapping)
                     else () if observed is None else observed)
        unknown = [a for a in arguments if a not in self.signature.parameters]
        if unknown:
            raise ValueError(
                f"observed: {unknown} are not arguments of the model; its arguments are "
                f"{tuple(self.signature.parameters)}."
            )
        self._inspect_options = {"observed": observed, "covariates": covariates,
                                 "max_obs": max_obs}
        self._ood_detector = ood_detector
        self._problem: Problem | None = None
        self._template = None
        if engine is None:
            engine = functools.partial(OneShotPosterior, family=DiagonalNormal())
        if isinstance(engine, eqx.Module):
            if problem is None:
                raise ValueError(
                    "engine: a built engine belongs to a problem; pass the problem it was built "
                    "for as the first argument (or pass an engine factory with a model)."
                )
            self._engine_factory = None
            self._set(problem, engine)
        elif callable(engine):
            self._engine_factory = engine
            if problem is not None:
                key = check_key(jax.random.key(0) if key is None else key, "key")
                self._set(problem, _build_engine(engine, problem, key))
        else:
            raise TypeError(
                f"engine: expected an engine module or a factory (problem, *, key) -> engine, "
                f"got {type(engine).__name__}."
            )

    # ------------------------------------------------------------------ set-up
    @property
    def problem(self) -> Problem:
        """The problem (the model described once); raises before set-up."""
        self._require_setup()
        return self._problem

    @property
    def ood_detector(self):
        """The out-of-distribution detector ``sample_posterior`` warns through, or None (set it
        with :meth:`with_ood_detector`, which returns a new guide)."""
        return self._ood_detector

    @property
    def is_setup(self) -> bool:
        return self._problem is not None

    @property
    def param_name(self) -> str:
        """The NumPyro param site holding the engine's arrays."""
        return f"{self.prefix}$net$params"

    @property
    def max_obs(self) -> int | None:
        """The largest data set accepted (None: any size)."""
        self._require_setup()
        return None if self._template.accepts_any_size else self._problem.max_obs

    def _set(self, problem: Problem, template) -> None:
        if self._problem is not None:
            raise RuntimeError("The guide is set up already; build a new guide for a new problem.")
        if problem.model is not self.model:
            raise ValueError("The problem was built for a different model than the guide's.")
        self._problem, self._template = problem, template

    def setup(self, key: jax.Array, design_fn: Callable, num_obs, *, num_pilot: int = 1024):
        """Inspect the model on simulations (:func:`inspect_problem`) and build the engine.

        Args:
            key: PRNG key (traces, pilot simulations, the engine's initial parameters).
            design_fn: ``design_fn(key, num_obs) -> (args, kwargs)``: the model's inputs for one
                data set without its observations.
            num_obs: the number of observations, or an inclusive ``(low, high)`` range.
            num_pilot: simulated data sets for the token and prior statistics.

        Returns:
            The guide itself.
        """
        check_key(key, "key")
        if self.is_setup:
            raise RuntimeError("The guide is set up already; build a new guide for a new problem.")
        problem_key, engine_key = jax.random.split(key)
        problem = inspect_problem(problem_key, self.model, design_fn, num_obs,
                                  num_pilot=num_pilot, **self._inspect_options)
        self._set(problem, _build_engine(self._engine_factory, problem, engine_key))
        return self

    def _setup_from_data(self, key, bound) -> None:
        problem_key, engine_key = jax.random.split(key)
        problem = problem_from_data(problem_key, self.model, bound, **self._inspect_options)
        self._set(problem, _build_engine(self._engine_factory, problem, engine_key))

    def _require_setup(self) -> None:
        if self._problem is None:
            raise RuntimeError(
                "The guide is not set up: call `guide.setup(key, design_fn, num_obs)` or "
                "`fit(...)` first, or run it once inside NumPyro's SVI with a data set."
            )

    def init_params(self) -> dict[str, Any]:
        """The guide's initial parameters, as NumPyro's ``SVI`` would register them."""
        self._require_setup()
        return {self.param_name: eqx.filter(self._template, eqx.is_inexact_array)}

    def engine(self, params: Mapping[str, Any]):
        """The engine module with the arrays in ``params`` (as ``fit`` or ``SVI`` return them)."""
        self._require_setup()
        if not isinstance(params, Mapping) or self.param_name not in params:
            got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
            raise KeyError(
                f"params: no entry {self.param_name!r}; got {got}. Were these parameters "
                "trained for this guide (same prefix)?"
            )
        return eqx.combine(params[self.param_name], eqx.filter(
            self._template, eqx.is_inexact_array, inverse=True))

    def with_ood_detector(self, detector) -> "AutoAmortized":
        """A copy of this guide (same class, problem and engine) that warns through ``detector``."""
        self._require_setup()
        if detector is not None and not callable(getattr(detector, "p_values", None)):
            raise TypeError(
                f"detector: expected an OODDetector from fit_ood_detector (or None), got "
                f"{type(detector).__name__}.")
        guide = copy.copy(self)
        guide._ood_detector = detector
        return guide

    # ------------------------------------------------------------------ data
    def prepare(self, *args, data_mask=None, **kwargs):
        """Validate the model's arguments for one data set or a batch.

        Returns:
            ``(arguments, mask, is_batch)``: bound arguments whose arrays carry a leading
            data-set axis ``B`` (1 for one data set), the observation mask ``(B, N)`` and whether
            a batch was given.
        """
        problem = self.problem
        return problem.prepare(problem.bind(args, kwargs), data_mask, max_obs=self.max_obs)

    # ------------------------------------------------------------------ NumPyro API
    def __call__(self, *args, **kwargs) -> dict[str, jax.Array]:
        """Run the guide as a NumPyro program (inside ``SVI``, ``Predictive``, handlers).

        Takes the model's arguments for one data set, registers the engine's arrays as one
        ``numpyro.param`` site and emits every latent site of the model.
        """
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        bound = dict(bound.arguments)
        if not self.is_setup:
            self._setup_from_data(numpyro.prng_key(), bound)
        engine = eqx_module(f"{self.prefix}$net", self._template)
        problem = self._problem
        arguments, mask, is_batch = problem.prepare(bound, max_obs=self.max_obs)
        if is_batch:
            raise ValueError(
                "Inside a NumPyro program the guide takes one data set (as the model does); for a "
                "batch of data sets use `guide.sample_posterior(key, params, *batched_args)`."
            )
        one = {k: v[0] if isinstance(v, jax.Array) else v for k, v in arguments.items()}
        posterior = _one_posterior(numpyro.prng_key(), problem, engine, one, jnp.asarray(mask[0]))
        flat = numpyro.sample(f"_{self.prefix}_latent", posterior, infer={"is_auxiliary": True})
        result = {}
        unconstrained = problem.sites.unflatten(flat)
        for site in problem.sites.latents:
            u = unconstrained[site.name]
            value = site.transform(u)
            log_density = -site.transform.log_abs_det_jacobian(u, value)
            extra = jnp.ndim(log_density)
            log_density = jnp.sum(log_density, axis=tuple(range(-extra, 0))) if extra else log_density
            if numpyro.get_mask() is False:
                log_density = 0.0
            result[site.name] = numpyro.sample(
                site.name, dist.Delta(value, log_density=log_density, event_dim=site.event_ndim)
            )
        return result

    def get_posterior(self, params, *args, data_mask=None, rng_key=None, **kwargs):
        """q(u | data) over the flat unconstrained latent vector (site order: ``problem.sites``).

        With a batch of data sets (a leading axis on the data arguments) the batch shape is
        ``(num_datasets,)``; for one data set it is ``()``. ``data_mask`` as in
        :meth:`sample_posterior`. ``rng_key`` (a keyword; default ``jax.random.key(0)``) is used
        only by engines that refine.
        """
        arguments, mask, is_batch = self.prepare(*args, data_mask=data_mask, **kwargs)
        key = _default_key(rng_key)
        posterior = _batched_outputs(key, self.problem, self.engine(params), arguments,
                                     jnp.asarray(mask))
        if not is_batch:
            return jax.tree.map(lambda v: v[0], posterior)
        # Distributions made inside vmap record the unbatched shape; NumPyro's promotion fixes it.
        return promote_batch_shape(posterior)

    def sample_posterior(
        self,
        rng_key,
        params,
        *args,
        sample_shape: tuple[int, ...] = (),
        data_mask: jax.Array | None = None,
        **kwargs,
    ) -> dict[str, jax.Array]:
        """Draw constrained posterior samples keyed by site name.

        Args:
            rng_key: PRNG key; the draws (and any refinement) are fixed by it.
            params: guide parameters (from ``fit`` or ``SVI``).
            *args, **kwargs: the model's arguments for one data set, or for a batch of data sets
                with a leading axis on every data argument.
            sample_shape: shape of the draws per data set.
            data_mask: optional bool array, ``(N,)`` or ``(num_datasets, N)``: True for real
                observations, False for padding, so data sets of different sizes go through in
                one call (padded rows must hold finite values; they are ignored).

        Returns:
            site name -> array of shape ``sample_shape + site_shape`` for one data set, or
            ``(num_datasets,) + sample_shape + site_shape`` for a batch.
        """
        check_key(rng_key)
        arguments, mask, is_batch = self.prepare(*args, data_mask=data_mask, **kwargs)
        engine = self.engine(params)
        samples, excess = _batched_samples(rng_key, self.problem, engine, arguments,
                                           jnp.asarray(mask), check_sample_shape(sample_shape))
        self._warn_outside_training(mask, excess)
        if self.ood_detector is not None:
            self._warn_out_of_distribution(engine, arguments, mask)
        return samples if is_batch else jax.tree.map(lambda v: v[0], samples)

    def _warn_outside_training(self, mask, excess) -> None:
        reasons = self.problem.outside_training(mask, excess)
        flagged = [(i, r) for i, r in enumerate(reasons) if r]
        if flagged:
            listed = list_some([f"data set {i}: {r}" for i, r in flagged])
            warnings.warn(
                f"Outside what the guide was trained on: {listed}. The network "
                "extrapolates there and its posterior may be confidently wrong; check it with "
                "`amortized_ppl.ladder.trust_ladder` or NUTS.",
                RuntimeWarning,
                stacklevel=3,
            )

    def _warn_out_of_distribution(self, engine, arguments, mask) -> None:
        from amortized_ppl.diagnostics.ood import ood_features

        features = ood_features(self.problem, engine, arguments, mask)
        p_values = self.ood_detector.p_values(features, np.asarray(mask).sum(axis=1))
        flagged = np.flatnonzero(p_values < self.ood_detector.level)
        if flagged.size:
            listed = list_some([f"{i} (p={p_values[i]:.2g})" for i in flagged], 10, ", ")
            warnings.warn(
                f"Data set(s) {listed} look out of the training distribution (their "
                "encoder summaries lie beyond the training simulations); the amortized posterior "
                "may be wrong there. Check it with `amortized_ppl.ladder.trust_ladder`.",
                RuntimeWarning,
                stacklevel=3,
            )

    def median(self, params, *args, **kwargs) -> dict[str, jax.Array]:
        """Posterior median of each site: the flat posterior's marginal median mapped into the
        support (a Gaussian's location; a flow's from draws, see :meth:`quantiles`).

        Exact for elementwise transforms (the support's bijection is monotone per coordinate).
        """
        return self.quantiles(params, [0.5], *args, **kwargs, _squeeze=True)

    def quantiles(
        self, params, quantiles, *args, data_mask=None, rng_key=None, _squeeze: bool = False,
        **kwargs
    ):
        """Marginal posterior quantiles of each site: exact for Gaussian posteriors, from
        ``QUANTILE_DRAWS`` draws for a flow (fixed by ``rng_key``).

        Args:
            params: guide parameters.
            quantiles: a sequence of levels in (0, 1).
            *args, **kwargs: the model's arguments (one data set or a batch).
            data_mask: as in :meth:`sample_posterior`.
            rng_key: a PRNG key (default ``jax.random.key(0)``), used by engines that refine and
                by the draws behind a flow's quantiles.

        Returns:
            site name -> array of shape ``(len(quantiles),) + site_shape`` (with a leading
            data-set axis for a batch).
        """
        q = jnp.asarray(quantiles)
        if q.ndim == 0:
            raise ValueError(f"quantiles: expected a sequence of levels such as [{quantiles!r}], "
                             f"got the scalar {quantiles!r}.")
        if q.ndim != 1 or not bool(jnp.all((q > 0) & (q < 1))):
            raise ValueError(f"quantiles: expected levels in (0, 1), got {quantiles!r}.")
        problem = self.problem
        # Mapping per-coordinate Normal quantiles through the bijection is exact only when it acts
        # coordinate by coordinate; a simplex or a Cholesky factor mixes coordinates.
        mixed = [s.name for s in problem.sites.latents if s.unconstrained_shape != s.shape]
        if mixed:
            raise NotImplementedError(
                f"quantiles/median: sites {mixed} have a support whose transform mixes coordinates "
                "(unconstrained shape differs), so marginal quantiles cannot be mapped exactly; "
                "use sample_posterior and empirical quantiles."
            )
        arguments, mask, is_batch = self.prepare(*args, data_mask=data_mask, **kwargs)
        flat = _batched_quantiles(_default_key(rng_key), problem, self.engine(params),
                                  arguments, jnp.asarray(mask), q)  # (B, Q, D)
        values = problem.sites.constrain(flat)
        if _squeeze:
            values = jax.tree.map(lambda v: v[:, 0], values)
        return values if is_batch else jax.tree.map(lambda v: v[0], values)

    def describe(self) -> dict:
        """A JSON-able description: the prefix, the problem and the engine."""
        self._require_setup()
        return {
            "prefix": self.prefix,
            "problem": self._problem.describe(),
            "engine": self._template.describe(),
        }


def _default_key(rng_key):
    return jax.random.key(0) if rng_key is None else check_key(rng_key)


# ------------------------------------------------------------------ the named guides
def _one_shot_factory(family, newton_steps, encoder, summary_size, hidden_size, num_heads,
                      num_blocks, num_inducing, head_width, head_depth, newton_starts=1):
    newton_steps = check_int(newton_steps, "newton_steps", 0)
    newton_starts = check_int(newton_starts, "newton_starts", 1)
    if newton_starts > 1 and not newton_steps:
        raise ValueError(f"newton_starts={newton_starts} needs Newton steps (newton_steps > 0).")
    encoder = resolve_encoder(encoder, summary_size=summary_size, hidden_size=hidden_size,
                              num_heads=num_heads, num_blocks=num_blocks,
                              num_inducing=num_inducing)
    if getattr(encoder, "gives_factors", False):
        if newton_steps:
            raise ValueError(
                f"encoder={type(encoder).__name__}(...) makes the network alone's posterior "
                f"from summed pseudo-observations; it does not combine with Newton steps "
                f"(newton_steps={newton_steps}): use newton_steps=0, or the set encoder.")
        family = GaussianFactors(family)
    if newton_steps:
        family = LaplaceRefined(family, num_steps=int(newton_steps), head_width=head_width,
                                head_depth=head_depth, num_starts=newton_starts)
    return functools.partial(OneShotPosterior, encoder=encoder, family=family)


class _OneShotGuide(AutoAmortized):
    family: type = DiagonalNormal

    def __init__(
        self,
        model: Callable,
        *,
        prefix: str = "amortized",
        observed: Sequence[str] | Mapping[str, str] | None = None,
        covariates: Sequence[str] | None = None,
        max_obs: int | None = None,
        summary_size: int = 32,
        hidden_size: int = 32,
        num_heads: int = 4,
        num_blocks: int = 1,
        num_inducing: int | None = 16,
        head_width: int = 128,
        head_depth: int = 2,
        newton_steps: int = 0,
        encoder: Any = "set",
        newton_starts: int = 1,
    ):
        family = self._family(head_width, head_depth)
        factory = _one_shot_factory(family, newton_steps, encoder, summary_size, hidden_size,
                                    num_heads, num_blocks, num_inducing, head_width, head_depth,
                                    newton_starts)
        super().__init__(model, factory, prefix=prefix, observed=observed,
                         covariates=covariates, max_obs=max_obs)

    def _family(self, head_width: int, head_depth: int):
        return type(self).family(head_width=head_width, head_depth=head_depth)


class AutoAmortizedNormal(_OneShotGuide):
    """A one-shot amortized guide with a diagonal Normal posterior in unconstrained space.

    The data set (covariates and observations) is read by a permutation-invariant Set
    Transformer (``encoder="sequence"``: an order-aware encoder for time series, whose data sets
    are prefixes); the summary gives the posterior over the model's global latents, mapped into
    each site's support by ``biject_to``.

    Args:
        model: a NumPyro model whose observations enter through arguments (``y=None``) and sit
            in a plate, with continuous global latents.
        prefix, observed, covariates, max_obs: as for :class:`AutoAmortized`.
        summary_size, hidden_size, num_heads, num_blocks, num_inducing: the encoder's settings.
        head_width, head_depth: the MLP that maps the summary to the posterior's parameters.
        newton_steps: when positive, the family is wrapped in
            :class:`~amortized_ppl.families.LaplaceRefined`: this many damped Newton steps on
            the model's log joint from a point the network proposes, and the network corrects
            the Laplace fit where they end. 0 gives a pure simulation-based network.
        encoder: ``"set"``, ``"sequence"`` or an encoder recipe;
            :class:`~amortized_ppl.encoders.PseudoObservations` (with ``newton_steps=0``) wraps
            the family in :class:`~amortized_ppl.families.GaussianFactors`: each observation a
            Gaussian factor, their sum the posterior the family corrects (the network alone's
            best recipe measured, ``benchmarks/results/network_alone_factors.json``).
        newton_starts: Newton runs from that many proposed starts; above 1 the posterior is a
            mixture of the corrected fits weighted by each mode's Laplace evidence (posteriors
            with several modes).
    """

    family = DiagonalNormal


class AutoAmortizedMultivariateNormal(_OneShotGuide):
    """A one-shot amortized guide with a full-rank Normal posterior (see
    :class:`AutoAmortizedNormal` for the arguments)."""

    family = MultivariateNormal


class AutoAmortizedFlow(_OneShotGuide):
    """A one-shot amortized guide whose posterior is a normalizing flow (see
    :class:`~amortized_ppl.families.Flow`).

    With ``newton_steps > 0`` the flow acts in the whitened frame of the corrected Laplace fit:
    untrained, the guide is the Laplace fit; training learns the departure from it (skew, bounds,
    heavy tails, several modes). With ``newton_steps=0`` the network alone gives the posterior.

    Args:
        model, prefix, observed, covariates, max_obs, encoder: as for
            :class:`AutoAmortizedNormal`.
        summary_size, hidden_size, num_heads, num_blocks, num_inducing: as for
            :class:`AutoAmortizedNormal`.
        head_width, head_depth, newton_steps: as for :class:`AutoAmortizedNormal`
            (``head_width``/``head_depth`` size the Gaussian part).
        flow: a :class:`~amortized_ppl.families.Flow` recipe (default: ``Flow()``, four
            rational-quadratic spline coupling layers over a full-rank Gaussian).
            ``Flow(layers="elementwise")`` sets its layers once per data set, not per draw:
            much faster sampling, less expressive (no value-dependent scales, e.g. funnels).
    """

    def __init__(self, model: Callable, *, flow: Any = None, **kwargs):
        flow = Flow() if flow is None else flow
        if not isinstance(flow, Flow):
            raise TypeError(f"flow: expected a Flow recipe such as Flow(num_layers=4), got "
                            f"{type(flow).__name__}.")
        self._flow = flow
        super().__init__(model, **kwargs)

    def _family(self, head_width: int, head_depth: int):
        if self._flow.gaussian is not None:
            return self._flow
        return dataclasses.replace(
            self._flow, gaussian=MultivariateNormal(head_width=head_width, head_depth=head_depth))


class _IterativeGuide(AutoAmortized):
    full_rank: bool = True

    def __init__(
        self,
        model: Callable,
        *,
        prefix: str = "iterative",
        observed: Sequence[str] | Mapping[str, str] | None = None,
        covariates: Sequence[str] | None = None,
        batch_size: int = 256,
        num_passes: int = 3,
        min_steps: int = 8,
        memory_size: int = 32,
        summary_size: int = 16,
        hidden_size: int = 32,
        num_heads: int = 4,
        num_blocks: int = 1,
        num_inducing: int | None = 16,
        head_width: int = 64,
        head_depth: int = 2,
        max_tokens: int = 128,
    ):
        encoder = resolve_encoder("set", summary_size=summary_size, hidden_size=hidden_size,
                                  num_heads=num_heads, num_blocks=num_blocks,
                                  num_inducing=num_inducing)
        factory = functools.partial(
            IterativePosterior, encoder=encoder, memory_size=memory_size, head_width=head_width,
            head_depth=head_depth, max_tokens=max_tokens, full_rank=type(self).full_rank,
            batch_size=batch_size, num_passes=num_passes, min_steps=min_steps)
        super().__init__(model, factory, prefix=prefix, observed=observed, covariates=covariates)


class AutoIterativeAmortizedNormal(_IterativeGuide):
    """An iterative guide with a diagonal Gaussian state (diagonal curvature in the update).

    Its state (a Gaussian over the model's flat unconstrained latents, plus a recurrent memory)
    starts from the prior and is refined one mini-batch at a time; inside NumPyro (``__call__``,
    ``sample_posterior``, ...) the whole data set is refined in memory for ``num_passes`` passes of
    ``batch_size``. Train with :func:`amortized_ppl.iterative.fit_iterative`; refine data that
    does not fit in memory with :func:`amortized_ppl.iterative.refine_stream`.

    Args:
        model: a NumPyro model with continuous global latents and a plate of observations.
        prefix, observed, covariates: as for :class:`AutoAmortized`.
        batch_size, num_passes, min_steps: the in-memory refinement (see
            :class:`~amortized_ppl.engines.IterativePosterior`).
        memory_size, summary_size, hidden_size, num_heads: the update network.
        num_blocks, num_inducing, head_width, head_depth, max_tokens: the update network.
    """

    full_rank = False


class AutoIterativeAmortizedMultivariateNormal(_IterativeGuide):
    """An iterative guide with a full-rank Gaussian state (see
    :class:`AutoIterativeAmortizedNormal` for the arguments)."""

    full_rank = True
