"""Shared test helpers: a small linear-regression design and an exact guide without training."""

import functools

import jax


def small_design(key, num_obs):
    """Linear-regression covariates with 3 features: small and fast."""
    from amortized_ppl.models.linear_regression import design_fn

    return design_fn(key, num_obs, num_features=3)


@functools.lru_cache(maxsize=None)
def exact_linear_guide(newton_steps: int = 4, num_obs=(20, 60)):
    """A set-up guide for known-noise linear regression and parameters with the head zeroed.

    Cached: test modules share one guide per setting, and with it the programs compiled for it
    (the guide is a static argument of the jitted functions). Tests must leave it unchanged.

    With ``newton_steps > 0`` the posterior is the Laplace fit, exact for this linear-Gaussian
    model (zero head outputs leave it unchanged): a perfect guide without training. With
    ``newton_steps=0`` it is an untrained network, far from the posterior.
    """
    import equinox as eqx
    import jax.numpy as jnp

    from amortized_ppl import AutoAmortizedMultivariateNormal
    from amortized_ppl.models.linear_regression import model_known_noise

    guide = AutoAmortizedMultivariateNormal(model_known_noise, newton_steps=newton_steps)
    guide.setup(jax.random.key(0), small_design, num_obs)
    engine = guide.engine(guide.init_params())
    head = (lambda e: e.family.inner.mlp) if newton_steps else (lambda e: e.family.mlp)
    last = head(engine).layers[-1]
    engine = eqx.tree_at(
        lambda e: (head(e).layers[-1].weight, head(e).layers[-1].bias),
        engine,
        (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)),
    )
    return guide, {guide.param_name: eqx.filter(engine, eqx.is_inexact_array)}


def load_script(path):
    """Import a script that is not part of a package (``benchmarks/*.py``) as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(path)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
