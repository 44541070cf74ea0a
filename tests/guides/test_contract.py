"""The NumPyro contract, once for every registered case and every engine.

Each combination of a case (tests/registry.py) and an engine builds a guide, and checks what a
NumPyro user relies on: ``sample_posterior`` for one data set and a batch (shapes, supports,
determinism given the key), ``median``/``quantiles`` (or a clear refusal where the site's
transform mixes coordinates), ``get_posterior``, a step of NumPyro's ``SVI`` with the guide,
``Predictive`` with the guide, and a checkpoint that restores the guide from itself alone.

Compilation dominates, so the default tier runs a diagonal of the combinations (every case once,
every engine at least once) and the slow tier the rest.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax
import pytest
from numpyro.infer import SVI, Predictive, Trace_ELBO

from amortized_ppl import load_guide, save_params
from tests.registry import ENGINES, combinations, simulate_dataset

DEFAULT_TIER: frozenset = frozenset()
"""Combinations run in the default tier: none since the suite outgrew its 3 minutes on 2 cores
(the simplex case was the last one here); CI's slow tier runs every combination.
The default tier keeps NumPyro's SVI and Predictive with a guide in
``test_svi_sets_the_guide_up_lazily_from_a_data_set`` and tests/test_predictive.py, and the
engines, families and encoders in their own tests."""


COVERED_ELSEWHERE: frozenset = frozenset(
    [("linear_gaussian", e) for e in ("one_shot_normal", "one_shot_laplace", "one_shot_flow",
                                      "iterative")]
    + [("poisson", e) for e in ("one_shot_normal", "one_shot_laplace", "one_shot_flow")])
"""Combinations left out of the grid to keep CI near its 30 minutes (each cost 13-35 s of
compilation): an unconstrained Gaussian model and a scalar positive site add no site kind or
encoder that another case does not bring to every engine (``positive_site`` and
``simplex_site`` carry the transforms, ``sequence`` the other encoder, ``poisson`` stays with
the iterative engine), and linear regression's guides go through SVI, Predictive and
checkpoints in tests/test_predictive.py, test_checkpoint.py and tests/guides/test_amortized.py."""


def _params():
    out = []
    for case, engine in combinations():
        if (case.name, engine) in COVERED_ELSEWHERE:
            continue
        marks = () if (case.name, engine) in DEFAULT_TIER else (pytest.mark.slow,)
        out.append(pytest.param(case, engine, id=f"{case.name}-{engine}", marks=marks))
    return out


def test_the_registry_runs_every_case_through_every_engine_that_takes_it():
    names = {(c.name, e) for c, e in combinations()}
    assert DEFAULT_TIER <= names and COVERED_ELSEWHERE <= names
    assert len(_params()) == 12
    assert len(names) == 19  # 5 cases x 4 engines, but iterative engines read exchangeable data
    assert ("sequence", "iterative") not in names


def _in_support(site, value) -> bool:
    return bool(jnp.all(site.support.check(value)))


@pytest.mark.parametrize("case,engine", _params())
def test_numpyro_contract(case, engine, tmp_path):
    key = jax.random.key(0)
    guide = ENGINES[engine](case)
    guide.setup(jax.random.key(1), case.design_fn, case.num_obs)
    problem = guide.problem
    params = guide.init_params()
    n = case.num_obs[1]
    data = simulate_dataset(jax.random.key(2), guide, n)
    other = simulate_dataset(jax.random.key(3), guide, n)
    batch = {k: jnp.stack([v, other[k]]) if isinstance(v, jax.Array) else v
             for k, v in data.items()}

    # sample_posterior: one data set and a batch; shapes, supports, fixed by the key.
    one = guide.sample_posterior(key, params, sample_shape=(5,), **data)
    again = guide.sample_posterior(key, params, sample_shape=(5,), **data)
    many = guide.sample_posterior(key, params, sample_shape=(5,), **batch)
    for site in problem.sites.latents:
        assert one[site.name].shape == (5,) + site.shape
        assert many[site.name].shape == (2, 5) + site.shape
        assert _in_support(site, one[site.name]) and _in_support(site, many[site.name])
        np.testing.assert_array_equal(one[site.name], again[site.name])
    other_key = guide.sample_posterior(jax.random.key(9), params, sample_shape=(5,), **data)
    assert any(not np.array_equal(one[s], other_key[s]) for s in one)

    # get_posterior over the flat unconstrained latents.
    q = guide.get_posterior(params, **data)
    assert q.batch_shape == () and q.event_shape == (problem.latent_dim,)
    assert guide.get_posterior(params, **batch).batch_shape == (2,)

    # median / quantiles: exact for elementwise transforms, refused otherwise.
    mixed = any(s.unconstrained_shape != s.shape for s in problem.sites.latents)
    if mixed:
        with pytest.raises(NotImplementedError, match="mixes coordinates"):
            guide.median(params, **data)
    else:
        median = guide.median(params, **data)
        qs = guide.quantiles(params, [0.1, 0.5, 0.9], **data)
        for site in problem.sites.latents:
            assert median[site.name].shape == site.shape
            assert qs[site.name].shape == (3,) + site.shape
            assert bool(jnp.all(qs[site.name][0] <= qs[site.name][1]))
            assert bool(jnp.all(qs[site.name][1] <= qs[site.name][2]))
            np.testing.assert_allclose(qs[site.name][1], median[site.name], rtol=1e-5, atol=1e-6)

    # A step of NumPyro's SVI with the guide, on this data set.
    svi = SVI(case.model, guide, optax.adam(1e-3), Trace_ELBO())
    state = svi.init(jax.random.key(4), **data)
    state, loss = svi.update(state, **data)
    assert np.isfinite(float(loss))
    assert set(svi.get_params(state)) == {guide.param_name}

    # Predictive with the guide: posterior draws of every latent site.
    names = list(problem.sites.names)
    predictive = Predictive(case.model, guide=guide, params=params, num_samples=3,
                            return_sites=names)
    draws = predictive(jax.random.key(5), **data)
    for site in problem.sites.latents:
        assert draws[site.name].shape == (3,) + site.shape

    # A checkpoint restores the guide from itself and the model alone: the same description,
    # problem statistics and engine arrays (so the same posterior; the checkpoint tests sample
    # from restored guides, here a recompilation per case would buy nothing more).
    save_params(tmp_path / "ckpt", guide, params)
    loaded, loaded_params = load_guide(tmp_path / "ckpt", case.model, design_fn=case.design_fn)
    assert loaded.describe() == guide.describe()
    for name, value in problem.arrays().items():
        np.testing.assert_array_equal(loaded.problem.arrays()[name], value)
    for got, want in zip(jax.tree.leaves(loaded_params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(got, want)


def test_svi_sets_the_guide_up_lazily_from_a_data_set():
    """NumPyro's lazy set-up: the guide's first call inside SVI builds its problem."""
    from tests.registry import CASES, one_shot_normal

    case = CASES[2]  # poisson: no covariates
    guide = one_shot_normal(case)
    assert not guide.is_setup
    data = {"y": jnp.array([1, 3, 0, 2, 2, 1]), "num_obs": None}
    svi = SVI(case.model, guide, optax.adam(1e-3), Trace_ELBO())
    state = svi.init(jax.random.key(0), **data)
    assert guide.is_setup and guide.problem.max_obs == 6
    _, loss = svi.update(state, **data)
    assert np.isfinite(float(loss))
    with pytest.raises(RuntimeError, match="set up already"):
        guide.setup(jax.random.key(1), case.design_fn, case.num_obs)
    with numpyro.handlers.seed(rng_seed=0):
        with pytest.raises(ValueError, match="one data set"):
            guide(y=jnp.ones((2, 6), jnp.int32))
