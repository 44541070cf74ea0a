"""Iterative amortized guides: a learned update refines a Gaussian posterior over mini-batches.

``AutoIterativeAmortizedNormal`` and ``AutoIterativeAmortizedMultivariateNormal`` take data sets of
any size. Their state (a Gaussian over the model's flat unconstrained latents, plus a recurrent
memory) starts from the prior (or from a one-shot guide's posterior) and is refined one mini-batch
at a time by the kernel of :mod:`amortized_ppl.iterative.kernel`: each step reads the mini-batch
through a Set Transformer and the gradient of the model's log joint at cubature points of the
current Gaussian, and takes a natural-gradient step whose sizes, and a readout correction, come
from a trained network. Memory does not grow with the number of observations.

They are NumPyro guides like the one-shot guides (``__call__`` with the model's signature,
``sample_posterior``, ``median``, ``quantiles``, ``get_posterior``): there the whole data set is
refined in memory for ``num_passes`` passes of ``batch_size``. For data that does not fit in memory,
refine over an iterator with :func:`amortized_ppl.iterative.refine`. Train with
:func:`amortized_ppl.iterative.fit_iterative`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro import handlers

from amortized_ppl import linalg
from amortized_ppl.data import bind_arguments, make_tokens, take_observations
from amortized_ppl.density import log_joint_parts
from amortized_ppl.families import DiagonalNormal, MultivariateNormal
from amortized_ppl.guides.amortized import AutoAmortizedGuide
from amortized_ppl.iterative.kernel import IterativeState, build_kernel, num_features
from amortized_ppl.iterative.network import UpdateNetwork
from amortized_ppl.iterative.passes import run_passes

__all__ = [
    "AutoIterativeAmortizedGuide",
    "AutoIterativeAmortizedMultivariateNormal",
    "AutoIterativeAmortizedNormal",
]


class AutoIterativeAmortizedGuide(AutoAmortizedGuide):
    """Base class of iterative guides; use a subclass that fixes the posterior family.

    Args:
        model: a NumPyro model with continuous global latents and a plate of observations whose
            values enter through arguments (``y=None``), as for the one-shot guides.
        prefix, observed, covariates: as for :class:`AutoAmortizedGuide`.
        batch_size: mini-batch size ``m`` used when the guide refines a data set in memory
            (``sample_posterior``, ``__call__``); data sets with at most ``m`` observations are
            read whole at every step.
        num_passes: passes over the data set when the guide refines it in memory.
        min_steps: at least this many steps in memory (more passes for small data sets).
        memory_size: the update network's recurrent memory.
        summary_size, hidden_size, num_heads, num_blocks, num_inducing: mini-batch encoder.
        head_width, head_depth: the MLP that outputs the update.
        max_tokens: rows of each mini-batch the encoder reads (the gradient uses all of them).
        num_prior_draws: prior draws used to find the prior's mean and covariance in
            unconstrained space, the default initial state.
        refine_seed: seed of the (deterministic) shuffling and cubature rotations when the guide
            refines in memory.

    Examples:
        >>> guide = AutoIterativeAmortizedMultivariateNormal(model, batch_size=256)
        >>> result = fit_iterative(jax.random.key(0), guide, design_fn=design_fn)
        >>> draws = guide.sample_posterior(key, result.params, x, y, sample_shape=(1000,))
    """

    family_cls: type = MultivariateNormal
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
        num_prior_draws: int = 2048,
        refine_seed: int = 0,
    ):
        super().__init__(model, prefix=prefix, observed=observed, covariates=covariates)
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("num_passes", num_passes, 1),
            ("min_steps", min_steps, 1),
            ("memory_size", memory_size, 1),
            ("max_tokens", max_tokens, 1),
            ("num_prior_draws", num_prior_draws, 2),
        ):
            if int(value) < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value}.")
        self.batch_size = int(batch_size)
        self.num_passes = int(num_passes)
        self.min_steps = int(min_steps)
        self.num_prior_draws = int(num_prior_draws)
        self.refine_seed = int(refine_seed)
        self.network_config = dict(
            summary_size=summary_size,
            hidden_size=hidden_size,
            num_heads=num_heads,
            num_blocks=num_blocks,
            num_inducing=num_inducing,
            memory_size=memory_size,
            head_width=head_width,
            head_depth=head_depth,
            max_tokens=max_tokens,
        )
        self.prior_loc = None
        self.prior_scale_tril = None

    # ------------------------------------------------------------------ set-up
    def _build(self, sites, spec, token_loc, token_scale, anchor, max_obs, key):
        net_key, prior_key = jax.random.split(key)
        self.sites, self.spec = sites, spec
        self.max_obs = None  # any number of observations
        self.family = self.family_cls(sites.latent_dim)
        token_scale = jnp.where(token_scale > 1e-6, token_scale, 1.0)
        self._network = UpdateNetwork(
            token_loc,
            token_scale,
            sites.latent_dim,
            num_features(sites.latent_dim),
            key=net_key,
            **self.network_config,
        )
        self._init_fn, self._step_fn = build_kernel(
            self.log_density, self.batch_tokens, full_rank=self.full_rank
        )
        self._sample_jit = eqx.filter_jit(self._sample_impl)
        # Refinement is a long scan: compile it once per shape instead of tracing it per call.
        self._batched_jit = eqx.filter_jit(super()._batched_params)
        self.ood_detector = None
        self._prior_key = prior_key

    def setup(self, key, design_fn, num_obs, *, num_pilot: int = 256):
        """Trace the model, build the network and find the prior's moments (see the base class)."""
        super().setup(key, design_fn, num_obs, num_pilot=num_pilot)
        args, kwargs = design_fn(jax.random.fold_in(key, 7), min(_largest(num_obs), 16))
        self._set_prior_moments(bind_arguments(self.signature, tuple(args), dict(kwargs)))
        return self

    def _setup_from_data(self, key, bound):
        super()._setup_from_data(key, bound)
        self._set_prior_moments(bound)

    def _set_prior_moments(self, bound):
        """Prior mean and covariance of the flat unconstrained latents, from prior draws."""
        bound = dict(bound)
        for arg in self.spec.observed.values():
            bound[arg] = None
        names = [s.name for s in self.sites.latents]

        def draw(key):
            with handlers.block():
                trace = handlers.trace(handlers.seed(self.model, key)).get_trace(**bound)
            return self.sites.unconstrain({n: trace[n]["value"] for n in names})

        keys = jax.random.split(self._prior_key, self.num_prior_draws)
        draws = jax.vmap(draw)(keys)
        loc = jnp.mean(draws, axis=0)
        cov = jnp.cov(draws, rowvar=False).reshape(loc.shape[0], loc.shape[0])
        cov = 0.5 * (cov + cov.T) + 1e-6 * jnp.eye(loc.shape[0])
        if not self.full_rank:
            cov = jnp.diag(jnp.diag(cov))
        self.prior_loc, self.prior_scale_tril = loc, linalg.cholesky(cov)

    def network(self, params: Mapping[str, Any]) -> UpdateNetwork:
        """The update network with the arrays in ``params``."""
        return super().network(params)

    # --------------------------------------------------------------- the core
    def log_density(self, u, batch_arguments, batch_mask, scale):
        """Log joint of a mini-batch in unconstrained space, likelihood multiplied by ``scale``.

        Args:
            u: flat unconstrained latents ``(D,)``.
            batch_arguments: the model's arguments for the mini-batch.
            batch_mask: ``(m,)`` bool, False for padding.
            scale: multiplier of the mini-batch's log likelihood (``P``, batches per pass).
        """
        latents = self.sites.constrain(u)
        prior, likelihood = log_joint_parts(
            self.model, self.sites, batch_arguments, latents, batch_mask
        )
        return prior + self.sites.log_abs_det_jacobian(u) + scale * likelihood

    def tokens(self, arguments) -> jax.Array:
        """A placeholder ``(B, N, 0)``: the iterative guide reads tokens one mini-batch at a time
        (``batch_tokens``), so it never builds a copy of a whole (possibly huge) data set."""
        first = arguments[self.spec.data_arguments[0]]
        return jnp.zeros(jnp.shape(first)[:2] + (0,), jnp.float32)

    def summaries(self, params, arguments, mask):
        raise NotImplementedError(
            "An iterative guide has no whole-data-set summary (it reads mini-batches); the "
            "out-of-distribution detector applies to one-shot guides."
        )

    def batch_tokens(self, batch_arguments) -> jax.Array:
        """Tokens ``(m, token_dim)`` of a mini-batch."""
        return make_tokens(self.spec, self.sites, batch_arguments)

    def take(self, arguments, positions) -> dict:
        """The mini-batch of one data set's arguments at ``positions`` ``(m,)``."""
        return take_observations(self.spec, self.sites, arguments, positions)

    def init_state(self, loc=None, scale_tril=None) -> IterativeState:
        """The initial state: the prior's moments, or a given Gaussian (e.g. a one-shot guide's)."""
        self._require_setup()
        loc = self.prior_loc if loc is None else jnp.asarray(loc)
        scale_tril = self.prior_scale_tril if scale_tril is None else jnp.asarray(scale_tril)
        d = self.sites.latent_dim
        if loc.shape != (d,) or scale_tril.shape != (d, d):
            raise ValueError(
                f"init_state: expected loc ({d},) and scale_tril ({d}, {d}) for the model's "
                f"{d} unconstrained latents, got {loc.shape} and {scale_tril.shape}."
            )
        return self._init_fn(loc, scale_tril, self._network.memory_size)

    def step(self, key, params, state, batch_arguments, batch_mask, steps_per_pass):
        """One update of ``state`` by one mini-batch (the kernel's ``step`` with this network)."""
        return self._step_fn(
            key, self.network(params), state, batch_arguments, batch_mask, steps_per_pass
        )

    def plan(self, num_obs: int, batch_size: int | None = None, num_passes: int | None = None):
        """``(batch_size, num_passes)`` used to refine a data set of ``num_obs`` in memory."""
        m = min(int(batch_size or self.batch_size), int(num_obs))
        passes = int(num_passes or self.num_passes)
        steps = -(-int(num_obs) // m)
        return m, max(passes, -(-self.min_steps // steps))

    def refine_in_memory(
        self, key, network, arguments, mask, *, batch_size=None, num_passes=None, state=None
    ):
        """Refine one data set held in memory; returns the final state and per-step infos."""
        m, passes = self.plan(mask.shape[0], batch_size, num_passes)
        state = self.init_state() if state is None else state
        return run_passes(
            key,
            self._step_fn,
            network,
            state,
            arguments,
            mask,
            self.take,
            batch_size=m,
            num_passes=passes,
        )

    def posterior_params(self, network, tokens, mask, arguments):
        """``(raw, base, None)`` for one data set: zero raw outputs and the refined Gaussian."""
        key = jax.random.key(self.refine_seed)
        state, _ = self.refine_in_memory(key, network, arguments, mask)
        raw = jnp.zeros((self.family.num_params,), state.loc.dtype)
        return raw, (state.loc, state.scale_tril), None

    def _batched_params(self, params, tokens, mask, arguments):
        return self._batched_jit(params, tokens, jnp.asarray(mask), arguments)

    def posterior(self, state: IterativeState) -> dist.Distribution:
        """The readout of a state as a distribution over the flat unconstrained latents."""
        loc, tril = state.loc, state.scale_tril
        if self.full_rank:
            return dist.MultivariateNormal(loc, scale_tril=tril)
        return dist.Normal(loc, jnp.sqrt(jnp.sum(tril**2, axis=-1))).to_event(1)

    def sample_state(self, key, state: IterativeState, sample_shape=()) -> dict[str, jax.Array]:
        """Constrained draws keyed by site name from a state's readout."""
        flat = self.posterior(state).sample(key, tuple(sample_shape))
        return self.sites.constrain(flat)

    def describe(self) -> dict:
        out = super().describe()
        out.update(batch_size=self.batch_size, num_passes=self.num_passes, min_steps=self.min_steps)
        return out


def _largest(num_obs) -> int:
    """The top of a ``num_obs`` given as an int or a ``(low, high)`` range."""
    return num_obs if isinstance(num_obs, int) else int(num_obs[1])


class AutoIterativeAmortizedNormal(AutoIterativeAmortizedGuide):
    """Iterative guide with a diagonal Normal posterior (diagonal curvature in the update)."""

    family_cls = DiagonalNormal
    full_rank = False


class AutoIterativeAmortizedMultivariateNormal(AutoIterativeAmortizedGuide):
    """Iterative guide with a full-rank Normal posterior in unconstrained space."""

    family_cls = MultivariateNormal
    full_rank = True
