"""The NumPyro adapter (guides/amortized.py): set-up, parameters, accuracy, errors, compile counts.

The contract every engine follows is in test_contract.py; this file holds what is specific to
the adapter itself.
"""

import types
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from numpyro import handlers
from numpyro.infer import SVI

from amortized_ppl import (
    AutoAmortized,
    AutoAmortizedMultivariateNormal,
    AutoAmortizedNormal,
    ForwardKL,
    MultivariateNormal,
    OneShotPosterior,
    fit,
    inspect_problem,
)
from amortized_ppl.engines import one_shot
from amortized_ppl.models.linear_regression import design_fn, exact_posterior, model_known_noise
from tests.helpers import exact_linear_guide, small_design
from tests.registry import TINY


def simulate(key, n, d=8):
    (x,), _ = design_fn(key, n, d)
    trace = handlers.trace(handlers.seed(model_known_noise, jax.random.fold_in(key, 1))).get_trace(x)
    return x, trace["y"]["value"]


@pytest.fixture(scope="module")
def exact():
    """The shared exact guide (Laplace stage, zero head) of known-noise regression, d = 3, N <= 60:
    built once per test process, so its compiled programs serve several test files."""
    guide, params = exact_linear_guide(newton_steps=4)
    return guide, types.SimpleNamespace(params=params)


@pytest.fixture(scope="module")
def newton_fit():
    guide = AutoAmortizedMultivariateNormal(model_known_noise, newton_steps=2, **TINY)
    result = fit(jax.random.key(0), guide, design_fn=design_fn, num_obs=(10, 60), num_steps=40,
                 batch_size=16, chunk_size=20, progress=False)
    return guide, result


@pytest.mark.slow  # trains through Newton steps: the gradient compiles for about 10 s
def test_newton_guide_matches_the_closed_form(newton_fit):
    # With known noise the Laplace base is exact, and 40 training steps from a near-zero
    # correction cannot move it far: means within 0.25 posterior SD and SDs within 25%, well
    # outside the 5-sigma Monte Carlo noise of 4,000 draws (about 0.08 SD and 2%).
    guide, result = newton_fit
    sizes = (10, 35, 60)
    data = [simulate(jax.random.key(10 + i), 60) for i in range(3)]
    xs, ys = jnp.stack([d[0] for d in data]), jnp.stack([d[1] for d in data])
    mask = np.arange(60)[None, :] < np.asarray(sizes)[:, None]  # one padded batch, one program
    draws = guide.sample_posterior(jax.random.key(0), result.params, xs, ys, data_mask=mask,
                                   sample_shape=(4000,))
    for i, n in enumerate(sizes):
        post = exact_posterior(xs[i, :n], ys[i, :n])
        flat = jnp.concatenate([draws["w"][i], draws["b"][i, :, None]], axis=1)
        sd = jnp.sqrt(jnp.diag(post.cov))
        assert float(jnp.max(jnp.abs(flat.mean(0) - post.mean) / sd)) < 0.25
        ratio = flat.std(0) / sd
        assert float(jnp.min(ratio)) > 0.75 and float(jnp.max(ratio)) < 1.25


@pytest.mark.slow  # compiles for 3-5 s: the default tier stays under 3 minutes
def test_a_guide_from_a_problem_and_a_built_engine():
    problem = inspect_problem(jax.random.key(0), model_known_noise, design_fn, (10, 60))
    engine = OneShotPosterior(problem, family=MultivariateNormal(head_width=16, head_depth=1),
                              key=jax.random.key(1))
    guide = AutoAmortized(problem, engine)
    assert guide.is_setup and guide.problem is problem and guide.max_obs == 60
    params = guide.init_params()
    assert guide.engine(params).family.latent_dim == 9
    x, y = simulate(jax.random.key(2), 20)
    assert guide.sample_posterior(jax.random.key(3), params, x, y)["w"].shape == (8,)
    with pytest.raises(ValueError, match="describe how to build a problem"):
        AutoAmortized(problem, engine, observed=("y",))
    with pytest.raises(ValueError, match="pass the problem it was built for"):
        AutoAmortized(model_known_noise, engine)
    with pytest.raises(TypeError, match="engine: expected an engine module or a factory"):
        AutoAmortized(problem, "mvn")


def test_parameters_belong_to_their_guide(exact):
    guide, result = exact
    with pytest.raises(KeyError, match="no entry 'amortized\\$net\\$params'"):
        guide.engine({"other$net$params": result.params[guide.param_name]})
    with pytest.raises(RuntimeError, match="set up already"):
        guide.setup(jax.random.key(0), design_fn, (10, 60))


@pytest.mark.slow  # the default tier's budget (3 minutes on 2 cores)
def test_an_amortized_loss_object_is_the_loss_on_fresh_simulations(exact):
    from amortized_ppl.losses import forward_kl

    guide, result = exact
    loss = ForwardKL(batch_size=4)

    @jax.jit
    def both(params):
        value = loss.loss(jax.random.key(1), params, model_known_noise, guide)
        sim_key, loss_key = jax.random.split(jax.random.key(1))
        batch = guide.problem.simulator()(sim_key, 4)
        return value, forward_kl(loss_key, guide.problem, guide.engine(params), batch)

    value, expected = both(result.params)
    np.testing.assert_allclose(value, expected, rtol=1e-5)


