"""Streaming refinement: run a trained iterative guide over a data set of any size.

:func:`refine` takes arrays (held in memory, shuffled into mini-batches each pass, one compiled
pass at a time); :func:`refine_stream` takes an iterable of mini-batches (data that does not fit
in memory, read once per pass from disk or a database). Both show progress, stop after a number of
passes or when a pass changes the posterior by less than a tolerance, and return the last complete
state when interrupted (Ctrl-C), so a long refinement is never lost.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from amortized_ppl._checks import check_int, check_key
from amortized_ppl.data import observation_axis, validate_dataset
from amortized_ppl.families.base import gaussian_moments
from amortized_ppl.iterative.kernel import IterativeState
from amortized_ppl.iterative.passes import run_passes, steps_per_pass
from amortized_ppl.loop import run_chunked_loop

__all__ = [
    "RefineError",
    "RefineResult",
    "refine",
    "refine_stream",
    "sample_state",
    "state_change",
    "warm_start_state",
]


class RefineResult(NamedTuple):
    """The outcome of a refinement.

    Attributes:
        state: the last complete, finite state (its readout is the posterior).
        elbo: mini-batch ELBO estimate per step, ``(num_steps,)``.
        changes: the change of the posterior over each pass (see :func:`state_change`).
        num_steps: mini-batches read.
        num_passes: complete passes.
        seconds: wall time.
        converged: a tolerance was given and met.
        interrupted: stopped early (Ctrl-C or a non-finite state); ``state`` is the last good one.
        reason: why it stopped (see :data:`amortized_ppl.loop.REASONS`).
    """

    state: IterativeState
    elbo: np.ndarray
    changes: np.ndarray
    num_steps: int
    num_passes: int
    seconds: float
    converged: bool
    interrupted: bool
    reason: str = "done"


class RefineError(ValueError):
    """A stream of mini-batches failed part-way (a bad batch, an iterator that cannot be read
    again); ``result`` holds the refinement up to the last good batch, so nothing read is lost.
    """

    def __init__(self, message: str, result: RefineResult):
        super().__init__(message + " The state after the last good batch is in `error.result`.")
        self.result = result


class RefineInfo(NamedTuple):
    """One step of the driver: minus the mean ELBO (its ``loss``) and the per-batch ELBOs."""

    loss: jax.Array
    elbo: jax.Array


def state_change(old: IterativeState, new: IterativeState) -> float:
    """Largest change between two readouts, in posterior SDs: ``max_i |loc_i' - loc_i| / sd_i'``
    and ``|log(sd_i' / sd_i)|`` over the latent coordinates."""
    sd_old = jnp.sqrt(jnp.sum(old.scale_tril**2, axis=-1))
    sd_new = jnp.sqrt(jnp.sum(new.scale_tril**2, axis=-1))
    loc = jnp.max(jnp.abs(new.loc - old.loc) / sd_new)
    scale = jnp.max(jnp.abs(jnp.log(sd_new / sd_old)))
    return float(jnp.maximum(loc, scale))


def _check_plan(num_obs: int, batch_size: int, num_passes: int, tol):
    check_int(batch_size, "batch_size")
    if int(batch_size) > int(num_obs):
        raise ValueError(
            f"batch_size: the mini-batch ({batch_size}) is larger than the data set ({num_obs} "
            "observations); use batch_size <= num_obs (a data set this small can be read whole)."
        )
    if isinstance(num_passes, bool) or not isinstance(num_passes, (int, np.integer)):
        raise ValueError(f"num_passes: expected an int >= 1, got {num_passes!r}.")
    if int(num_passes) < 1:
        raise ValueError(
            f"num_passes: expected at least one pass, got {num_passes} (zero steps leave the "
            "initial state unrefined)."
        )
    if tol is not None and not float(tol) > 0:
        raise ValueError(f"tol: expected a positive number or None, got {tol}.")


def _pass_step(problem, engine, arguments, mask, batch_size, key, state):
    """Exactly one shuffled pass over a data set held in memory (the driver's step; the
    engine's ``min_steps`` floor applies to in-memory posteriors, not to a pass asked for)."""
    state, infos = run_passes(key, engine.kernel(problem)[1], engine.network, state, arguments,
                              mask, problem.take, batch_size=batch_size, num_passes=1)
    elbo = infos.elbo.reshape(-1)
    return state, RefineInfo(-jnp.mean(elbo), elbo)


@eqx.filter_jit
def _first_batch_start(engine, key, problem, arguments, mask, batch_size):
    return engine.first_batch_start(key, problem, arguments, mask, batch_size)


@eqx.filter_jit
def _batch_start(engine, problem, state, batch_arguments, batch_mask, per_pass):
    return engine.start(problem, state, batch_arguments, batch_mask, per_pass)


def _batch_step(problem, engine, base, per_pass, key, state, batch):
    """One streamed mini-batch (the driver's step with inputs)."""
    data, batch_mask = batch
    state, info = engine.step(key, problem, state, {**base, **data}, batch_mask, per_pass)
    return state, RefineInfo(-info.elbo, info.elbo[None])


def _iterative_engine(guide, params):
    engine = guide.engine(params)
    if not hasattr(engine, "refine"):
        raise TypeError(
            f"refine needs an iterative engine; this guide's engine is a {type(engine).__name__}."
        )
    return engine


def refine(
    key: jax.Array,
    guide,
    params,
    *args,
    batch_size: int | None = None,
    num_passes: int = 3,
    tol: float | None = None,
    state: IterativeState | None = None,
    progress: bool = True,
    **kwargs,
) -> RefineResult:
    """Refine the posterior of one data set held in arrays, pass by pass.

    Args:
        key: PRNG key (shuffling and cubature rotations); the result is fixed by it.
        guide: a set-up guide with an iterative engine.
        params: its trained parameters.
        *args, **kwargs: the model's arguments for one data set, observations included.
        batch_size: mini-batch size (default: the engine's), at most the number of observations.
        num_passes: the most passes to run.
        tol: stop early once a pass changes the posterior by less than ``tol`` posterior SDs
            (:func:`state_change`).
        state: a state to continue from (default: the prior, moved to the Laplace fit of a
            random mini-batch; see :func:`~amortized_ppl.iterative.kernel.laplace_start`).
        progress: show a progress bar (one tick per pass).

    Returns:
        A :class:`RefineResult`.
    """
    check_key(key, "key")
    problem = guide.problem
    engine = _iterative_engine(guide, params)
    bound = problem.bind(args, kwargs)
    # Validate in place (no batched copy of what may be a very large data set).
    batch_ndim, num_obs = validate_dataset(problem.spec, problem.sites, bound)
    if batch_ndim:
        raise ValueError(
            "refine takes one data set; for a batch of data sets use guide.sample_posterior."
        )
    arguments = {
        k: jnp.asarray(v) if isinstance(v, (jax.Array, np.ndarray)) else v
        for k, v in bound.items()
    }
    mask = jnp.ones((num_obs,), bool)
    batch_size = int(batch_size or min(engine.batch_size, num_obs))
    _check_plan(num_obs, batch_size, num_passes, tol)
    start_key, key = jax.random.split(key)
    if state is None:
        state = _first_batch_start(engine, start_key, problem, arguments, mask, batch_size)
    previous, changes = [state], []

    def stop_fn(new_state, infos):
        changes.append(state_change(previous[0], new_state))
        previous[0] = new_state
        return tol is not None and len(changes) > 1 and changes[-1] < tol

    step = Partial(_pass_step, problem, engine, arguments, mask, batch_size)
    out = run_chunked_loop(key, state, step, num_steps=int(num_passes), chunk_size=1,
                           stop_fn=stop_fn, min_finite=1.0, progress=progress, desc="refine",
                           unit="pass",
                           explain_nonfinite=lambda infos: "The refinement diverged on this "
                           "data set; the returned state is the last finite one.")
    done = len(changes)
    return RefineResult(
        out.state,
        np.asarray(out.infos.elbo).reshape(-1) if out.infos is not None else np.zeros((0,)),
        np.asarray(changes),
        done * steps_per_pass(num_obs, batch_size),
        done,
        out.seconds,
        out.reason == "converged",
        out.interrupted,
        out.reason,
    )


def _pad_batch(problem, batch: Mapping[str, Any], index: int, batch_size: int):
    """Validate one mini-batch (a mapping of data arguments) and pad it to ``batch_size`` rows."""
    data_arguments = problem.data_arguments
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"batch {index}: expected a mapping of the data arguments {data_arguments} to "
            f"arrays, got {type(batch).__name__}."
        )
    missing = [a for a in data_arguments if a not in batch]
    unknown = [a for a in batch if a not in data_arguments]
    if missing or unknown:
        raise ValueError(
            f"batch {index}: expected the data arguments {data_arguments}; missing {missing}, "
            f"unknown {unknown}."
        )
    try:
        batch_ndim, rows = validate_dataset(problem.spec, problem.sites, batch)
    except ValueError as err:
        raise ValueError(f"batch {index}: {err}") from None
    if batch_ndim:
        raise ValueError(f"batch {index}: expected one data set's rows, got a batch of data sets.")
    if rows > batch_size:
        raise ValueError(
            f"batch {index}: {rows} rows, more than batch_size={batch_size}; give batches of at "
            "most batch_size rows (the compiled step has a fixed size)."
        )
    padded = {}
    for arg in data_arguments:
        value = np.asarray(batch[arg])
        axis = observation_axis(problem.spec, problem.sites, arg)
        widths = [(0, 0)] * value.ndim
        widths[axis] = (0, batch_size - rows)
        padded[arg] = jnp.asarray(np.pad(value, widths, mode="edge"))
    return padded, jnp.arange(batch_size) < rows, rows


