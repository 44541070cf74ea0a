"""Iterative guides: the kernel, passes, in-memory and streaming refinement, training, baselines.

The untrained update network outputs zeros, so an untrained guide runs the base natural-gradient
rule, which is exact after one pass for the known-noise linear regression (a Gaussian posterior):
the accuracy tests compare it with the closed form.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests.helpers import exact_linear_guide, small_design

from amortized_ppl.data import take_observations
from amortized_ppl.density import log_joint, log_joint_parts
from amortized_ppl.guides import (
    AutoIterativeAmortizedMultivariateNormal,
    AutoIterativeAmortizedNormal,
)
from amortized_ppl.iterative import (
    base_schedule,
    batch_at,
    cubature_points,
    curvature,
    natural_gradient_step,
    pass_order,
    steps_per_pass,
)
from amortized_ppl.iterative.refine import (
    refine,
    refine_stream,
    state_change,
    warm_start_state,
)
from amortized_ppl.iterative.svi import svi_refine_jit
from amortized_ppl.iterative.train import fit_iterative, training_sizes
from amortized_ppl.models.linear_regression import exact_posterior, model_known_noise


@functools.lru_cache(maxsize=None)
def linear_guide(full_rank=True):
    cls = AutoIterativeAmortizedMultivariateNormal if full_rank else AutoIterativeAmortizedNormal
    guide = cls(model_known_noise, batch_size=64, num_passes=1, min_steps=2)
    guide.setup(jax.random.key(0), small_design, (16, 64))
    return guide, guide.init_params()


def data(num_obs, seed=0):
    (x,), _ = small_design(jax.random.key(seed), num_obs)
    w = jnp.array([0.5, -1.0, 0.3])
    noise = 0.5 * jax.random.normal(jax.random.key(seed + 1), (num_obs,))
    return x, x @ w + 0.2 + noise


def errors(loc, scale_tril, x, y):
    exact = exact_posterior(x, y)
    sd = jnp.sqrt(jnp.diag(exact.cov))
    mean_error = float(jnp.max(jnp.abs(loc - exact.mean) / sd))
    ratio = np.asarray(jnp.sqrt(jnp.sum(scale_tril**2, axis=-1)) / sd)
    return mean_error, ratio


# --------------------------------------------------------------------------- kernel
def test_cubature_points_have_identity_moments(key):
    points = cubature_points(key, 5)
    assert points.shape == (10, 5)
    np.testing.assert_allclose(points.mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(points.T @ points / 10, np.eye(5), atol=1e-5)


def test_curvature_is_exact_for_a_quadratic(key):
    a = jax.random.normal(key, (4, 4))
    hessian = -(a @ a.T + 4 * jnp.eye(4))
    centre = jnp.arange(4.0)
    log_density = lambda u: 0.5 * (u - centre) @ hessian @ (u - centre)  # noqa: E731
    loc = jnp.ones(4)
    tril = jnp.tril(0.1 * jax.random.normal(jax.random.key(1), (4, 4))) + 0.5 * jnp.eye(4)
    _, g, m = curvature(log_density, loc, tril, cubature_points(jax.random.key(2), 4))
    np.testing.assert_allclose(g, hessian @ (loc - centre), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(m, -tril.T @ hessian @ tril, rtol=1e-4, atol=1e-4)


def test_full_step_is_newton_for_a_quadratic(key):
    # rho = 1 jumps to the exact Gaussian N(centre, -H^{-1}).
    a = jax.random.normal(key, (3, 3))
    hessian = -(a @ a.T + 3 * jnp.eye(3))
    centre = jnp.array([1.0, -2.0, 0.5])
    log_density = lambda u: 0.5 * (u - centre) @ hessian @ (u - centre)  # noqa: E731
    loc, tril = jnp.zeros(3), jnp.eye(3)
    _, g, m = curvature(log_density, loc, tril, cubature_points(key, 3))
    new_loc, new_tril = natural_gradient_step(loc, tril, g, m, 1.0, 1.0)
    np.testing.assert_allclose(new_loc, centre, atol=1e-4)
    np.testing.assert_allclose(new_tril @ new_tril.T, jnp.linalg.inv(-hessian), atol=1e-4)
    assert np.allclose(new_tril, np.tril(new_tril))
    # The diagonal version keeps a diagonal factor.
    _, diag_tril = natural_gradient_step(loc, tril, g, m, 1.0, 1.0, full_rank=False)
    assert np.allclose(diag_tril, np.diag(np.diag(diag_tril)))


def test_step_falls_back_when_curvature_is_not_positive():
    loc, tril = jnp.zeros(2), jnp.eye(2)
    m = jnp.array([[-1.0, 0.0], [0.0, 2.0]])  # a non-concave direction
    new_loc, new_tril = natural_gradient_step(loc, tril, jnp.ones(2), m, 1.0, 1.0)
    assert np.all(np.isfinite(new_tril)) and np.all(np.isfinite(new_loc))


def test_base_schedule_averages_each_pass():
    per_pass = jnp.asarray(4)
    rho = [float(base_schedule(jnp.asarray(k), per_pass)) for k in range(8)]
    np.testing.assert_allclose(rho, [1, 1 / 2, 1 / 3, 1 / 4, 1 / 3, 1 / 4, 1 / 5, 1 / 6])
    # One mini-batch per pass: every step is a full (Newton) step.
    assert float(base_schedule(jnp.asarray(5), jnp.asarray(1))) == 1.0


def test_pass_order_is_a_padded_permutation(key):
    assert steps_per_pass(10, 4) == 3
    order = pass_order(key, 10, 4)
    assert order.shape == (12,)
    assert sorted(np.asarray(order[order >= 0]).tolist()) == list(range(10))
    positions, valid = batch_at(order, 2, 4)
    assert valid.tolist() == [True, True, False, False]
    assert np.all(np.asarray(positions) >= 0)


def test_log_joint_parts_split_the_joint(key):
    x, y = data(12)
    latents = {"w": jnp.ones(3), "b": jnp.asarray(0.3)}
    guide, _ = linear_guide()
    bound = {"x": x, "y": y, "sigma": 0.5}
    prior, likelihood = log_joint_parts(model_known_noise, guide.sites, bound, latents)
    total = log_joint(model_known_noise, guide.sites, bound, latents)
    np.testing.assert_allclose(prior + likelihood, total, rtol=1e-6)
    assert float(likelihood) < 0 and abs(float(prior)) > 0
    sub = take_observations(guide.spec, guide.sites, bound, jnp.array([0, 5]))
    assert sub["x"].shape == (2, 3) and sub["y"].shape == (2,)
    np.testing.assert_allclose(sub["y"], y[jnp.array([0, 5])])


# ------------------------------------------------------------------- guide, exactness
@pytest.mark.parametrize("num_obs", [40, 300])
def test_untrained_guide_is_exact_after_one_pass(num_obs):
    guide, params = linear_guide()
    x, y = data(num_obs)
    posterior = guide.get_posterior(params, x, y)
    mean_error, ratio = errors(posterior.loc, posterior.scale_tril, x, y)
    assert mean_error < 1e-3
    np.testing.assert_allclose(ratio, 1.0, atol=1e-3)


def test_guide_is_a_numpyro_guide(key):
    from numpyro.infer import Predictive

    guide, params = linear_guide()
    x, y = data(50)
    draws = guide.sample_posterior(key, params, x, y, sample_shape=(2000,))
    exact = exact_posterior(x, y)
    np.testing.assert_allclose(draws["w"].mean(0), exact.mean[:3], atol=0.05)
    predictive = Predictive(
        model_known_noise, guide=guide, params=params, num_samples=5, return_sites=["w", "b"]
    )
    out = predictive(key, x, y)
    assert out["w"].shape == (5, 3)
    median = guide.median(params, x, y)
    np.testing.assert_allclose(median["b"], exact.mean[3], atol=1e-3)
    # A batch of data sets of different sizes, padded and masked.
    x2, y2 = data(50, seed=3)
    mask = np.ones((2, 50), bool)
    mask[1, 30:] = False
    batch = guide.get_posterior(params, jnp.stack([x, x2]), jnp.stack([y, y2]), data_mask=mask)
    mean_error, _ = errors(batch.loc[1], batch.scale_tril[1], x2[:30], y2[:30])
    assert mean_error < 1e-3
    with pytest.raises(NotImplementedError, match="mini-batches"):
        guide.summaries(params, {}, None)


def test_diagonal_guide_has_a_diagonal_posterior(key):
    guide, params = linear_guide(full_rank=False)
    x, y = data(200)
    # Diagonal curvature ignores the posterior's correlations, so the location needs several
    # passes (a fixed-point iteration) where the full-rank update needs one.
    result = refine(key, guide, params, x, y, batch_size=50, num_passes=12, progress=False)
    tril = result.state.scale_tril
    assert np.allclose(tril, np.diag(np.diag(tril)))
    exact = exact_posterior(x, y)
    # Mean-field VI gets the mean of a Gaussian posterior right and under-states the marginal SDs.
    sd = jnp.sqrt(jnp.diag(exact.cov))
    assert float(jnp.max(jnp.abs(result.state.loc - exact.mean) / sd)) < 0.05
    assert np.all(np.asarray(jnp.diag(tril)) <= np.asarray(sd) * 1.001)


# ---------------------------------------------------------------------- refinement
def test_refine_arrays_is_exact_and_stops_on_tolerance(key):
    guide, params = linear_guide()
    x, y = data(500)
    result = refine(key, guide, params, x, y, batch_size=50, num_passes=5, tol=1e-3, progress=False)
    assert result.converged and result.num_passes == 2 and result.num_steps == 20
    assert result.elbo.shape == (20,)
    mean_error, ratio = errors(result.state.loc, result.state.scale_tril, x, y)
    assert mean_error < 1e-3
    np.testing.assert_allclose(ratio, 1.0, atol=1e-3)
    assert state_change(result.state, result.state) == 0.0


def test_refine_rejects_bad_plans(key):
    guide, params = linear_guide()
    x, y = data(30)
    with pytest.raises(ValueError, match="larger than the data set"):
        refine(key, guide, params, x, y, batch_size=31, progress=False)
    with pytest.raises(ValueError, match="at least one pass"):
        refine(key, guide, params, x, y, num_passes=0, progress=False)
    with pytest.raises(ValueError, match="tol"):
        refine(key, guide, params, x, y, tol=-1.0, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        refine(key, guide, params, x, y.at[3].set(jnp.nan), progress=False)


def _batches(x, y, size):
    return [{"x": x[i : i + size], "y": y[i : i + size]} for i in range(0, x.shape[0], size)]


def test_refine_stream_matches_the_closed_form(key):
    guide, params = linear_guide()
    x, y = data(230)
    batches = _batches(np.asarray(x), np.asarray(y), 50)  # the last batch has 30 rows
    result = refine_stream(
        key, guide, params, batches, num_obs=230, batch_size=50, num_passes=2, progress=False
    )
    assert result.num_steps == 10 and result.num_passes == 2
    mean_error, ratio = errors(result.state.loc, result.state.scale_tril, x, y)
    assert mean_error < 1e-3
    np.testing.assert_allclose(ratio, 1.0, atol=1e-3)


def test_refine_stream_names_bad_batches(key):
    guide, params = linear_guide()
    x, y = map(np.asarray, data(100))
    good = _batches(x, y, 50)
    cases = [
        ([good[0], {"x": x[:50, :2], "y": y[:50]}], "batch 1.*'x'"),
        ([{"x": x[:50], "y": np.where(np.arange(50) == 7, np.nan, y[:50])}], "batch 0.*NaN"),
        ([{"x": x, "y": y}], "more than batch_size"),
        ([{"x": x[:50]}], "missing \\['y'\\]"),
        ([(x[:50], y[:50])], "mapping"),
    ]
    for batches, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            refine_stream(key, guide, params, batches, num_obs=100, batch_size=50, progress=False)
    with pytest.raises(ValueError, match="one-shot iterator"):
        refine_stream(
            key, guide, params, iter(good), num_obs=100, batch_size=50, num_passes=2, progress=False
        )
    with pytest.warns(RuntimeWarning, match="held 50 rows"):
        refine_stream(key, guide, params, good[:1], num_obs=100, batch_size=50, progress=False)
    with pytest.raises(ValueError, match="not arguments"):
        refine_stream(
            key,
            guide,
            params,
            good,
            num_obs=100,
            batch_size=50,
            shared={"noise": 1.0},
            progress=False,
        )


def test_interrupted_refinement_keeps_a_usable_state(key):
    guide, params = linear_guide()
    x, y = map(np.asarray, data(200))

    def batches():
        for i, batch in enumerate(_batches(x, y, 50)):
            if i == 2:
                raise KeyboardInterrupt
            yield batch

    with pytest.warns(RuntimeWarning, match="interrupted after 2"):
        result = refine_stream(
            key, guide, params, batches, num_obs=200, batch_size=50, progress=False
        )
    assert result.interrupted and result.num_steps == 2
    assert np.all(np.isfinite(result.state.loc)) and np.all(np.isfinite(result.state.scale_tril))
    draws = guide.sample_state(key, result.state, (10,))
    assert draws["w"].shape == (10, 3)


def test_warm_start_from_a_one_shot_guide(key):
    guide, _ = linear_guide()
    one_shot, one_shot_params = exact_linear_guide()
    x, y = data(400)
    state = warm_start_state(key, guide, one_shot, one_shot_params, x, y)
    # The one-shot guide read a subsample of its max_obs rows: centred near the full posterior,
    # wider than it.
    exact = exact_posterior(x, y)
    sd = jnp.sqrt(jnp.diag(exact.cov))
    state_sd = jnp.sqrt(jnp.sum(state.scale_tril**2, -1))
    assert float(jnp.max(jnp.abs(state.loc - exact.mean) / state_sd)) < 4.0
    assert np.all(np.asarray(state_sd / sd) > 1.5)
    with pytest.raises(ValueError, match="expected loc"):
        guide.init_state(jnp.zeros(2), jnp.eye(2))


# ------------------------------------------------------------------ training, baseline
def test_fit_iterative_trains_and_validates(key):
    guide = AutoIterativeAmortizedMultivariateNormal(
        model_known_noise, summary_size=4, hidden_size=8, memory_size=4, head_width=8
    )
    sizes = training_sizes([(4, 8), 16], batch_size=8, num_passes=1, min_steps=2)
    assert [s.num_steps for s in sizes] == [2, 2]
    result = fit_iterative(
        key,
        guide,
        design_fn=small_design,
        sizes=[16],
        batch_size=8,
        num_passes=1,
        min_steps=2,
        num_iterations=2,
        datasets_per_step=2,
        progress=False,
    )
    assert result.history.shape == (2,) and np.all(np.isfinite(result.history))
    before = guide.init_params()[guide.param_name].head.layers[-1].weight
    after = result.params[guide.param_name].head.layers[-1].weight
    assert float(jnp.max(jnp.abs(after - before))) > 0
    with pytest.raises(ValueError, match="num_iterations"):
        fit_iterative(key, guide, design_fn=small_design, num_iterations=0, progress=False)


def test_svi_baseline_improves_the_elbo(key):
    guide, _ = linear_guide()
    x, y = data(200)
    arguments = {"x": x, "y": y, "sigma": 0.5}
    loc, tril, elbo = svi_refine_jit(
        key, guide, arguments, jnp.ones(200, bool), batch_size=50, num_passes=10, learning_rate=0.05
    )
    elbo = np.asarray(elbo).reshape(-1)
    assert np.all(np.isfinite(elbo)) and elbo[-4:].mean() > elbo[:4].mean()
    assert tril.shape == (4, 4) and np.allclose(tril, np.tril(tril))
    # At equal gradient evaluations Adam is still far off, where one pass of the
    # natural-gradient update is exact (test_refine_arrays_is_exact_and_stops_on_tolerance).
    mean_error, _ = errors(loc, tril, x, y)
    assert mean_error > 0.1


@pytest.mark.slow
def test_logistic_regression_matches_nuts(key):
    # No closed form: the Gaussian variational optimum the update converges to is within 0.1
    # posterior SDs of NUTS's means at this size (Bernstein-von Mises), SDs within 15%.
    from amortized_ppl import reference_posterior
    from amortized_ppl.models import logistic_regression as lg

    guide = AutoIterativeAmortizedMultivariateNormal(lg.model, batch_size=500)
    guide.setup(key, lg.design_fn, (20, 200))
    params = guide.init_params()
    (x,), _ = lg.design_fn(jax.random.key(3), 5000)
    theta = jax.random.normal(jax.random.key(4), (6,))
    y = jax.random.bernoulli(jax.random.key(5), jax.nn.sigmoid(x @ theta[:5] + theta[5]))
    y = y.astype(jnp.float32)
    result = refine(key, guide, params, x, y, num_passes=6, progress=False)
    ref = reference_posterior(key, lg.model, x, y=y)
    draws = np.concatenate(
        [np.asarray(ref.samples["w"]).reshape(-1, 5), np.asarray(ref.samples["b"]).reshape(-1, 1)],
        axis=1,
    )
    error = np.abs(np.asarray(result.state.loc) - draws.mean(0)) / draws.std(0)
    ratio = np.asarray(jnp.sqrt(jnp.sum(result.state.scale_tril**2, -1))) / draws.std(0)
    assert np.median(error) <= 0.1
    assert np.all((ratio > 0.85) & (ratio < 1.15))


def test_network_cannot_break_the_first_pass_or_stall_later_ones(key):
    import equinox as eqx

    guide, params = linear_guide()
    network = guide.network(params)
    last = network.head.layers[-1]
    # A network that asks for the smallest possible steps and a large readout shift.
    bias = last.bias.at[:2].set(-100.0).at[2:].set(3.0)
    network = eqx.tree_at(lambda n: n.head.layers[-1].bias, network, bias)
    x, y = data(40)
    batch = {"x": x[:20], "y": y[:20], "sigma": 0.5}
    mask = jnp.ones(20, bool)
    state = guide.init_state()
    first, info = guide._step_fn(key, network, state, batch, mask, 2)
    assert float(info.rho_loc) == pytest.approx(1.0, abs=1e-3)  # the first pass's exact average
    # The readout correction fades out by the end of the first pass (1 - (j + 1) / P = 0.5 here).
    assert float(jnp.max(jnp.abs(first.loc - first.run_loc))) > 0
    second, _ = guide._step_fn(key, network, first, batch, mask, 2)
    np.testing.assert_allclose(second.loc, second.run_loc)
    _, info = guide._step_fn(key, network, second, batch, mask, 2)  # pass 2, j = 0
    base = float(base_schedule(jnp.asarray(2), jnp.asarray(2)))  # 1 / (0 + 1 + 1)
    odds = float(info.rho_loc) / (1 - float(info.rho_loc))
    assert odds == pytest.approx(base / (1 - base) / 2, rel=1e-3)
