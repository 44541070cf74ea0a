"""Amortized guides: NumPyro guides whose posterior is a network's output for the data set at hand.

``AutoAmortizedNormal`` and ``AutoAmortizedMultivariateNormal`` take the model's arguments, read the
data set (covariates and observations) with a permutation-invariant Set Transformer (or, with
``encoder="sequence"``, an order-aware sequence encoder for time series), and return a
Normal posterior over the model's global latents in unconstrained space, mapped into each site's
support by ``biject_to``. They follow NumPyro's guide interface (``__call__`` with the model's
signature, ``sample_posterior``, ``median``, ``quantiles``, ``get_posterior``), so ``SVI`` and
``Predictive`` take them unchanged, and they accept a batch of data sets (a leading axis on every
data argument) wherever a posterior is asked for outside a NumPyro program.
"""

from __future__ import annotations

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

from amortized_ppl._checks import check_key
from amortized_ppl.data import (
    DataSpec,
    bind_arguments,
    build_data_spec,
    default_observed_arguments,
    make_tokens,
    model_signature,
    validate_dataset,
)
from amortized_ppl.density import log_joint
from amortized_ppl.families import DiagonalNormal, MultivariateNormal
from amortized_ppl.guides.network import AmortizedNetwork, check_encoder
from amortized_ppl.laplace import newton_laplace
from amortized_ppl.simulate import build_simulator, check_num_obs
from amortized_ppl.sites import ModelSites, inspect_model, trace_model

__all__ = ["AutoAmortizedGuide", "AutoAmortizedNormal", "AutoAmortizedMultivariateNormal"]