def refine_stream(
    key: jax.Array,
    guide,
    params,
    batches: Iterable[Mapping[str, Any]] | Callable[[], Iterable[Mapping[str, Any]]],
    *,
    num_obs: int,
    batch_size: int,
    num_passes: int = 1,
    tol: float | None = None,
    shared: Mapping[str, Any] | None = None,
    state: IterativeState | None = None,
    progress: bool = True,
) -> RefineResult:
    """Refine over mini-batches read from an iterable (data that does not fit in memory).

    Args:
        key: PRNG key (cubature rotations; the order of the batches is the iterable's).
        guide: a set-up guide with an iterative engine.
        params: its trained parameters.
        batches: an iterable of mini-batches, each a mapping from the model's data arguments
            (``guide.problem.data_arguments``, e.g. ``x`` and ``y``) to arrays of at most
            ``batch_size`` rows; or a function returning a fresh iterable, needed for more than
            one pass (a list or another re-iterable also works). Shuffle between passes there.
        num_obs: the total number of observations (the likelihood of each batch is scaled by
            ``ceil(num_obs / batch_size)``, the batches in one pass).
        batch_size: rows per mini-batch (the last one of a pass may be shorter).
        num_passes: the most passes to run.
        tol: stop early once a pass changes the posterior by less than ``tol`` posterior SDs.
        shared: the model's other arguments (not per observation), if any.
        state: a state to continue from (default: the prior, moved to the Laplace fit of the
            first mini-batch; see :func:`~amortized_ppl.iterative.kernel.laplace_start`).
        progress: show a progress bar per pass (one tick per mini-batch).

    Returns:
        A :class:`RefineResult`. A pass whose batches do not add up to ``num_obs`` rows warns.

    Raises:
        RefineError: a batch is malformed (wrong arguments, shapes, NaN/Inf) or a one-shot
            iterator is asked for a second pass; its ``result`` keeps the state refined from
            every batch before.
    """
    check_key(key, "key")
    _check_plan(num_obs, batch_size, num_passes, tol)
    problem = guide.problem
    engine = _iterative_engine(guide, params)
    per_pass = steps_per_pass(num_obs, batch_size)
    shared = dict(shared or {})
    signature = problem.spec.signature
    unknown = [a for a in shared if a not in signature.parameters]
    if unknown:
        raise ValueError(f"shared: {unknown} are not arguments of the model {signature}.")
    partial = signature.bind_partial(**shared)
    partial.apply_defaults()
    base = {k: v for k, v in partial.arguments.items() if k not in problem.data_arguments}
    starting = state is None
    state = engine.init_state(problem) if starting else state
    step = Partial(_batch_step, problem, engine, base, per_pass)
    elbos, changes = [], []
    steps = passes = 0
    seconds, interrupted, reason = 0.0, False, "done"

    def result():
        return RefineResult(state, np.concatenate(elbos) if elbos else np.zeros((0,)),
                            np.asarray(changes), steps, passes, seconds, reason == "converged",
                            interrupted, reason)

    for p in range(int(num_passes)):
        source = batches() if callable(batches) else batches
        if p > 0 and not callable(batches) and iter(source) is source:
            interrupted, reason = True, "exhausted"
            raise RefineError(
                f"batches: a one-shot iterator cannot be read again for pass {p + 1}; pass a "
                "function that returns a fresh iterable (or a list).", result())
        rows_seen, failure = [0], []

        def padded(source=source, rows_seen=rows_seen, failure=failure):
            for i, batch in enumerate(source):
                try:
                    data, batch_mask, rows = _pad_batch(problem, batch, i, int(batch_size))
                except (ValueError, TypeError) as error:
                    failure.append(error)  # ends this pass; raised below with the state so far
                    return
                rows_seen[0] += rows
                yield data, batch_mask

        batches_in = padded()
        if starting:  # from the prior: start at the Laplace fit of the first mini-batch
            first = next(batches_in, None)
            if first is not None:
                state = _batch_start(engine, problem, state, {**base, **first[0]}, first[1],
                                     per_pass)
                batches_in = itertools.chain([first], batches_in)
            starting = False

        out = run_chunked_loop(jax.random.fold_in(key, p), state, step, num_steps=None,
                               chunk_size=1, inputs=batches_in, min_finite=1.0, progress=progress,
                               desc=f"refine pass {p + 1}", unit="batch")
        done = 0 if out.infos is None else len(out.history)
        steps += done
        seconds += out.seconds
        if out.infos is not None:
            elbos.append(np.asarray(out.infos.elbo).reshape(-1))
        if failure:
            state, interrupted, reason = out.state, True, "exhausted"
            raise RefineError(f"pass {p + 1}: {failure[0]}", result()) from failure[0]
        if out.reason in ("nonfinite", "interrupt"):
            state, interrupted, reason = out.state, True, out.reason
            break
        changes.append(state_change(state, out.state))
        state = out.state
        passes += 1
        if rows_seen[0] != int(num_obs):
            warnings.warn(
                f"Pass {p}: the batches held {rows_seen[0]} rows, but num_obs={num_obs}; the "
                "likelihood scaling assumes one pass reads every observation once.",
                RuntimeWarning,
                stacklevel=2,
            )
        if tol is not None and p > 0 and changes[-1] < tol:
            reason = "converged"
            break
    return result()


