"""The iterative explicit learner: its bottleneck ``z`` refined one mini-batch of context at a time.

The explicit learner (:mod:`amortized_ppl.icl.explicit`) reads the whole context at once, so it
meets at test time only the context lengths it trained on. Here the state ``(z, count)`` starts
at a learned ``z_0`` and each mini-batch ``B`` of context points updates it: a Transformer reads
``[CLS(z), Linear([x_i, y_i]) for i in B]`` under the bottleneck mask (the CLS
token reads the batch, no token reads the CLS), and

    ``z <- z + (|B| / (count + |B|)) * (Linear(CLS output) - z)``,    ``count <- count + |B|``.

A running mean: the state is a convex combination of the per-batch estimates ``Linear(CLS
output)`` (each made knowing the state before it), weighted by their batches' sizes, and the
update does not read the count, so a context ten times longer than any seen in training meets
only inputs seen in training and cannot push ``z`` off the states the predictor knows. Two
designs measured first drifted at ten times the trained length: a free update
``z + share * Linear(...)`` (query MSE 0.013 at the trained length, 0.033 at ten times it;
``benchmarks/results/icl_iterative_free_update.json``, written at commit 00faf30), and this
running mean with ``log(1 + count)`` in the CLS token (the count then leaves its trained range).
The predictors and the probe are the explicit learner's.

Within a task the mini-batches run under :func:`jax.lax.scan` (training and evaluation);
:func:`stream_context` refines one state over a context too long for memory on the house's one
driver, :func:`amortized_ppl.loop.run_chunked_loop` (progress, Ctrl-C keeps the last state), as
the iterative guides refine theirs.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from amortized_ppl._checks import check_int
from amortized_ppl.icl.explicit import KnownLinearPredictor, MLPPredictor, TransformerPredictor
from amortized_ppl.icl.predictor import check_task_inputs
from amortized_ppl.icl.transformer import MaskedTransformer, bottleneck_attention_mask
from amortized_ppl.loop import run_chunked_loop

__all__ = ["ContextState", "IterativeExplicitLearner", "build_iterative_learner",
           "stream_context"]


class ContextState(NamedTuple):
    """The learner's state: the bottleneck ``z`` ``(z_dim,)`` and the points read, ``()``."""

    z: jax.Array
    count: jax.Array


class IterativeExplicitLearner(eqx.Module):
    """See the module docstring. Build with :func:`build_iterative_learner`."""

    embed: eqx.nn.Linear
    state_embed: eqx.nn.Linear
    trunk: MaskedTransformer
    project: eqx.nn.Linear
    initial_z: jax.Array
    predictor: eqx.Module
    probe: eqx.nn.Linear
    x_dim: int = eqx.field(static=True)
    batch_size: int = eqx.field(static=True)

    def init(self) -> ContextState:
        """The state before any context: ``(z_0, 0)``."""
        return ContextState(self.initial_z, jnp.zeros((), self.initial_z.dtype))

    def update(self, state: ContextState, batch_x, batch_y, batch_mask) -> ContextState:
        """Read one mini-batch ``(b, d)``, ``(b,)``, ``(b,)`` bool; masked rows are ignored."""
        rows = jnp.concatenate([batch_x, batch_y[:, None]], axis=1)
        rows = jnp.where(batch_mask[:, None], rows, 0.0)
        cls = self.state_embed(state.z)
        tokens = jnp.concatenate([cls[None], jax.vmap(self.embed)(rows)])
        estimate = self.project(self.trunk(tokens, bottleneck_attention_mask(batch_mask))[0])
        seen = jnp.sum(batch_mask).astype(state.count.dtype)
        count = state.count + seen
        return ContextState(state.z + seen / jnp.maximum(count, 1.0) * (estimate - state.z), count)

    def read(self, context_x, context_y, context_mask) -> ContextState:
        """The state after the whole context, in mini-batches of ``batch_size`` (zero-padded)."""
        n = context_x.shape[0]
        pad = -n % self.batch_size
        if pad:
            context_x = jnp.pad(context_x, ((0, pad), (0, 0)))
            context_y = jnp.pad(context_y, (0, pad))
            context_mask = jnp.pad(context_mask, (0, pad))
        shape = (-1, self.batch_size)
        batches = (context_x.reshape(shape + (context_x.shape[1],)), context_y.reshape(shape),
                   context_mask.reshape(shape))

        def body(state, batch):
            return self.update(state, *batch), None

        return jax.lax.scan(body, self.init(), batches)[0]

    def __call__(self, context_x, context_y, context_mask, query_x):
        """Predict ``(mean, log_scale)``, each ``(m,)``, for the queries ``(m, d)`` of one task."""
        check_task_inputs(self.x_dim, context_x, context_y, context_mask, query_x)
        return self.predictor(self.read(context_x, context_y, context_mask).z, query_x)

    def predict(self, state: ContextState, query_x):
        """Predict the queries from a state (e.g. one :func:`stream_context` refined)."""
        return self.predictor(state.z, query_x)

    def probe_latent(self, context_x, context_y, context_mask):
        """The probe's estimate of the task latent; no gradient reaches ``z``."""
        check_task_inputs(self.x_dim, context_x, context_y, context_mask, context_x)
        z = self.read(context_x, context_y, context_mask).z
        return self.probe(jax.lax.stop_gradient(z))