@pytest.mark.slow  # trains by SVI for 40 steps
def test_an_amortized_loss_object_trains_inside_numpyro_svi():
    guide = AutoAmortizedNormal(model_known_noise, **TINY)
    guide.setup(jax.random.key(0), design_fn, (10, 40))
    x, y = simulate(jax.random.key(1), 30)
    svi = SVI(model_known_noise, guide, optax.adam(3e-3), ForwardKL(batch_size=16))
    result = svi.run(jax.random.key(2), 40, x, y, progress_bar=False)
    assert result.losses[-10:].mean() < result.losses[:10].mean()
    with pytest.raises(ValueError, match="different model"):
        ForwardKL().loss(jax.random.key(0), guide.init_params(), design_fn, guide, x, y)


def test_guide_rejects_batches_inside_numpyro(exact):
    guide, result = exact
    x, y = simulate(jax.random.key(0), 20, d=3)
    seeded = handlers.seed(handlers.substitute(guide, data=result.params), jax.random.key(0))
    with pytest.raises(ValueError, match="one data set"):
        seeded(jnp.stack([x, x]), jnp.stack([y, y]))


def test_guide_requires_setup_and_observations(exact):
    guide = AutoAmortizedNormal(model_known_noise)
    with pytest.raises(RuntimeError, match="setup"):
        guide.init_params()
    with pytest.raises(ValueError, match="observed: \\['z'\\] are not arguments"):
        AutoAmortizedNormal(model_known_noise, observed=("z",))
    with pytest.raises(ValueError, match="newton_steps: expected an int >= 0"):
        AutoAmortizedNormal(model_known_noise, newton_steps=-1)
    with pytest.raises(ValueError, match="encoder: expected one of"):
        AutoAmortizedNormal(model_known_noise, encoder="graph")
    trained, result = exact
    x, _ = simulate(jax.random.key(0), 20, d=3)
    with pytest.raises(ValueError, match="'y'"):
        trained.sample_posterior(jax.random.key(0), result.params, x, None)
    with pytest.raises(ValueError, match="more than the 60"):
        xb, yb = simulate(jax.random.key(0), 61, d=3)
        trained.sample_posterior(jax.random.key(0), result.params, xb, yb)
    with pytest.raises(TypeError, match="jax.random.key\\(3\\)"):
        trained.sample_posterior(3, result.params, x, jnp.zeros(20))


def test_sampling_compiles_once_per_shape(exact, monkeypatch):
    """The hot path: repeated calls of the same shapes reuse the compiled program."""
    guide, result = exact
    counted = chex.assert_max_traces(one_shot.OneShotPosterior.output, n=1)
    monkeypatch.setattr(one_shot.OneShotPosterior, "output", counted)
    x, y = simulate(jax.random.key(5), 23, d=3)  # a shape no other test uses
    for seed in range(3):
        guide.sample_posterior(jax.random.key(seed), result.params, x, y, sample_shape=(7,))


def test_the_ood_detector_rides_on_a_copy(exact):
    from amortized_ppl.diagnostics.ood import OODDetector

    guide, result = exact
    detector = OODDetector(np.zeros(1), np.eye(1), np.ones(1), np.zeros(1), np.zeros(1),
                           np.zeros(1), (10, 60))
    warned = guide.with_ood_detector(detector)
    assert warned.problem is guide.problem and guide.ood_detector is None
    assert warned.ood_detector is detector


@pytest.mark.slow  # the default tier's budget (3 minutes on 2 cores)
def test_sampling_warns_outside_the_training_range_without_a_detector():
    # Issue 15: y * 1e6 and x * 1e20 got confident draws (the network saturates) and data sets
    # smaller than the training range passed silently, with no detector attached.
    guide, params = exact_linear_guide(newton_steps=0, num_obs=(20, 60))
    (x,), _ = small_design(jax.random.key(3), 40)
    y = x @ jnp.ones(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        guide.sample_posterior(jax.random.key(0), params, x, y=y)  # inside: silent
    with pytest.warns(RuntimeWarning, match=r"data set 0: values far beyond the simulations \(y "):
        guide.sample_posterior(jax.random.key(0), params, x, y=y * 1e6)
    with pytest.warns(RuntimeWarning, match=r"x\[0\] [0-9.e+]+x, x\[1\]"):
        guide.sample_posterior(jax.random.key(0), params, x * 1e20, y=y)
    with pytest.warns(RuntimeWarning, match="5 observations, fewer than the 20"):
        guide.sample_posterior(jax.random.key(0), params, x[:5], y=y[:5])
    batch_x, batch_y = jnp.stack([x, x]), jnp.stack([y, y * 1e6])
    with pytest.warns(RuntimeWarning, match=r"Outside what the guide was trained on: data set 1:"):
        guide.sample_posterior(jax.random.key(0), params, batch_x, y=batch_y)


def test_obscure_inputs_get_messages_that_name_them():
    # Issue 15: sample_shape=5 gave "'int' object is not iterable"; quantiles(p, 0.5) "expected
    # levels in (0, 1), got 0.5".
    guide, params = exact_linear_guide(newton_steps=0, num_obs=(20, 60))
    (x,), _ = small_design(jax.random.key(3), 40)
    y = x @ jnp.ones(3)
    with pytest.raises(TypeError, match=r"sample_shape: expected a tuple of ints such as \(5,\)"):
        guide.sample_posterior(jax.random.key(0), params, x, y=y, sample_shape=5)
    with pytest.raises(TypeError, match="non-negative ints"):
        guide.sample_posterior(jax.random.key(0), params, x, y=y, sample_shape=(2.5,))
    with pytest.raises(ValueError, match=r"a sequence of levels such as \[0.5\]"):
        guide.quantiles(params, 0.5, x, y=y)