def sample_state(key: jax.Array, guide, state: IterativeState, sample_shape=()) -> dict:
    """Constrained draws keyed by site name from a state's readout (e.g. ``refine(...).state``)."""
    check_key(key, "key")
    engine = _iterative_engine(guide, guide.init_params())
    flat = engine.readout(state).sample(key, tuple(sample_shape))
    return guide.problem.sites.constrain(flat)


def warm_start_state(key, guide, one_shot_guide, one_shot_params, *args, **kwargs):
    """An initial state from a one-shot amortized guide's posterior.

    The one-shot guide reads a random subsample of at most its ``max_obs`` observations, so its
    posterior is wider than the full data's but centred near it: a good place to linearize the
    first pass (it matters for models whose posterior is not Gaussian).

    Args:
        key: PRNG key (the subsample).
        guide: the iterative guide.
        one_shot_guide, one_shot_params: a trained one-shot guide of the same model.
        *args, **kwargs: the model's arguments for one data set.

    Returns:
        An :class:`IterativeState`.
    """
    problem = guide.problem
    if one_shot_guide.problem.sites.flat_names != problem.sites.flat_names:
        raise ValueError(
            "warm_start_state: the one-shot guide's latents "
            f"{one_shot_guide.problem.sites.flat_names} differ from the iterative guide's "
            f"{problem.sites.flat_names}; were they built for the same model?"
        )
    arguments, mask, is_batch = guide.prepare(*args, **kwargs)
    if is_batch:
        raise ValueError("warm_start_state: takes one data set.")
    num_obs = int(mask.shape[1])
    take = min(num_obs, int(one_shot_guide.max_obs))
    sub_key, posterior_key = jax.random.split(key)
    positions = jax.random.permutation(sub_key, num_obs)[:take]
    one = {k: v[0] if isinstance(v, jax.Array) else v for k, v in arguments.items()}
    sub = problem.take(one, positions)
    posterior = one_shot_guide.get_posterior(one_shot_params, rng_key=posterior_key, **sub)
    loc, tril = gaussian_moments(posterior)
    return _iterative_engine(guide, guide.init_params()).init_state(problem, loc, tril)
