"""Streaming refinement: run a trained iterative guide over a data set of any size.

:func:`refine` takes arrays (held in memory, shuffled into mini-batches each pass, one compiled
pass at a time); :func:`refine_stream` takes an iterable of mini-batches (data that does not fit
in memory, read once per pass from disk or a database). Both show progress, stop after a number of
passes or when a pass changes the posterior by less than a tolerance, and return the last complete
state when interrupted (Ctrl-C), so a long refinement is never lost.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from amortized_ppl._checks import check_key
from amortized_ppl.data import observation_axis, validate_dataset
from amortized_ppl.iterative.kernel import IterativeState
from amortized_ppl.iterative.passes import run_passes, steps_per_pass

__all__ = ["RefineResult", "refine", "refine_stream", "state_change", "warm_start_state"]


class RefineResult(NamedTuple):
    """The outcome of a refinement.

    Attributes:
        state: the last complete state (its readout is the posterior).
        elbo: mini-batch ELBO estimate per step, ``(num_steps,)``.
        changes: the change of the posterior over each pass (see :func:`state_change`).
        num_steps: mini-batches read.
        num_passes: complete passes.
        seconds: wall time.
        converged: a tolerance was given and met.
        interrupted: stopped by Ctrl-C; ``state`` is the last complete one.
    """

    state: IterativeState
    elbo: np.ndarray
    changes: np.ndarray
    num_steps: int
    num_passes: int
    seconds: float
    converged: bool
    interrupted: bool


def state_change(old: IterativeState, new: IterativeState) -> float:
    """Largest change between two readouts, in posterior SDs: ``max_i |loc_i' - loc_i| / sd_i'``
    and ``|log(sd_i' / sd_i)|`` over the latent coordinates."""
    sd_old = jnp.sqrt(jnp.sum(old.scale_tril**2, axis=-1))
    sd_new = jnp.sqrt(jnp.sum(new.scale_tril**2, axis=-1))
    loc = jnp.max(jnp.abs(new.loc - old.loc) / sd_new)
    scale = jnp.max(jnp.abs(jnp.log(sd_new / sd_old)))
    return float(jnp.maximum(loc, scale))


def _check_plan(num_obs: int, batch_size: int, num_passes: int, tol):
    if int(batch_size) < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size}.")
    if int(batch_size) > int(num_obs):
        raise ValueError(
            f"batch_size: the mini-batch ({batch_size}) is larger than the data set ({num_obs} "
            "observations); use batch_size <= num_obs (a data set this small can be read whole)."
        )
    if int(num_passes) < 1:
        raise ValueError(
            f"num_passes: expected at least one pass, got {num_passes} (zero steps leave the "
            "initial state unrefined)."
        )
    if tol is not None and not float(tol) > 0:
        raise ValueError(f"tol: expected a positive number or None, got {tol}.")


def _one_pass(guide, key, params, state, arguments, mask, batch_size):
    return run_passes(
        key,
        guide._step_fn,
        guide.network(params),
        state,
        arguments,
        mask,
        guide.take,
        batch_size=batch_size,
        num_passes=1,
    )


