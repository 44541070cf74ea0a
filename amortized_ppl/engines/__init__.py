"""Posterior engines: equinox modules that map a problem and a data set to q(latents | data).

- :class:`OneShotPosterior`: an encoder reads the whole data set; a family (optionally refined by
  Newton steps on the model's density) gives the posterior.
- :class:`IterativePosterior`: a Gaussian state refined over mini-batches by a learned update.

Every engine has ``output(problem, arguments, mask, key) -> FamilyOutput`` for one data set and
``describe()``; :func:`engine_from_description` rebuilds one from its description.
"""

from typing import Any, Mapping

from amortized_ppl._recipes import recipe_from_description
from amortized_ppl.engines.iterative import IterativePosterior
from amortized_ppl.engines.one_shot import OneShotPosterior

__all__ = ["ENGINES", "IterativePosterior", "OneShotPosterior", "engine_from_description"]

ENGINES = {"OneShotPosterior": OneShotPosterior, "IterativePosterior": IterativePosterior}
"""Engine classes by name, for :func:`engine_from_description`."""


def engine_from_description(problem, description: Mapping[str, Any], *, key):
    """Build the engine ``description`` (an engine's ``describe()``) names, for ``problem``.

    Its arrays are freshly initialized from ``key``; load trained ones into it.
    """
    name = description.get("type")
    if name not in ENGINES:
        raise ValueError(f"Unknown engine {name!r}; known engines are {sorted(ENGINES)}.")
    settings = {k: recipe_from_description(v) for k, v in description.items() if k != "type"}
    return ENGINES[name](problem, **settings, key=key)
