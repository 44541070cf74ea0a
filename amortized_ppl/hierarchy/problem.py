"""A hierarchical problem: the model, its structure, its simulator and its statistics, as a value.

:func:`inspect_hierarchical_problem` reads the model's three levels (:mod:`.structure`) and
simulates a pilot batch to learn how to standardize what the networks read and write: per-feature
token location and scale, and the prior's location and scale of the globals and of one group's
locals in unconstrained space (robust: median and interquartile range, so a heavy-tailed prior
such as eight schools' ``HalfCauchy`` does not blow the scales up). The simulator draws data sets
with a number of groups uniform in ``num_groups`` and group sizes uniform in ``group_sizes``,
padded to the largest of each.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl._checks import check_int, check_key
from amortized_ppl.hierarchy import layout
from amortized_ppl.hierarchy.structure import (
    HierarchyStructure,
    inspect_hierarchy,
    trace_hierarchy,
)

__all__ = ["HierarchicalProblem", "inspect_hierarchical_problem", "random_mask"]

DesignFn = Callable[[jax.Array, jax.Array], Mapping[str, Any]]


@dataclasses.dataclass(frozen=True, eq=False)
class HierarchySetup:
    """The static part of a :class:`HierarchicalProblem` (compared by identity)."""

    model: Callable
    structure: HierarchyStructure
    design_fn: DesignFn
    num_groups: tuple[int, int]
    group_sizes: tuple[int, int]


class HierarchicalProblem(eqx.Module):
    """What the hierarchical engines know about a model and do not learn.

    Attributes:
        setup: model, structure, design function and simulation ranges (static).
        token_loc, token_scale: per-feature standardization of observation tokens.
        global_loc, global_scale: robust prior location/scale of the unconstrained globals.
        local_loc, local_scale: the same for one group's unconstrained locals.
    """

    setup: HierarchySetup = eqx.field(static=True)
    token_loc: jax.Array
    token_scale: jax.Array
    global_loc: jax.Array
    global_scale: jax.Array
    local_loc: jax.Array
    local_scale: jax.Array

    @property
    def structure(self) -> HierarchyStructure:
        return self.setup.structure

    @property
    def token_dim(self) -> int:
        return int(self.token_loc.shape[0])

    @property
    def max_groups(self) -> int:
        return self.setup.num_groups[1]

    @property
    def max_size(self) -> int:
        return self.setup.group_sizes[1]

    def raw_tokens(self, data: Mapping[str, Any]) -> jax.Array:
        """``(num_groups, max_size, features)``: covariates and observations side by side."""
        structure = self.structure
        mask = jnp.asarray(data[structure.mask])
        parts = [jnp.asarray(data[name], jnp.float32).reshape(mask.shape + (-1,))
                 for name in structure.covariates + structure.observed]
        return jnp.concatenate(parts, axis=-1)

    def tokens(self, data: Mapping[str, Any]) -> jax.Array:
        """Standardized tokens, squashed by ``asinh`` so that heavy tails stay in range."""
        return jnp.arcsinh((self.raw_tokens(data) - self.token_loc) / self.token_scale)

    def random_layout(self, key: jax.Array) -> jax.Array:
        """A padded mask ``(max_groups, max_size)`` with random numbers of groups and sizes."""
        return random_mask(key, self.setup.num_groups, self.setup.group_sizes)

    def simulate(self, key: jax.Array):
        """One padded prior-predictive data set: ``(data, g, u)`` (see :func:`layout.simulate`)."""
        return _simulate(self.setup, key)


def random_mask(key: jax.Array, num_groups: tuple[int, int],
                group_sizes: tuple[int, int]) -> jax.Array:
    """A padded layout ``(most groups, largest size)``: a number of real groups uniform in
    ``num_groups``, each with a size uniform in ``group_sizes`` (both inclusive); the padded
    groups' rows are all False."""
    (g_lo, g_hi), (n_lo, n_hi) = num_groups, group_sizes
    count_key, size_key = jax.random.split(key)
    num_groups = jax.random.randint(count_key, (), g_lo, g_hi + 1)
    sizes = jax.random.randint(size_key, (g_hi,), n_lo, n_hi + 1)
    sizes = jnp.where(jnp.arange(g_hi) < num_groups, sizes, 0)
    return jnp.arange(n_hi)[None, :] < sizes[:, None]


