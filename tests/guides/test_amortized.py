"""Amortized guides: the NumPyro interface, batching, supports, training and accuracy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from numpyro import handlers
from numpyro.infer import SVI, Predictive, Trace_ELBO

from amortized_ppl import (
    AutoAmortizedMultivariateNormal,
    AutoAmortizedNormal,
    ForwardKL,
    fit,
)
from amortized_ppl.density import log_joint
from amortized_ppl.laplace import newton_laplace
from amortized_ppl.models.linear_regression import (
    design_fn,
    exact_posterior,
    model,
    model_known_noise,
)

TINY = dict(hidden_size=16, summary_size=16, head_width=32, num_blocks=1, num_heads=2)


def simulate(model_fn, key, n, d=8):
    (x,), _ = design_fn(key, n, d)
    trace = handlers.trace(handlers.seed(model_fn, jax.random.fold_in(key, 1))).get_trace(x)
    return x, trace["y"]["value"], trace


@pytest.fixture(scope="module")
def newton_fit():
    guide = AutoAmortizedMultivariateNormal(model_known_noise, newton_steps=2, **TINY)
    result = fit(
        jax.random.key(0), guide, design_fn=design_fn, num_obs=(10, 60), num_steps=40,
        batch_size=16, progress=False,
    )
    return guide, result


def test_newton_laplace_is_exact_on_a_gaussian():
    cov = jnp.array([[2.0, 0.5], [0.5, 1.0]])
    mean = jnp.array([1.0, -2.0])
    prec = jnp.linalg.inv(cov)
    logdens = lambda u: -0.5 * (u - mean) @ prec @ (u - mean)  # noqa: E731
    fit_ = newton_laplace(logdens, jnp.zeros(2), num_steps=1)
    np.testing.assert_allclose(fit_.loc, mean, atol=1e-5)
    np.testing.assert_allclose(fit_.scale_tril @ fit_.scale_tril.T, cov, atol=1e-5)


def test_masked_log_joint_equals_log_joint_of_the_truncated_data(key):
    guide = AutoAmortizedNormal(model, **TINY).setup(key, design_fn, (5, 12))
    x, y, trace = simulate(model, key, 12)
    latents = {s: trace[s]["value"] for s in ("w", "b", "sigma")}
    mask = jnp.arange(12) < 7
    padded = log_joint(model, guide.sites, {"x": x, "y": y}, latents, mask)
    truncated = log_joint(model, guide.sites, {"x": x[:7], "y": y[:7]}, latents)
    np.testing.assert_allclose(padded, truncated, rtol=1e-5)


def test_sample_posterior_shapes_batches_and_support(key):
    guide = AutoAmortizedMultivariateNormal(model, **TINY).setup(key, design_fn, (5, 30))
    params = guide.init_params()
    x, y, _ = simulate(model, key, 20)
    one = guide.sample_posterior(key, params, x, y, sample_shape=(7,))
    assert one["w"].shape == (7, 8) and one["b"].shape == (7,) and one["sigma"].shape == (7,)
    assert bool(jnp.all(one["sigma"] > 0))
    xs, ys = jnp.stack([x, 2 * x, -x]), jnp.stack([y, y, -y])
    many = guide.sample_posterior(key, params, xs, ys, sample_shape=(7,))
    assert many["w"].shape == (3, 7, 8) and many["sigma"].shape == (3, 7)
    # The batch's first data set has the same posterior as that data set alone.
    med_one = guide.median(params, x, y)
    med_many = guide.median(params, xs, ys)
    np.testing.assert_allclose(med_many["w"][0], med_one["w"], rtol=1e-5, atol=1e-6)
    qs = guide.quantiles(params, [0.05, 0.5, 0.95], x, y)
    assert qs["w"].shape == (3, 8)
    assert bool(jnp.all(qs["w"][0] < qs["w"][1])) and bool(jnp.all(qs["w"][1] < qs["w"][2]))
    assert bool(jnp.all(qs["sigma"] > 0))
    assert guide.get_posterior(params, xs, ys).batch_shape == (3,)


def test_training_lowers_the_forward_kl(key):
    # Full self-attention: the configuration the threshold below was measured with.
    guide = AutoAmortizedNormal(model_known_noise, **TINY, num_inducing=None)
    result = fit(key, guide, design_fn=design_fn, num_obs=(10, 40), num_steps=60,
                 batch_size=32, optimizer=optax.adam(1e-2), progress=False)
    assert result.losses.shape == (60,)
    # From the N(0, I) start (about 12.8 nats on this prior) the loss must fall; the batch-to-batch
    # noise of a 10-step mean is about 0.1 nats, so a 0.4-nat drop is a real decrease.
    assert result.losses[-10:].mean() < result.losses[:10].mean() - 0.4


def test_elbo_and_mixed_losses_train(key):
    for loss in ("elbo", "mixed"):
        guide = AutoAmortizedNormal(model, **TINY)
        result = fit(key, guide, design_fn=design_fn, num_obs=(10, 40), loss=loss,
                     num_steps=40, batch_size=16, optimizer=optax.adam(1e-2), progress=False,
                     loss_kwargs={"num_particles": 2})
        assert np.all(np.isfinite(result.losses))
        assert result.losses[-10:].mean() < result.losses[:10].mean()


def test_newton_guide_matches_the_closed_form(newton_fit):
    # With known noise the Laplace base is exact, and 40 training steps from a near-zero
    # correction cannot move it far: means within 0.25 posterior SD and SDs within 25%, well
    # outside the 5-sigma Monte Carlo noise of 4,000 draws (about 0.08 SD and 2%).
    guide, result = newton_fit
    for i, n in enumerate((10, 35, 60)):
        x, y, _ = simulate(model_known_noise, jax.random.key(10 + i), n)
        post = exact_posterior(x, y)
        draws = guide.sample_posterior(jax.random.key(i), result.params, x, y,
                                       sample_shape=(4000,))
        flat = jnp.concatenate([draws["w"], draws["b"][:, None]], axis=1)
        sd = jnp.sqrt(jnp.diag(post.cov))
        assert float(jnp.max(jnp.abs(flat.mean(0) - post.mean) / sd)) < 0.25
        ratio = flat.std(0) / sd
        assert float(jnp.min(ratio)) > 0.75 and float(jnp.max(ratio)) < 1.25


def test_guide_works_in_numpyro_svi_and_predictive(key):
    x, y, _ = simulate(model_known_noise, key, 30)
    guide = AutoAmortizedNormal(model_known_noise, **TINY)
    # Lazy set-up from a data set, as NumPyro's autoguides do; per-data-set SVI on Trace_ELBO.
    svi = SVI(model_known_noise, guide, optax.adam(1e-3), Trace_ELBO())
    result = svi.run(key, 30, x, y, progress_bar=False)
    assert np.all(np.isfinite(result.losses))
    # An amortized loss object: fresh simulated data sets each step.
    svi = SVI(model_known_noise, guide, optax.adam(3e-3),
              ForwardKL(design_fn, (10, 40), batch_size=16))
    result = svi.run(key, 40, x, y, progress_bar=False)
    assert result.losses[-10:].mean() < result.losses[:10].mean()
    pred = Predictive(model_known_noise, guide=guide, params=result.params, num_samples=5,
                      return_sites=["w", "b"])
    out = pred(key, x, y)
    assert out["w"].shape == (5, 8)
    post_pred = Predictive(model_known_noise, posterior_samples={"w": out["w"], "b": out["b"]})
    assert post_pred(key, x)["y"].shape == (5, 30)


def test_guide_rejects_batches_inside_numpyro(key, newton_fit):
    guide, result = newton_fit
    x, y, _ = simulate(model_known_noise, key, 20)
    seeded = handlers.seed(handlers.substitute(guide, data=result.params), key)
    with pytest.raises(ValueError, match="one data set"):
        seeded(jnp.stack([x, x]), jnp.stack([y, y]))


def test_guide_requires_setup_and_observations(key, newton_fit):
    guide = AutoAmortizedNormal(model_known_noise)
    with pytest.raises(RuntimeError, match="setup"):
        guide.init_params()
    trained, result = newton_fit
    x, _, _ = simulate(model_known_noise, key, 20)
    with pytest.raises(ValueError, match="'y'"):
        trained.sample_posterior(key, result.params, x, None)
    with pytest.raises(ValueError, match="more than the 60"):
        xb, yb, _ = simulate(model_known_noise, key, 61)
        trained.sample_posterior(key, result.params, xb, yb)


def simplex_model(x, y=None):
    import numpyro
    import numpyro.distributions as dist

    probs = numpyro.sample("probs", dist.Dirichlet(jnp.ones(3)))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(x[:, :3] @ probs, 1.0), obs=y)


def test_quantiles_refuse_sites_whose_transform_mixes_coordinates(key):
    guide = AutoAmortizedNormal(simplex_model, **TINY).setup(key, design_fn, (5, 12))
    params = guide.init_params()
    (x,), _ = design_fn(key, 8)
    y = jnp.zeros(8)
    with pytest.raises(NotImplementedError, match="probs"):
        guide.median(params, x, y)
    draws = guide.sample_posterior(key, params, x, y, sample_shape=(4,))
    np.testing.assert_allclose(draws["probs"].sum(-1), 1.0, rtol=1e-5)
