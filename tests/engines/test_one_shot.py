"""The one-shot engine (engines/one_shot.py): the summary, the output, recipes, rebuilding."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl import (
    Flow,
    LaplaceRefined,
    MultivariateNormal,
    OneShotPosterior,
    SetEncoder,
    inspect_problem,
)
from amortized_ppl.encoders import PseudoObservations
from amortized_ppl.engines import engine_from_description
from amortized_ppl.families import GaussianFactors
from amortized_ppl.models.linear_regression import model_known_noise
from tests.registry import linear_design

ENCODER = SetEncoder(summary_size=6, hidden_size=8, num_heads=2, num_inducing=4)


@pytest.fixture(scope="module")
def problem():
    return inspect_problem(jax.random.key(0), model_known_noise, linear_design, (8, 24),
                           num_pilot=64)


@pytest.fixture(scope="module")
def engine(problem):
    family = LaplaceRefined(MultivariateNormal(head_width=16, head_depth=1), num_steps=2,
                            head_width=16, head_depth=1)
    return OneShotPosterior(problem, encoder=ENCODER, family=family, key=jax.random.key(1))


def _data(n, seed=2):
    (x,), _ = linear_design(jax.random.key(seed), n)
    return {"x": x, "y": x @ jnp.array([1.0, -0.5]) + 0.2, "sigma": 0.5}


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_the_summary_ignores_padding_and_reads_the_size(engine, problem):
    summarize = eqx.filter_jit(lambda e, a, m: e.summarize(problem, a, m))
    data = _data(24)
    mask = jnp.arange(24) < 10
    padded = summarize(engine, data, mask)
    cut = summarize(engine, {k: v[:10] if k != "sigma" else v for k, v in data.items()},
                    jnp.ones(10, bool))
    np.testing.assert_allclose(padded, cut, rtol=1e-5, atol=1e-6)
    assert padded.shape == (7,)  # summary_size + log(N) / log(max_obs)
    np.testing.assert_allclose(padded[-1], jnp.log(10.0) / jnp.log(24.0), rtol=1e-6)
    garbage = {**data, "y": jnp.where(mask, data["y"], jnp.nan)}
    np.testing.assert_allclose(summarize(engine, garbage, mask), padded, rtol=1e-6)


@pytest.mark.slow  # the default tier's budget (3 minutes on 2 cores)
def test_the_output_is_one_data_sets_posterior_and_vmaps(engine, problem):
    data = _data(16)
    out = eqx.filter_jit(lambda e, a, m: e.output(problem, a, m))(engine, data, jnp.ones(16, bool))
    assert out.posterior.event_shape == (3,) and out.posterior.batch_shape == ()
    assert out.start is not None
    batch = {k: jnp.stack([v, v]) if k != "sigma" else v for k, v in data.items()}
    locs = jax.jit(jax.vmap(lambda a, m: engine.posterior(problem, {**a, "sigma": 0.5}, m).mean))(
        {k: v for k, v in batch.items() if k != "sigma"}, jnp.ones((2, 16), bool))
    np.testing.assert_allclose(locs[0], out.posterior.mean, rtol=1e-5)


def test_the_engine_rebuilds_from_its_description(engine, problem):
    description = json.loads(json.dumps(engine.describe()))
    assert description == {
        "type": "OneShotPosterior",
        "encoder": {"type": "SetEncoder", "summary_size": 6, "hidden_size": 8, "num_heads": 2,
                    "num_blocks": 1, "num_inducing": 4},
        "family": {"type": "LaplaceRefined", "num_steps": 2, "head_width": 16, "head_depth": 1,
                   "num_starts": 1,
                   "family": {"type": "MultivariateNormal", "head_width": 16, "head_depth": 1}},
    }
    rebuilt = engine_from_description(problem, description, key=jax.random.key(1))
    same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)),
                        *(eqx.filter(e, eqx.is_inexact_array) for e in (rebuilt, engine)))
    assert all(jax.tree.leaves(same))  # the same key rebuilds the same arrays
    with pytest.raises(ValueError, match="Unknown engine 'Flow'"):
        engine_from_description(problem, {"type": "Flow"}, key=jax.random.key(0))
    with pytest.raises(TypeError, match="family: expected a family recipe"):
        OneShotPosterior(problem, family="mvn", key=jax.random.key(0))


@pytest.mark.parametrize("encoder, family", [
    (ENCODER, GaussianFactors(MultivariateNormal())),
    (PseudoObservations(), MultivariateNormal()),
])
def test_the_pseudo_observation_encoder_and_its_family_only_work_as_a_pair(problem, encoder,
                                                                          family):
    with pytest.raises(ValueError, match="only work as a pair"):
        OneShotPosterior(problem, encoder=encoder, family=family, key=jax.random.key(0))


@pytest.mark.slow  # moved to the slow tier for the default tier's 3-minute budget (issue 17's training test)
def test_a_factor_engine_rebuilds_from_its_description_and_starts_near_the_prior(problem):
    family = GaussianFactors(Flow(MultivariateNormal(head_width=8, head_depth=1),
                                  layers="elementwise", num_layers=2, width=8))
    engine = OneShotPosterior(problem, encoder=PseudoObservations(rank=1, width=8, depth=1),
                              family=family, key=jax.random.key(3))
    description = json.loads(json.dumps(engine.describe()))
    rebuilt = engine_from_description(problem, description, key=jax.random.key(3))
    same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)),
                        *(eqx.filter(e, eqx.is_inexact_array) for e in (rebuilt, engine)))
    assert all(jax.tree.leaves(same))
    data = _data(20)
    posterior = engine.posterior(problem, data, jnp.ones(20, bool))
    draws = posterior.sample(jax.random.key(4), (4000,))
    assert draws.shape == (4000, problem.latent_dim)
    assert np.all(np.isfinite(posterior.log_prob(draws)))
    # small initial factors: the untrained posterior is the prior shrunk a little, never more
    # than its 20 observations could (about (1 + 20 * 0.1^2 * |row|^2)^-1/2 of the prior's SDs)
    prior_sd = np.sqrt(np.diag(np.asarray(problem.prior_scale_tril @ problem.prior_scale_tril.T)))
    ratio = np.asarray(draws.std(0)) / prior_sd
    assert np.all((ratio > 0.3) & (ratio < 1.1)), ratio
