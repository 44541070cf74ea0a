"""A model's fingerprint: a hash of its traced structure, so a checkpoint cannot load into another model.

Two models with the same function name and latent sites can still differ (a Student-t likelihood
where a Normal was, another prior scale); a checkpoint trained for one would load silently into the
other. The fingerprint hashes what the model *is*, read from two traces with different seeds on the
same arguments:

- every sample and deterministic site in order: its name, whether it is observed, its
  distribution (the whole chain of wrappers: ``Independent``, ``ExpandedDistribution``, masks);
- the plates: names and dims, and sizes except for the data plate (its size is the data set's);
- every distribution parameter that is a constant of the model (equal in both traces): its value.
  Parameters that depend on the latents differ between the traces and are recorded as such. Inside
  the data plate a constant counts only when all its entries are equal (``Normal(mu, 0.5)``), so
  that values computed from the covariates (which differ between draws of a design) do not enter.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Mapping

import jax
import numpy as np
from numpyro import handlers

from amortized_ppl.sites import trace_model

__all__ = ["model_fingerprint", "model_probe", "same_probe"]


def model_fingerprint(model: Callable, arguments: Mapping[str, Any], data_plate: str) -> str:
    """A short hex digest of ``model``'s traced structure on ``arguments`` (see module docs).

    Args:
        model: the NumPyro model.
        arguments: its bound arguments for one data set (with or without observations: the
            observed values are not part of the digest, and their distributions' parameters
            depend on the latents either way).
        data_plate: the name of the plate over observations.
    """
    first = trace_model(model, jax.random.key(11), (), dict(arguments))
    second = trace_model(model, jax.random.key(12), (), dict(arguments))
    entries = []
    for name, site in first.items():
        if site["type"] == "plate":
            continue
        if site["type"] not in ("sample", "deterministic"):
            continue
        plates = [(f.name, f.dim, None if f.name == data_plate else f.size)
                  for f in site.get("cond_indep_stack", ())]
        entry = {"name": name, "type": site["type"], "plates": plates}
        if site["type"] == "sample":
            in_data_plate = any(f.name == data_plate for f in site.get("cond_indep_stack", ()))
            other = second.get(name, {}).get("fn")
            entry["distribution"] = _describe_fn(site["fn"], other, in_data_plate)
        entries.append(entry)
    text = json.dumps(entries, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _describe_fn(fn, other, in_data_plate: bool) -> list:
    """The wrapper chain of a distribution, each with its constant parameters."""
    chain = []
    while fn is not None:
        params = {}
        for param in sorted(getattr(fn, "arg_constraints", {})):
            params[param] = _constant(_param(fn, param), _param(other, param), in_data_plate)
        entry = {"class": type(fn).__name__, "params": params}
        if hasattr(fn, "reinterpreted_batch_ndims"):
            entry["reinterpreted_batch_ndims"] = int(fn.reinterpreted_batch_ndims)
        chain.append(entry)
        fn, other = getattr(fn, "base_dist", None), getattr(other, "base_dist", None)
    return chain


def _param(fn, name):
    if fn is None:
        return None
    try:
        return getattr(fn, name)
    except Exception:  # a lazy parameter that cannot be computed here: no constant to record
        return None


def _constant(value, other, in_data_plate: bool):
    """The value when it is a constant of the model, else a marker."""
    try:
        a, b = np.asarray(value, np.float64), np.asarray(other, np.float64)
    except (TypeError, ValueError):
        return "opaque"
    if a.shape != b.shape or not np.array_equal(a, b, equal_nan=True):
        return "varies"
    if in_data_plate:
        flat = a.ravel()
        if flat.size and np.all(flat == flat[0]):
            return _rounded(flat[:1])
        return "data"
    return {"shape": list(a.shape), "value": _rounded(a.ravel())}


def _rounded(values: np.ndarray) -> list:
    # Float32 precision: the same model traced on another backend gives the same digest.
    return [float(f"{v:.6g}") for v in np.asarray(values, np.float32).tolist()]


def model_probe(model: Callable, arguments: Mapping[str, Any], latent_names) -> list[float]:
    """What the model computes at fixed latents: per distribution parameter of every sample site,
    its mean, mean absolute value and SD, with the latents set to one prior draw (seeded).

    The fingerprint sees the structure; the probe sees the arithmetic (a likelihood mean
    ``x @ w - b`` where the checkpoint had ``x @ w + b``). It depends on the arguments, so a
    checkpoint compares probes on its own stored example; compare with :func:`same_probe`
    (a tolerance, not equality: another backend rounds differently).
    """
    first = trace_model(model, jax.random.key(11), (), dict(arguments))
    latents = {name: first[name]["value"] for name in latent_names}
    trace = trace_model(handlers.condition(model, latents), jax.random.key(12), (), dict(arguments))
    probe = []
    for site in trace.values():
        fn = site.get("fn") if site["type"] == "sample" else None
        while fn is not None:
            for param in sorted(getattr(fn, "arg_constraints", {})):
                try:
                    value = np.asarray(_param(fn, param), np.float64)
                except (TypeError, ValueError):
                    continue
                if value.size:
                    probe += [float(np.mean(value)), float(np.mean(np.abs(value))),
                              float(np.std(value))]
            fn = getattr(fn, "base_dist", None)
    return probe


def same_probe(a, b, *, rtol: float = 1e-3, atol: float = 1e-5) -> bool:
    """Whether two probes agree (same length, values within the tolerance)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True))
