"""The iterative engine: a learned update refines a Gaussian posterior over mini-batches.

``IterativePosterior`` is an ``equinox`` module holding the update network and the settings of
an in-memory refinement. Its state (a Gaussian over the flat unconstrained latents plus a
recurrent memory) starts from the problem's prior moments (or any Gaussian, e.g. a one-shot
posterior) and is refined one mini-batch at a time by the kernel of
:mod:`amortized_ppl.iterative.kernel`. Memory does not grow with the number of observations.

Its pure method :meth:`IterativePosterior.output` refines one data set held in memory for
``num_passes`` passes of ``batch_size`` with the key it is given, so every result is fixed by
that key. For data that does not fit in memory, see :func:`amortized_ppl.iterative.refine_stream`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from amortized_ppl._checks import check_int
from amortized_ppl._recipes import describe_recipe
from amortized_ppl.encoders.resolve import resolve_encoder
from amortized_ppl.encoders.set_transformer import SetEncoder
from amortized_ppl.families import FamilyOutput
from amortized_ppl.iterative.kernel import (
    IterativeState,
    build_kernel,
    laplace_start,
    num_features,
    num_readout_features,
)
from amortized_ppl.iterative.network import UpdateNetwork
from amortized_ppl.iterative.passes import batch_at, pass_order, run_passes, steps_per_pass
from amortized_ppl.problem import Problem

__all__ = ["IterativePosterior"]

_DEFAULT_ENCODER = SetEncoder(summary_size=16, hidden_size=32, num_heads=4, num_blocks=1,
                              num_inducing=16)


class IterativePosterior(eqx.Module):
    """A Gaussian state refined over mini-batches by a natural-gradient step and a network.

    Args:
        problem: the :class:`~amortized_ppl.problem.Problem`.
        encoder: the mini-batch encoder's recipe (a small Set Transformer by default).
        memory_size: the update network's recurrent memory.
        head_width, head_depth: the readout network (an MLP) that corrects the readout.
        max_tokens: rows of each mini-batch the encoder reads (the gradient uses all of them).
        full_rank: full-rank curvature and posterior (True) or diagonal.
        batch_size: mini-batch size ``m`` when a data set is refined in memory; data sets with
            at most ``m`` observations are read whole at every step.
        num_passes: passes over a data set refined in memory.
        min_steps: at least this many steps in memory (more passes for small data sets).
        key: PRNG key for the parameters.
    """

    network: UpdateNetwork
    encoder_recipe: Any = eqx.field(static=True)
    memory_size: int = eqx.field(static=True)
    head_width: int = eqx.field(static=True)
    head_depth: int = eqx.field(static=True)
    max_tokens: int = eqx.field(static=True)
    full_rank: bool = eqx.field(static=True)
    batch_size: int = eqx.field(static=True)
    num_passes: int = eqx.field(static=True)
    min_steps: int = eqx.field(static=True)

    accepts_any_size: ClassVar[bool] = True
    """Data sets of any size: the state is refined one mini-batch at a time."""

    def __init__(
        self,
        problem: Problem,
        *,
        encoder: Any = _DEFAULT_ENCODER,
        memory_size: int = 32,
        head_width: int = 64,
        head_depth: int = 2,
        max_tokens: int = 128,
        full_rank: bool = True,
        batch_size: int = 256,
        num_passes: int = 3,
        min_steps: int = 8,
        key,
    ):
        encoder = resolve_encoder(encoder)
        self.memory_size = check_int(memory_size, "memory_size")
        self.head_width = check_int(head_width, "head_width")
        self.head_depth = check_int(head_depth, "head_depth")
        self.max_tokens = check_int(max_tokens, "max_tokens")
        self.full_rank = bool(full_rank)
        self.batch_size = check_int(batch_size, "batch_size")
        self.num_passes = check_int(num_passes, "num_passes")
        self.min_steps = check_int(min_steps, "min_steps")
        self.encoder_recipe = encoder
        encoder_key, network_key = jax.random.split(key)
        self.network = UpdateNetwork(
            encoder.build(encoder_key, problem.token_dim),
            problem.latent_dim,
            num_features(problem.latent_dim),
            num_readout_features(problem.latent_dim, self.memory_size),
            memory_size=self.memory_size,
            head_width=self.head_width,
            head_depth=self.head_depth,
            max_tokens=self.max_tokens,
            key=network_key,
        )

    # ------------------------------------------------------------------ the kernel
    def kernel(self, problem: Problem):
        """The kernel's ``(init, step)`` for this problem (see :func:`build_kernel`)."""

        def tokens_fn(batch_arguments, batch_mask):
            return problem.standardized_tokens(problem.tokens(batch_arguments), batch_mask)

        prior = (problem.prior_loc,
                 jnp.sqrt(jnp.sum(jnp.asarray(problem.prior_scale_tril) ** 2, axis=-1)))
        return build_kernel(problem.log_density, tokens_fn, prior=prior,
                            full_rank=self.full_rank)

    def init_state(self, problem: Problem, loc=None, scale_tril=None) -> IterativeState:
        """The initial state: the prior's moments, or a given Gaussian (e.g. a one-shot fit)."""
        loc = problem.prior_loc if loc is None else jnp.asarray(loc)
        scale_tril = problem.prior_scale_tril if scale_tril is None else jnp.asarray(scale_tril)
        d = problem.latent_dim
        if loc.shape != (d,) or scale_tril.shape != (d, d):
            raise ValueError(
                f"init_state: expected loc ({d},) and scale_tril ({d}, {d}) for the model's "
                f"{d} unconstrained latents, got {loc.shape} and {scale_tril.shape}."
            )
        if not self.full_rank:
            scale_tril = jnp.diag(jnp.sqrt(jnp.sum(scale_tril**2, axis=-1)))
        return self.kernel(problem)[0](loc, scale_tril, self.memory_size)

    def start(self, problem: Problem, state, batch_arguments, batch_mask, steps_per_pass):
        """The state moved to the Laplace fit of one mini-batch (see :func:`laplace_start`):
        where a refinement from the prior begins."""
        scale = jnp.asarray(steps_per_pass, state.run_loc.dtype)

        def log_density(u):
            return problem.log_density(u, batch_arguments, batch_mask, scale)

        return laplace_start(state, log_density, full_rank=self.full_rank)

    def step(self, key, problem: Problem, state, batch_arguments, batch_mask, steps_per_pass):
        """One update of ``state`` by one mini-batch: ``(state, IterativeInfo)``."""
        step = self.kernel(problem)[1]
        return step(key, self.network, state, batch_arguments, batch_mask, steps_per_pass)

    def plan(self, num_obs: int, batch_size: int | None = None, num_passes: int | None = None):
        """``(batch_size, num_passes)`` used to refine a data set of ``num_obs`` in memory."""
        m = min(int(batch_size or self.batch_size), int(num_obs))
        passes = int(num_passes or self.num_passes)
        return m, max(passes, -(-self.min_steps // steps_per_pass(num_obs, m)))

    def refine(self, key, problem: Problem, arguments, mask, *, batch_size=None, num_passes=None,
               state=None, step_fn=None):
        """Refine one data set held in memory (jittable, vmappable).

        Args:
            key: PRNG key (shuffling and cubature rotations).
            problem: the problem.
            arguments: the model's bound arguments for one data set; mask: ``(N,)`` bool.
            batch_size, num_passes: as :meth:`plan` (defaults: the engine's).
            state: the state to start from (default: the prior, moved by :meth:`start` to the
                Laplace fit of a random mini-batch).
            step_fn: a kernel step to use instead of :meth:`step`'s (e.g. one that cuts the
                state's gradient for truncated backpropagation).

        Returns:
            The final state and the per-step infos, each of shape ``(num_passes, P)``.
        """
        m, passes = self.plan(mask.shape[0], batch_size, num_passes)
        start_key, key = jax.random.split(key)
        if state is None:
            state = self.first_batch_start(start_key, problem, arguments, mask, m)
        step_fn = self.kernel(problem)[1] if step_fn is None else step_fn
        return run_passes(key, step_fn, self.network, state, arguments, mask, problem.take,
                          batch_size=m, num_passes=passes)

    def first_batch_start(self, key, problem: Problem, arguments, mask, batch_size: int):
        """The prior state moved by :meth:`start` to the Laplace fit of a random mini-batch of
        ``batch_size`` observations of one data set held in memory (jittable, vmappable)."""
        num = mask.shape[0]
        positions, valid = batch_at(pass_order(key, num, batch_size), 0, batch_size)
        batch = problem.take(arguments, positions)
        return self.start(problem, self.init_state(problem), batch, valid & mask[positions],
                          steps_per_pass(num, batch_size))

    # ------------------------------------------------------------------ the posterior
    def readout(self, state: IterativeState) -> dist.Distribution:
        """A state's readout as a distribution over the flat unconstrained latents."""
        if self.full_rank:
            return dist.MultivariateNormal(state.loc, scale_tril=state.scale_tril)
        return dist.Normal(state.loc, jnp.sqrt(jnp.sum(state.scale_tril**2, axis=-1))).to_event(1)

    def output(self, problem: Problem, arguments, mask, key) -> FamilyOutput:
        """Refine one data set in memory from the prior with ``key`` and read the state out."""
        if key is None:
            raise TypeError("IterativePosterior.output: a PRNG key is needed (it refines).")
        state, _ = self.refine(key, problem, arguments, mask)
        return FamilyOutput(self.readout(state), None)

    def posterior(self, problem: Problem, arguments, mask, key) -> dist.Distribution:
        """q(u | data) for one data set, refined in memory with ``key``."""
        return self.output(problem, arguments, mask, key).posterior

    def describe(self) -> dict:
        """The settings this engine was built with (JSON-able)."""
        return {
            "type": type(self).__name__,
            "encoder": describe_recipe(self.encoder_recipe),
            **{name: getattr(self, name) for name in (
                "memory_size", "head_width", "head_depth", "max_tokens", "full_rank",
                "batch_size", "num_passes", "min_steps")},
        }