def _simulate(setup: HierarchySetup, key):
    layout_key, design_key, model_key = jax.random.split(key, 3)
    mask = random_mask(layout_key, setup.num_groups, setup.group_sizes)
    design = dict(setup.design_fn(design_key, mask), **{setup.structure.mask: mask})
    return layout.simulate(model_key, setup.model, setup.structure, design)


def _robust(values: np.ndarray, weights: np.ndarray | None = None):
    if weights is not None:
        values = values[weights]
    loc = np.median(values, axis=0)
    q75, q25 = np.percentile(values, [75, 25], axis=0)
    scale = (q75 - q25) / 1.349
    return loc, np.where(scale > 1e-6, scale, 1.0)


def inspect_hierarchical_problem(
    key: jax.Array,
    model: Callable,
    design_fn: DesignFn,
    *,
    num_groups: tuple[int, int],
    group_sizes: tuple[int, int],
    mask: str = "mask",
    covariates: tuple[str, ...] | None = None,
    num_pilot: int = 512,
) -> HierarchicalProblem:
    """Inspect a hierarchical model into a :class:`HierarchicalProblem`.

    Args:
        key: PRNG key of the pilot simulations.
        model: the NumPyro model (see :mod:`amortized_ppl.hierarchy.structure` for its form).
        design_fn: ``design_fn(key, mask) -> dict`` of the model's covariates for a padded layout.
        num_groups: the least and most number of groups of a simulated data set.
        group_sizes: the least and most observations of a simulated group.
        mask: the name of the model's mask argument.
        covariates: the per-observation covariates the encoder reads (default: every argument of
            the mask's leading shape other than the observations).
        num_pilot: pilot data sets for the statistics.

    Raises:
        ValueError: for a malformed range, and whatever :func:`inspect_hierarchy` raises.
    """
    key = check_key(key, "key")
    num_pilot = check_int(num_pilot, "num_pilot", 2)
    ranges = {}
    for name, value in (("num_groups", num_groups), ("group_sizes", group_sizes)):
        try:
            lo, hi = (int(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a pair (least, most); got {value!r}.") from None
        if not 1 <= lo <= hi:
            raise ValueError(f"{name} must satisfy 1 <= least <= most; got {value!r}.")
        ranges[name] = (lo, hi)
    example_key, pilot_key = jax.random.split(key)
    g_hi = ranges["num_groups"][1]
    full = random_mask(example_key, (g_hi, g_hi), ranges["group_sizes"])
    example = dict(design_fn(example_key, full), **{mask: full})
    example_data = dict(example, **_simulated_observations(model, example))
    structure = inspect_hierarchy(model, example_data, mask=mask, covariates=covariates)
    setup = HierarchySetup(model, structure, design_fn, ranges["num_groups"],
                           ranges["group_sizes"])
    data, g, u = jax.jit(jax.vmap(lambda k: _simulate(setup, k)))(
        jax.random.split(pilot_key, num_pilot))
    stub = HierarchicalProblem(setup, *(jnp.zeros(1),) * 6)
    raw = np.asarray(jax.vmap(stub.raw_tokens)(data), np.float64)
    obs_mask = np.asarray(data[mask])
    token_loc, token_scale = _robust(raw.reshape(-1, raw.shape[-1]), obs_mask.reshape(-1))
    global_loc, global_scale = _robust(np.asarray(g, np.float64))
    group_mask = obs_mask.any(axis=-1).reshape(-1)
    local_loc, local_scale = _robust(np.asarray(u, np.float64).reshape(-1, u.shape[-1]),
                                     group_mask)
    as32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    return HierarchicalProblem(setup, as32(token_loc), as32(token_scale), as32(global_loc),
                               as32(global_scale), as32(local_loc), as32(local_scale))


def _simulated_observations(model: Callable, design: Mapping[str, Any]) -> dict:
    """What the model simulates inside two plates when its observations are left out.

    Those are its observations (a latent in two plates is refused by :func:`inspect_hierarchy`
    anyway); each must be a keyword argument of the site's name, which the structure checks.
    """
    trace = trace_hierarchy(model, design)
    return {name: site["value"] for name, site in trace.items()
            if site["type"] == "sample" and len(site["cond_indep_stack"]) == 2}
