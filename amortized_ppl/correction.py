"""Is the learned correction better than the Laplace fit it corrects? The network off, measured.

A one-shot engine whose family is a :class:`~amortized_ppl.families.LaplaceRefined` stage puts a
learned correction on top of a per-data-set Laplace fit. The correction is bounded
(:func:`~amortized_ppl.families.base.bounded_correction`), but a badly trained network can still
be worse than no network. :func:`check_correction` compares the two on simulated data sets by
the ELBO (the posterior with the higher ELBO is closer to the true posterior in KL(q || p)):
the same engine, and the same engine with the inner family's last layer zeroed, which gives the
Laplace fit exactly. :func:`~amortized_ppl.train.fit` runs it after training and warns when the
correction loses.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl._checks import check_int, check_key
from amortized_ppl.families.flow import FlowHead, zero_last_layers
from amortized_ppl.families.laplace import LaplaceRefinedHead

__all__ = ["CorrectionReport", "check_correction", "without_correction"]


class CorrectionReport(NamedTuple):
    """ELBOs per simulated data set of the corrected posterior and of its Laplace base.

    Attributes:
        corrected, base: ``(B,)`` ELBO estimates (nats).
        gain: mean of ``corrected - base``; negative means the network makes things worse.
        gain_se: its standard error over the data sets.
    """

    corrected: np.ndarray
    base: np.ndarray
    gain: float
    gain_se: float

    @property
    def worse(self) -> bool:
        """The correction loses to its base by more than two standard errors."""
        return self.gain < -2.0 * self.gain_se


def _switched_off(inner):
    """An inner family whose learned outputs are zero: a Gaussian head gives its base, a flow
    the identity over that."""
    if isinstance(inner, FlowHead):
        return FlowHead(_switched_off(inner.gaussian), zero_last_layers(inner.flow))
    if hasattr(inner, "mlp"):
        last = inner.mlp.layers[-1]
        return eqx.tree_at(lambda h: (h.mlp.layers[-1].weight, h.mlp.layers[-1].bias), inner,
                           (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)))
    raise TypeError(f"without_correction: the inner family {type(inner).__name__} has no "
                    f"learned correction to switch off.")


def without_correction(engine):
    """``engine`` with its Laplace stage's learned correction switched off (the Laplace fit).

    Raises:
        TypeError: the engine has no Laplace stage, or its inner family is neither a Gaussian
            head nor a flow over one.
    """
    family = getattr(engine, "family", None)
    if not isinstance(family, LaplaceRefinedHead):
        raise TypeError(
            f"without_correction: expected a one-shot engine with a LaplaceRefined family over a "
            f"Gaussian family or a flow, got {type(engine).__name__} with "
            f"{type(family).__name__}."
        )
    return eqx.tree_at(lambda e: e.family.inner, engine, _switched_off(family.inner))


@eqx.filter_jit
def _elbos(key, problem, engine, arguments, mask, num_draws: int):
    def one(k, a, m):
        q = engine.posterior(problem, a, m)
        u = q.sample(k, (num_draws,))
        log_p = jax.vmap(lambda v: problem.log_density(v, a, m))(u)
        return jnp.mean(log_p - q.log_prob(u))

    keys = jax.random.split(key, mask.shape[0])
    return eqx.filter_vmap(one, in_axes=(0, eqx.if_array(0), 0))(keys, arguments, mask)


def check_correction(key, guide, params, *, design_fn=None, num_obs=None,
                     num_datasets: int = 128, num_draws: int = 64) -> CorrectionReport:
    """ELBOs of the trained posterior and of its Laplace base on simulated data sets.

    Args:
        key: PRNG key (simulations and draws; both posteriors see the same ones).
        guide, params: a guide whose engine has a LaplaceRefined family, and its parameters.
        design_fn, num_obs: the simulator (default: the problem's own).
        num_datasets, num_draws: simulated data sets, and draws per data set and posterior.
    """
    check_key(key)
    num_datasets = check_int(num_datasets, "num_datasets", 2)
    num_draws = check_int(num_draws, "num_draws")
    problem, engine = guide.problem, guide.engine(params)
    base = without_correction(engine)
    sim_key, draw_key = jax.random.split(key)
    batch = eqx.filter_jit(problem.simulator(design_fn, num_obs))(sim_key, num_datasets)
    corrected = np.asarray(_elbos(draw_key, problem, engine, batch.arguments, batch.mask,
                                  num_draws))
    laplace = np.asarray(_elbos(draw_key, problem, base, batch.arguments, batch.mask, num_draws))
    diff = corrected - laplace
    finite = np.isfinite(diff)
    gain = float(np.mean(diff[finite])) if finite.any() else -np.inf
    se = float(np.std(diff[finite], ddof=1) / np.sqrt(finite.sum())) if finite.sum() > 1 else 0.0
    return CorrectionReport(corrected, laplace, gain, se)