class AutoAmortizedGuide:
    """Base class of amortized guides; use a subclass that fixes the posterior family.

    Args:
        model: a NumPyro model whose observations enter through arguments (``y=None``) and sit in
            a plate, with continuous global latents.
        prefix: prefix of the guide's NumPyro site names.
        observed: the observed sites, as names (the argument carrying each has the same name) or
            a mapping ``{site: argument}``. By default, every argument that defaults to ``None``
            and names a sample site of the model.
        covariates: names of per-observation covariate arguments; by default every array
            argument whose leading axis has one row per observation.
        max_obs: the largest data set the guide accepts; by default the top of the training range.
        summary_size, hidden_size, num_heads, num_blocks, num_inducing: Set Transformer settings
            (``num_inducing`` points of induced set attention keep the cost linear in N; None
            gives full self-attention). The defaults train in minutes on a 2-core CPU.
        encoder: ``"set"`` (default) reads the observations as an exchangeable set with a Set
            Transformer; ``"sequence"`` reads them as a time series, in order (time steps along
            the data plate), with a :class:`~amortized_ppl.encoders.sequence.SequenceEncoder`
            (local convolutions, position features, full self-attention; ``num_inducing`` is
            ignored). Data sets are then prefixes: the mask must mark the first ``n`` steps.
        head_width, head_depth: the MLP that maps the summary to the posterior parameters.
        newton_steps: when positive, the guide also reads the model's joint density: it takes
            this many damped Newton steps on log p(theta, data) in unconstrained space from a
            point the network proposes, and the network outputs corrections to the Laplace
            approximation where the steps end (its location and scale feed the network too).
            Exact for linear-Gaussian models; costs ``newton_steps + 1`` Hessians of the log
            joint per data set. 0 gives a pure simulation-based network.

    Examples:
        >>> guide = AutoAmortizedMultivariateNormal(model)
        >>> result = fit(jax.random.key(0), guide, design_fn=design_fn, num_obs=(10, 200))
        >>> draws = guide.sample_posterior(jax.random.key(1), result.params, x, y,
        ...                                sample_shape=(1000,))
    """

    family_cls: type = DiagonalNormal

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
        encoder: str = "set",
    ):
        if not callable(model):
            raise TypeError(f"model: expected a callable NumPyro model, got {type(model).__name__}.")
        self.model = model
        self.prefix = prefix
        self.signature = model_signature(model)
        if observed is not None and not isinstance(observed, Mapping):
            observed = {name: name for name in observed}
        self._observed_arg = None if observed is None else dict(observed)
        for arg in (self._observed_arg or {}).values():
            if arg not in self.signature.parameters:
                raise ValueError(
                    f"observed: {arg!r} is not an argument of the model; its arguments are "
                    f"{tuple(self.signature.parameters)}."
                )
        self._covariates = None if covariates is None else tuple(covariates)
        self.max_obs = max_obs
        if int(newton_steps) < 0:
            raise ValueError(f"newton_steps: expected an int >= 0, got {newton_steps}.")
        self.newton_steps = int(newton_steps)
        self.network_config = dict(
            summary_size=summary_size,
            hidden_size=hidden_size,
            num_heads=num_heads,
            num_blocks=num_blocks,
            num_inducing=num_inducing,
            head_width=head_width,
            head_depth=head_depth,
            encoder=check_encoder(encoder),
        )
        self.sites: ModelSites | None = None
        self.spec: DataSpec | None = None
        self.family = None
        self._network: AmortizedNetwork | None = None
        self._sample_jit = eqx.filter_jit(self._sample_impl)
        # An optional `diagnostics.ood.OODDetector`; when set, sampling warns about data sets
        # whose summaries lie far from the training simulations.
        self.ood_detector = None

    # ------------------------------------------------------------------ set-up
    @property
    def is_setup(self) -> bool:
        return self._network is not None

    @property
    def param_name(self) -> str:
        """The NumPyro param site holding the network's arrays."""
        return f"{self.prefix}$net$params"

    def setup(
        self,
        key: jax.Array,
        design_fn: Callable[[jax.Array, int], tuple[tuple, dict]],
        num_obs: int | tuple[int, int],
        *,
        num_pilot: int = 256,
    ) -> "AutoAmortizedGuide":
        """Trace the model on simulated data sets and build the network.

        Args:
            key: PRNG key.
            design_fn: ``design_fn(key, num_obs) -> (args, kwargs)``: the model's inputs for one
                data set without its observations (e.g. covariates).
            num_obs: the number of observations, or an inclusive ``(low, high)`` range.
            num_pilot: simulated data sets used to standardize the tokens.

        Returns:
            The guide itself, set up.
        """
        check_key(key, "key")
        low, high = check_num_obs(num_obs)
        trace_key, other_key, pilot_key, net_key = jax.random.split(key, 4)
        bound, trace = self._prior_predictive(trace_key, design_fn, high)
        observed = self._observed_arguments(trace)
        other_bound = None
        if low != high:
            other_bound, other_trace = self._prior_predictive(other_key, design_fn, low)
            for site, arg in observed.items():
                other_bound[arg] = other_trace[site]["value"]
        for site, arg in observed.items():
            bound[arg] = trace[site]["value"]
        sites = inspect_model(
            self.model,
            (),
            bound,
            key=trace_key,
            num_obs=high,
            other_kwargs=other_bound,
        )
        self._check_observed_sites(sites, observed)
        spec = build_data_spec(self.signature, bound, sites, observed, high, self._covariates)
        simulate = build_simulator(self.model, sites, spec, design_fn, (low, high))
        pilot = simulate(pilot_key, num_pilot)
        tokens = pilot.tokens.reshape(-1, spec.token_dim)
        weights = pilot.mask.reshape(-1, 1).astype(tokens.dtype)
        loc = jnp.sum(tokens * weights, 0) / jnp.sum(weights)
        scale = jnp.sqrt(jnp.sum((tokens - loc) ** 2 * weights, 0) / jnp.sum(weights))
        anchor = jnp.median(pilot.latents, axis=0)
        max_obs = high if self.max_obs is None else self.max_obs
        self._build(sites, spec, loc, scale, anchor, max_obs, net_key)
        return self

    def _prior_predictive(self, key, design_fn, num_obs):
        args, kwargs = design_fn(jax.random.fold_in(key, 1), num_obs)
        bound = bind_arguments(self.signature, tuple(args), dict(kwargs))
        if self._observed_arg is not None:
            for arg in self._observed_arg.values():
                bound[arg] = None
        trace = trace_model(self.model, key, (), bound)
        return bound, trace

    def _observed_arguments(self, trace) -> dict[str, str]:
        if self._observed_arg is not None:
            for site, arg in self._observed_arg.items():
                if site not in trace:
                    raise ValueError(
                        f"observed: the model has no sample site {site!r}; its sample sites are "
                        f"{[n for n, s in trace.items() if s['type'] == 'sample']}."
                    )
                if arg not in self.signature.parameters:
                    raise ValueError(
                        f"observed: {arg!r} is not an argument of the model {self.signature}."
                    )
            return dict(self._observed_arg)
        observed = default_observed_arguments(self.signature, trace)
        if not observed:
            raise ValueError(
                "Cannot tell which sites are observed: no argument of the model defaults to None "
                "and shares its name with a sample site (the NumPyro convention `y=None` feeding "
                "`numpyro.sample('y', ..., obs=y)`). Pass `observed={'site': 'argument'}`."
            )
        return observed

    @staticmethod
    def _check_observed_sites(sites: ModelSites, observed: Mapping[str, str]):
        missing = [s for s in observed if s not in sites.observed]
        if missing:
            raise ValueError(
                f"observed: the sites {missing} did not become observed when their argument was "
                f"given; check that the model passes it as `obs=`."
            )

    def _build(self, sites, spec, token_loc, token_scale, anchor, max_obs, key):
        self.sites, self.spec = sites, spec
        self.max_obs = int(max_obs)
        self.family = self.family_cls(sites.latent_dim)
        token_scale = jnp.where(token_scale > 1e-6, token_scale, 1.0)
        self._network = AmortizedNetwork(
            token_loc,
            token_scale,
            self.family.num_params,
            latent_anchor=anchor,
            num_extra=2 * sites.latent_dim if self.newton_steps else 0,
            max_obs=self.max_obs,
            key=key,
            **self.network_config,
        )
        # A fresh compiled sampler per set-up: the old one closed over the old sites and spec.
        self._sample_jit = eqx.filter_jit(self._sample_impl)
        # An optional `diagnostics.ood.OODDetector`; when set, sampling warns about data sets
        # whose summaries lie far from the training simulations.
        self.ood_detector = None

    def _setup_from_data(self, key, bound):
        """Lazy set-up from a real data set, for use inside NumPyro's ``SVI`` without ``setup``."""
        trace = trace_model(self.model, key, (), bound)
        if self._observed_arg is not None:
            observed = self._observed_arguments(trace)
        else:
            observed = {}
            for name, site in trace.items():
                if site["type"] == "sample" and site["is_observed"]:
                    for arg, value in bound.items():
                        if value is not None and value is site["value"]:
                            observed[name] = arg
            observed = observed or default_observed_arguments(self.signature, trace)
        for arg in observed.values():
            if bound.get(arg) is None:
                raise ValueError(f"The guide needs the observations: argument {arg!r} is None.")
        sites = inspect_model(self.model, (), bound, key=key)
        self._check_observed_sites(sites, observed)
        first = next(iter(observed))
        num_obs = jnp.shape(bound[observed[first]])[sites.observed_axes[first]]
        spec = build_data_spec(self.signature, bound, sites, observed, num_obs, self._covariates)
        tokens = make_tokens(spec, sites, bound)
        loc, scale = jnp.mean(tokens, 0), jnp.std(tokens, 0)
        anchor = jnp.zeros(sites.latent_dim)
        self._build(sites, spec, loc, scale, anchor, self.max_obs or num_obs, key)

    def _require_setup(self):
        if not self.is_setup:
            raise RuntimeError(
                "The guide is not set up: call `guide.setup(key, design_fn, num_obs)` or "
                "`fit(...)` first, or run it once inside NumPyro's SVI with a data set."
            )

    def init_params(self) -> dict[str, Any]:
        """The guide's initial parameters, as NumPyro's ``SVI`` would register them."""
        self._require_setup()
        arrays, _ = eqx.partition(self._network, eqx.is_inexact_array)
        return {self.param_name: arrays}

    def network(self, params: Mapping[str, Any]) -> AmortizedNetwork:
        """The network with the arrays in ``params`` (as returned by SVI or ``fit``)."""
        self._require_setup()
        if self.param_name not in params:
            raise KeyError(
                f"params: no entry {self.param_name!r}; got keys {sorted(params)}. Were these "
                "parameters trained for this guide (same prefix)?"
            )
        _, static = eqx.partition(self._network, eqx.is_inexact_array)
        return eqx.combine(params[self.param_name], static)

    # --------------------------------------------------------------- the core
    def posterior_params(self, network: AmortizedNetwork, tokens, mask, arguments):
        """Raw family parameters, the Laplace base and the initial guess for one data set.

        Args:
            network: the network with its parameters.
            tokens: shape ``(N, token_dim)``; mask: shape ``(N,)`` bool.
            arguments: the model's bound arguments for this data set (observations included).

        Returns:
            ``(raw, base, initial)``: raw outputs ``(num_params,)``; the Laplace fit
            ``(loc (D,), scale_tril (D, D))`` after the Newton steps, or None; and the network's
            initial diagonal Normal ``(loc (D,), scale (D,))`` where the steps start, or None.
        """
        summary = network.summarize(tokens, mask)
        if not self.newton_steps:
            return network.correct(summary), None, None
        sites = self.sites

        def log_density(u):
            latents = sites.constrain(u)
            log_p = log_joint(self.model, sites, arguments, latents, mask)
            return log_p + sites.log_abs_det_jacobian(u)

        initial = network.initial(summary)
        start = jax.lax.stop_gradient(initial[0])
        laplace = newton_laplace(log_density, start, num_steps=self.newton_steps)
        base = jax.lax.stop_gradient((laplace.loc, laplace.scale_tril))
        log_sd = jnp.log(jnp.sqrt(jnp.sum(base[1] ** 2, axis=-1)))
        raw = network.correct(summary, jnp.concatenate([base[0] - start, log_sd]))
        return raw, base, initial

    def _batched_params(self, params, tokens, mask, arguments):
        network = self.network(params)
        one = lambda t, m, a: self.posterior_params(network, t, m, a)  # noqa: E731
        return eqx.filter_vmap(one, in_axes=(0, 0, eqx.if_array(0)))(tokens, mask, arguments)

    def posterior_from_data(
        self, params, tokens, mask, arguments, *, with_initial: bool = False
    ):
        """q(u | data) over the flat unconstrained latents for a batch of data sets.

        Args:
            params: guide parameters.
            tokens: shape ``(B, N, token_dim)``.
            mask: shape ``(B, N)`` bool.
            arguments: the model's bound arguments; every array carries the leading ``B`` axis.
            with_initial: also return the network's initial guess as a diagonal Normal (None
                without Newton refinement); the losses train it as an auxiliary target.

        Returns:
            A distribution with batch shape ``(B,)`` and event shape ``(latent_dim,)`` (and the
            initial guess's distribution when ``with_initial``).
        """
        raw, base, initial = self._batched_params(params, tokens, mask, arguments)
        posterior = self.family.distribution(raw, base)
        if not with_initial:
            return posterior
        start = None if initial is None else dist.Normal(*initial).to_event(1)
        return posterior, start

    def _dataset(self, bound: Mapping[str, Any], data_mask=None):
        """Validate one data set or a batch and give every array argument a data-set axis.

        Returns ``(arguments, mask (B, N), is_batch)``; for one data set ``B == 1``. Shared
        array arguments are broadcast. ``data_mask`` (``(N,)`` or ``(B, N)`` bool) marks real
        observations of padded data sets. Tokens are made later, inside the compiled call.
        """
        batch_ndim, num_obs = validate_dataset(self.spec, self.sites, bound, max_obs=self.max_obs)
        data_args = set(self.spec.data_arguments)
        data = {a: jnp.asarray(bound[a]) for a in data_args}
        if not batch_ndim:
            data = {a: v[None] for a, v in data.items()}
        num = next(iter(data.values())).shape[0]
        arguments = {}
        for name, value in bound.items():
            if name in data_args:
                arguments[name] = data[name]
            elif isinstance(value, (jax.Array, np.ndarray)):
                arguments[name] = jnp.broadcast_to(value, (num,) + jnp.shape(value))
            else:
                arguments[name] = value
        if data_mask is None:
            mask = np.ones((num, num_obs), bool)
        else:
            mask = np.asarray(data_mask)
            expected = (num, num_obs) if batch_ndim else (num_obs,)
            if mask.shape != expected or mask.dtype != np.bool_:
                raise ValueError(
                    f"data_mask: expected a bool array of shape {expected} (data sets x "
                    f"observations), got {mask.dtype} of shape {mask.shape}."
                )
            mask = mask.reshape(num, num_obs)
            if not mask.any(axis=1).all():
                raise ValueError("data_mask: a data set has no observation (its mask is all False).")
        return arguments, mask, bool(batch_ndim)

    def prepare(self, *args, data_mask=None, **kwargs):
        """Validate the model's arguments for one data set or a batch (as ``sample_posterior``).

        Returns:
            ``(arguments, mask, is_batch)``: bound arguments whose arrays carry a leading
            data-set axis ``B`` (1 for one data set), the observation mask ``(B, N)`` and whether
            a batch was given.
        """
        return self._dataset(self._bind(args, kwargs), data_mask)

    def summaries(self, params, arguments: Mapping[str, Any], mask) -> jax.Array:
        """The encoder's summary of each data set, ``(B, summary_size + 1)`` (see ``prepare``)."""
        network = self.network(params)
        return jax.vmap(network.summarize)(self.tokens(arguments), jnp.asarray(mask))

    def tokens(self, arguments: Mapping[str, Any]) -> jax.Array:
        """Tokens ``(B, N, token_dim)`` of a batch of data sets (arguments with a ``B`` axis)."""
        data = {a: arguments[a] for a in self.spec.data_arguments}
        return jax.vmap(lambda d: make_tokens(self.spec, self.sites, d))(data)

    def _bind(self, args, kwargs):
        self._require_setup()
        return bind_arguments(self.signature, args, kwargs)

    # ------------------------------------------------------------ NumPyro API
    def __call__(self, *args, **kwargs) -> dict[str, jax.Array]:
        """Run the guide as a NumPyro program (inside ``SVI``, ``Predictive``, handlers).

        Takes the model's arguments for one data set, registers the network's parameters as one
        ``numpyro.param`` site and emits every latent site of the model.
        """
        bound = bind_arguments(self.signature, args, kwargs)
        if not self.is_setup:
            self._setup_from_data(numpyro.prng_key(), bound)
        network = eqx_module(f"{self.prefix}$net", self._network)
        arguments, mask, is_batch = self._dataset(bound)
        if is_batch:
            raise ValueError(
                "Inside a NumPyro program the guide takes one data set (as the model does); for a "
                "batch of data sets use `guide.sample_posterior(key, params, *batched_args)`."
            )
        one = {k: v[0] if isinstance(v, jax.Array) else v for k, v in arguments.items()}
        tokens = make_tokens(self.spec, self.sites, one)
        raw, base, _ = self.posterior_params(network, tokens, jnp.asarray(mask[0]), one)
        posterior = self.family.distribution(raw, base)
        flat = numpyro.sample(f"_{self.prefix}_latent", posterior, infer={"is_auxiliary": True})
        result = {}
        unconstrained = self.sites.unflatten(flat)
        for site in self.sites.latents:
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

    def get_posterior(self, params, *args, data_mask=None, **kwargs) -> dist.Distribution:
        """q(u | data) over the flat unconstrained latent vector (site order: ``guide.sites``).

        With a batch of data sets (a leading axis on the data arguments) the batch shape is
        ``(num_datasets,)``; for one data set it is ``()``. ``data_mask`` as in
        :meth:`sample_posterior`.
        """
        arguments, mask, is_batch = self._dataset(self._bind(args, kwargs), data_mask)
        raw, base, _ = self._batched_params(params, self.tokens(arguments), mask, arguments)
        if not is_batch:
            raw, base = jax.tree.map(lambda v: v[0], (raw, base))
        return self.family.distribution(raw, base)

    def _sample_impl(self, key, params, mask, arguments, sample_shape):
        posterior = self.posterior_from_data(params, self.tokens(arguments), mask, arguments)
        flat = posterior.sample(key, sample_shape)  # sample_shape + (B, D)
        flat = jnp.moveaxis(flat, len(sample_shape), 0)  # (B,) + sample_shape + (D,)
        return self.sites.constrain(flat)

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
            rng_key: PRNG key.
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
        arguments, mask, is_batch = self._dataset(self._bind(args, kwargs), data_mask)
        samples = self._sample_jit(rng_key, params, mask, arguments, tuple(sample_shape))
        if self.ood_detector is not None:
            self._warn_out_of_distribution(params, arguments, mask)
        return samples if is_batch else jax.tree.map(lambda v: v[0], samples)

    def _warn_out_of_distribution(self, params, arguments, mask) -> None:
        from amortized_ppl.diagnostics.ood import ood_features  # diagnostics import guides

        features = ood_features(self, params, arguments, mask)
        p_values = self.ood_detector.p_values(features, np.asarray(mask).sum(axis=1))
        flagged = np.flatnonzero(p_values < self.ood_detector.level)
        if flagged.size:
            listed = ", ".join(f"{i} (p={p_values[i]:.2g})" for i in flagged[:10])
            more = f" and {flagged.size - 10} more" if flagged.size > 10 else ""
            warnings.warn(
                f"Data set(s) {listed}{more} look out of the training distribution (their "
                "encoder summaries lie beyond the training simulations); the amortized posterior "
                "may be wrong there. Check it with `amortized_ppl.ladder.trust_ladder`.",
                RuntimeWarning,
                stacklevel=3,
            )

    def median(self, params, *args, **kwargs) -> dict[str, jax.Array]:
        """Posterior median of each site: the Normal's location mapped into the support.

        Exact for elementwise transforms (the support's bijection is monotone per coordinate).
        """
        return self.quantiles(params, [0.5], *args, **kwargs, _squeeze=True)

    def quantiles(
        self, params, quantiles, *args, data_mask=None, _squeeze: bool = False, **kwargs
    ):
        """Marginal posterior quantiles of each site.

        Args:
            params: guide parameters.
            quantiles: a sequence of levels in (0, 1).
            *args, **kwargs: the model's arguments (one data set or a batch).
            data_mask: as in :meth:`sample_posterior`.

        Returns:
            site name -> array of shape ``(len(quantiles),) + site_shape`` (with a leading
            data-set axis for a batch).
        """
        q = jnp.asarray(quantiles)
        if q.ndim != 1 or not bool(jnp.all((q > 0) & (q < 1))):
            raise ValueError(f"quantiles: expected levels in (0, 1), got {quantiles!r}.")
        self._require_setup()
        # Mapping per-coordinate Normal quantiles through the bijection is exact only when it acts
        # coordinate by coordinate; a simplex or a Cholesky factor mixes coordinates.
        mixed = [s.name for s in self.sites.latents if s.unconstrained_shape != s.shape]
        if mixed:
            raise NotImplementedError(
                f"quantiles/median: sites {mixed} have a support whose transform mixes coordinates "
                "(unconstrained shape differs), so marginal quantiles cannot be mapped exactly; "
                "use sample_posterior and empirical quantiles."
            )
        arguments, mask, is_batch = self._dataset(self._bind(args, kwargs), data_mask)
        raw, base, _ = self._batched_params(params, self.tokens(arguments), mask, arguments)
        loc, tril = self.family.loc_and_scale_tril(raw, base)
        scale = jnp.sqrt(jnp.sum(tril**2, axis=-1))  # marginal SDs, (B, D)
        flat = loc[:, None, :] + scale[:, None, :] * ndtri(q)[None, :, None]  # (B, Q, D)
        values = self.sites.constrain(flat)
        if _squeeze:
            values = jax.tree.map(lambda v: v[:, 0], values)
        return values if is_batch else jax.tree.map(lambda v: v[0], values)

    def describe(self) -> dict:
        """A JSON-able description of the guide, the model's sites and the data spec."""
        self._require_setup()
        return {
            "guide": type(self).__name__,
            "family": self.family.name,
            "prefix": self.prefix,
            "model": getattr(self.model, "__qualname__", repr(self.model)),
            "max_obs": self.max_obs,
            "newton_steps": self.newton_steps,
            "network": dict(self.network_config),
            "sites": [
                {"name": s.name, "shape": list(s.shape), "support": str(s.support)}
                for s in self.sites.latents
            ],
            "data": self.spec.describe(),
        }


class AutoAmortizedNormal(AutoAmortizedGuide):
    """Amortized guide with a diagonal Normal posterior in unconstrained space."""

    family_cls = DiagonalNormal


class AutoAmortizedMultivariateNormal(AutoAmortizedGuide):
    """Amortized guide with a full-rank Normal posterior in unconstrained space."""

    family_cls = MultivariateNormal