_one_pass_jit = eqx.filter_jit(_one_pass)


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
        key: PRNG key (shuffling and cubature rotations).
        guide: a set-up iterative guide.
        params: its trained parameters.
        *args, **kwargs: the model's arguments for one data set, observations included.
        batch_size: mini-batch size (default: the guide's), at most the number of observations.
        num_passes: the most passes to run.
        tol: stop early once a pass changes the posterior by less than ``tol`` posterior SDs
            (:func:`state_change`).
        state: a state to continue from (default: ``guide.init_state()``, the prior).
        progress: show a progress bar (one tick per pass).

    Returns:
        A :class:`RefineResult`.
    """
    check_key(key, "key")
    bound = guide._bind(args, kwargs)
    # Validate in place (no batched copy of what may be a very large data set).
    batch_ndim, num_obs = validate_dataset(guide.spec, guide.sites, bound)
    if batch_ndim:
        raise ValueError(
            "refine takes one data set; for a batch of data sets use guide.sample_posterior or "
            "vmap guide.refine_in_memory."
        )
    arguments = {
        k: jnp.asarray(v) if isinstance(v, (jax.Array, np.ndarray)) else v
        for k, v in bound.items()
    }
    mask = jnp.ones((num_obs,), bool)
    batch_size = int(batch_size or min(guide.batch_size, num_obs))
    _check_plan(num_obs, batch_size, num_passes, tol)
    state = guide.init_state() if state is None else state
    elbos, changes = [], []
    converged = interrupted = False
    done = 0
    start = time.perf_counter()
    bar = tqdm(total=int(num_passes), disable=not progress, desc="refine", unit="pass")
    try:
        for p in range(int(num_passes)):
            new_state, info = _one_pass_jit(
                guide, jax.random.fold_in(key, p), params, state, arguments, mask, batch_size
            )
            change = state_change(state, new_state)
            state = new_state
            done += 1
            elbos.append(np.asarray(info.elbo).reshape(-1))
            changes.append(change)
            bar.update(1)
            bar.set_postfix(change=f"{change:.2g}", elbo=f"{float(info.elbo[0, -1]):.4g}")
            if tol is not None and p > 0 and change < tol:
                converged = True
                break
    except KeyboardInterrupt:
        warnings.warn(
            f"Refinement interrupted after {done} pass(es); returning the last complete state.",
            RuntimeWarning,
            stacklevel=2,
        )
        interrupted = True
    finally:
        bar.close()
    per_pass = steps_per_pass(num_obs, batch_size)
    return RefineResult(
        state,
        np.concatenate(elbos) if elbos else np.zeros((0,)),
        np.asarray(changes),
        done * per_pass,
        done,
        time.perf_counter() - start,
        converged,
        interrupted,
    )


def _step(guide, key, params, state, batch_arguments, batch_mask, per_pass):
    return guide._step_fn(key, guide.network(params), state, batch_arguments, batch_mask, per_pass)


_step_jit = eqx.filter_jit(_step)


def _pad_batch(guide, batch: Mapping[str, Any], index: int, batch_size: int):
    """Validate one mini-batch (a mapping of data arguments) and pad it to ``batch_size`` rows."""
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"batch {index}: expected a mapping of the data arguments "
            f"{guide.spec.data_arguments} to arrays, got {type(batch).__name__}."
        )
    missing = [a for a in guide.spec.data_arguments if a not in batch]
    unknown = [a for a in batch if a not in guide.spec.data_arguments]
    if missing or unknown:
        raise ValueError(
            f"batch {index}: expected the data arguments {guide.spec.data_arguments}; "
            f"missing {missing}, unknown {unknown}."
        )
    try:
        batch_ndim, rows = validate_dataset(guide.spec, guide.sites, batch)
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
    for arg in guide.spec.data_arguments:
        value = np.asarray(batch[arg])
        axis = observation_axis(guide.spec, guide.sites, arg)
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
        guide: a set-up iterative guide.
        params: its trained parameters.
        batches: an iterable of mini-batches, each a mapping from the model's data arguments
            (``guide.spec.data_arguments``, e.g. ``x`` and ``y``) to arrays of at most
            ``batch_size`` rows; or a function returning a fresh iterable, needed for more than
            one pass (a list or another re-iterable also works). Shuffle between passes there.
        num_obs: the total number of observations (the likelihood of each batch is scaled by
            ``ceil(num_obs / batch_size)``, the batches in one pass).
        batch_size: rows per mini-batch (the last one of a pass may be shorter).
        num_passes: the most passes to run.
        tol: stop early once a pass changes the posterior by less than ``tol`` posterior SDs.
        shared: the model's other arguments (not per observation), if any.
        state: a state to continue from (default: the prior).
        progress: show a progress bar (one tick per mini-batch).

    Returns:
        A :class:`RefineResult`. A pass whose batches do not add up to ``num_obs`` rows warns.
    """
    check_key(key, "key")
    _check_plan(num_obs, batch_size, num_passes, tol)
    if not guide.is_setup:
        raise RuntimeError("The guide is not set up: train it with fit_iterative first.")
    per_pass = steps_per_pass(num_obs, batch_size)
    shared = dict(shared or {})
    unknown = [a for a in shared if a not in guide.signature.parameters]
    if unknown:
        raise ValueError(f"shared: {unknown} are not arguments of the model {guide.signature}.")
    partial = guide.signature.bind_partial(**shared)
    partial.apply_defaults()
    base = dict(partial.arguments)
    state = guide.init_state() if state is None else state
    elbos, changes = [], []
    converged = interrupted = False
    steps = passes = 0
    start = time.perf_counter()
    bar = tqdm(total=int(num_passes) * per_pass, disable=not progress, desc="refine", unit="batch")
    try:
        for p in range(int(num_passes)):
            source = batches() if callable(batches) else batches
            if p > 0 and not callable(batches) and iter(source) is source:
                raise ValueError(
                    "batches: a one-shot iterator cannot be read again for another pass; pass a "
                    "function that returns a fresh iterable (or a list)."
                )
            pass_start, rows_seen = state, 0
            for i, batch in enumerate(source):
                data, batch_mask, rows = _pad_batch(guide, batch, i, int(batch_size))
                arguments = {**base, **data}
                step_key = jax.random.fold_in(jax.random.fold_in(key, p), i)
                state, info = _step_jit(
                    guide, step_key, params, state, arguments, batch_mask, per_pass
                )
                rows_seen += rows
                steps += 1
                elbos.append(float(info.elbo))
                bar.update(1)
            passes += 1
            change = state_change(pass_start, state)
            changes.append(change)
            bar.set_postfix(change=f"{change:.2g}")
            if rows_seen != int(num_obs):
                warnings.warn(
                    f"Pass {p}: the batches held {rows_seen} rows, but num_obs={num_obs}; the "
                    "likelihood scaling assumes one pass reads every observation once.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            if tol is not None and p > 0 and change < tol:
                converged = True
                break
    except KeyboardInterrupt:
        warnings.warn(
            f"Refinement interrupted after {steps} mini-batches; returning the last state.",
            RuntimeWarning,
            stacklevel=2,
        )
        interrupted = True
    finally:
        bar.close()
    return RefineResult(
        state,
        np.asarray(elbos),
        np.asarray(changes),
        steps,
        passes,
        time.perf_counter() - start,
        converged,
        interrupted,
    )


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
    arguments, mask, is_batch = guide.prepare(*args, **kwargs)
    if is_batch:
        raise ValueError("warm_start_state takes one data set.")
    num_obs = int(mask.shape[1])
    take = min(num_obs, int(one_shot_guide.max_obs))
    positions = jax.random.permutation(key, num_obs)[:take]
    one = {k: v[0] if isinstance(v, jax.Array) else v for k, v in arguments.items()}
    sub = guide.take(one, positions)
    posterior = one_shot_guide.get_posterior(one_shot_params, **sub)
    if hasattr(posterior, "scale_tril"):
        loc, tril = posterior.loc, posterior.scale_tril
    else:
        loc, tril = posterior.base_dist.loc, jnp.diag(posterior.base_dist.scale)
    if one_shot_guide.sites.flat_names != guide.sites.flat_names:
        raise ValueError(
            "warm_start_state: the one-shot guide's latents "
            f"{one_shot_guide.sites.flat_names} differ from the iterative guide's "
            f"{guide.sites.flat_names}; were they built for the same model?"
        )
    if not guide.full_rank:
        tril = jnp.diag(jnp.sqrt(jnp.sum(tril**2, axis=-1)))
    return guide.init_state(loc, tril)