def build_iterative_learner(
    x_dim: int,
    latent_dim: int,
    *,
    predictor: str = "known",
    z_dim: int = 32,
    size: int = 32,
    num_heads: int = 4,
    num_blocks: int = 2,
    batch_size: int = 16,
    key: jax.Array,
) -> IterativeExplicitLearner:
    """Build an :class:`IterativeExplicitLearner` (arguments as
    :func:`~amortized_ppl.icl.explicit.build_explicit_learner`, plus ``batch_size``: context
    points per update)."""
    x_dim, latent_dim = check_int(x_dim, "x_dim"), check_int(latent_dim, "latent_dim")
    z_dim, batch_size = check_int(z_dim, "z_dim"), check_int(batch_size, "batch_size")
    keys = jax.random.split(key, 7)
    if predictor == "transformer":
        head = TransformerPredictor(x_dim, z_dim, size=size, num_heads=num_heads,
                                    num_blocks=max(1, num_blocks - 1), key=keys[0])
    elif predictor == "mlp":
        head = MLPPredictor(x_dim, z_dim, size=size, key=keys[0])
    elif predictor == "known":
        head = KnownLinearPredictor(x_dim, z_dim, key=keys[0])
    else:
        raise ValueError(f"predictor: expected 'transformer', 'mlp' or 'known', got "
                         f"{predictor!r}.")
    return IterativeExplicitLearner(
        embed=eqx.nn.Linear(x_dim + 1, size, key=keys[1]),
        state_embed=eqx.nn.Linear(z_dim, size, key=keys[2]),
        trunk=MaskedTransformer(size, num_heads=num_heads, num_blocks=num_blocks, key=keys[3]),
        project=eqx.nn.Linear(size, z_dim, key=keys[4]),
        initial_z=0.02 * jax.random.normal(keys[5], (z_dim,)),
        predictor=head,
        probe=eqx.nn.Linear(z_dim, latent_dim, key=keys[6]),
        x_dim=x_dim,
        batch_size=batch_size,
    )


def stream_context(learner: IterativeExplicitLearner, batches: Iterable, *,
                   state: ContextState | None = None, chunk_size: int = 50,
                   progress: bool = False) -> ContextState:
    """Refine a state over ``batches`` of ``(x (b, d), y (b,), mask (b,))`` on the one driver.

    For contexts too long to hold at once (read from disk, a stream): each batch is one step of
    :func:`~amortized_ppl.loop.run_chunked_loop`, ``chunk_size`` steps per compiled call. A
    batch of the learner's ``batch_size`` gives the state :meth:`~IterativeExplicitLearner.read`
    gives.
    """
    static = learner

    def step(key, current, batch):
        del key
        new = static.update(current, *batch)
        return new, jnp.linalg.norm(new.z)  # the driver's finiteness check reads this

    start = learner.init() if state is None else state
    # The update draws nothing: the driver's key is a formality.
    out = run_chunked_loop(jax.random.key(0), start, step, num_steps=None, inputs=batches,
                           chunk_size=chunk_size, progress=progress, desc="context",
                           unit="batch")
    return out.state
