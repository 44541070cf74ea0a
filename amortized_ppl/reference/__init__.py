"""Reference posteriors by NUTS (blackjax) with window adaptation, several chains and diagnostics.

The reference is the ground truth amortized guides are judged against, so it is built to be
trusted and to be cheap to repeat over many simulated data sets. One concept per file:

====================  ========================================================================
``checks.py``         input checks: finite data (named), latent sites, ``init_params``, metric
``initialization.py`` the chains' initial positions (NumPyro's init strategy, one key a chain)
``warmup.py``         warm-up of one chain (window adaptation, or the step size alone for a
                      given metric), :func:`warmup_chains` vectorizes it over chains
``sampling.py``       a :func:`jax.lax.scan` of NUTS transitions of every chain
``progress.py``       the host-side progress bar driven from compiled code
``sampler.py``        :func:`build_reference_sampler`, which composes them into one
                      :class:`ReferenceSampler` ``(draw, sample)`` per model and configuration
``posterior.py``      :func:`get_reference_sampler` (cached) and :func:`reference_posterior`
``batch.py``          :func:`reference_posteriors`: many data sets in one vectorized program,
                      split over a device mesh
====================  ========================================================================

The summary (split R-hat, ESS, warnings, ArviZ) and the result types live in
:mod:`amortized_ppl.convergence` and are re-exported here.

``draw`` is compiled once per model and data shape: a second data set of the same shape reuses the
compiled program, and cold and warm starts share one compiled sampler.

References:
    Hoffman, M. D. and Gelman, A. (2014). The No-U-Turn sampler. *JMLR* 15.
    Vehtari, A., Gelman, A., Simpson, D., Carpenter, B. and Bürkner, P.-C. (2021).
    Rank-normalization, folding, and localization: an improved R-hat. *Bayesian Analysis* 16(2).
"""

from amortized_ppl.convergence import (
    RHAT_THRESHOLD,
    Moments,
    ReferenceInfo,
    ReferenceResult,
    flatten_samples,
    reference_moments,
)
from amortized_ppl.reference.batch import reference_posteriors
from amortized_ppl.reference.posterior import get_reference_sampler, reference_posterior
from amortized_ppl.reference.sampler import ReferenceSampler, build_reference_sampler

__all__ = [
    "reference_posteriors",
    "RHAT_THRESHOLD",
    "Moments",
    "ReferenceInfo",
    "ReferenceResult",
    "ReferenceSampler",
    "build_reference_sampler",
    "flatten_samples",
    "get_reference_sampler",
    "reference_moments",
    "reference_posterior",
]
