"""Tests of amortized_ppl.sites: tracing a model, packing latents, transforms and their Jacobians.

The main test model has one latent of each kind the guides meet: a positive scalar (HalfNormal),
a positive vector in a non-data plate (elementwise transform, per-element log-Jacobian), a simplex
(Dirichlet: its unconstrained shape (K-1,) differs from its shape (K,)) and a real vector.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from amortized_ppl.sites import LatentSite, ModelSites, inspect_model, plate_axis, trace_model

NUM_OBS = 7
K = 3


def mixed_model(x, y=None):
    scale = numpyro.sample("scale", dist.HalfNormal(1.0))
    with numpyro.plate("groups", 2):
        tau = numpyro.sample("tau", dist.LogNormal(0.0, 1.0))
    weights = numpyro.sample("weights", dist.Dirichlet(jnp.ones(K)))
    loc = numpyro.sample("loc", dist.Normal(0.0, 1.0).expand([K]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        mean = x @ (weights * loc) + jnp.sum(tau)
        numpyro.sample("y", dist.Normal(mean, scale), obs=y)


@pytest.fixture(scope="module")
def data():
    x = jax.random.normal(jax.random.key(0), (NUM_OBS, K))
    y = jax.random.normal(jax.random.key(1), (NUM_OBS,))
    return x, y


@pytest.fixture(scope="module")
def sites(data):
    x, y = data
    return inspect_model(mixed_model, (), {"x": x, "y": y})


def _random_flat(sites, batch=(), seed=0):
    return jax.random.normal(jax.random.key(seed), batch + (sites.latent_dim,))


# ---------------------------------------------------------------------------------------------
# What inspect_model finds
# ---------------------------------------------------------------------------------------------


def test_inspect_model_latents(sites):
    assert isinstance(sites, ModelSites)
    assert sites.names == ("scale", "tau", "weights", "loc")
    assert all(isinstance(s, LatentSite) for s in sites.latents)
    shapes = {s.name: (s.shape, s.unconstrained_shape, s.size, s.event_ndim) for s in sites.latents}
    assert shapes == {
        "scale": ((), (), 1, 0),
        "tau": ((2,), (2,), 2, 1),
        "weights": ((K,), (K - 1,), K - 1, 1),
        "loc": ((K,), (K,), K, 1),
    }
    assert sites.latent_dim == 1 + 2 + (K - 1) + K
    assert sites.site("weights").support is dist.constraints.simplex
    with pytest.raises(KeyError, match="'nope'.*'scale'"):
        sites.site("nope")


def test_inspect_model_data_plate(sites):
    assert sites.observed == ("y",)
    assert sites.plate_name == "data"
    assert sites.observed_plate_dims == {"y": -1}
    assert sites.observed_event_shapes == {"y": ()}
    assert sites.observed_axes == {"y": 0}


def test_inspect_model_vector_observations():
    """An observation with an event shape: the plate indexes axis 0, the rest is one observation."""

    def vector_obs_model(y=None):
        loc = numpyro.sample("loc", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        with numpyro.plate("obs", 5):
            numpyro.sample("y", dist.Normal(loc, 1.0).to_event(1), obs=y)

    sites = inspect_model(vector_obs_model, (), {"y": jnp.zeros((5, 2))}, num_obs=5)
    assert sites.plate_name == "obs"
    assert sites.observed_event_shapes == {"y": (2,)}
    assert sites.observed_axes == {"y": 0}
    assert plate_axis(value_ndim=2, event_ndim=1, plate_dim=-1) == 0


def test_inspect_model_num_obs_picks_the_plate(data):
    x, y = data
    assert inspect_model(mixed_model, (), {"x": x, "y": y}, num_obs=NUM_OBS).plate_name == "data"
    with pytest.raises(ValueError, match=f"size {NUM_OBS + 1}"):
        inspect_model(mixed_model, (), {"x": x, "y": y}, num_obs=NUM_OBS + 1)


def test_inspect_model_ignores_factor(data):
    """``numpyro.factor`` adds an observed Unit site; it is not an observation."""

    def factor_model(x, y=None):
        mixed_model(x, y)
        numpyro.factor("penalty", -1.0)

    x, y = data
    sites = inspect_model(factor_model, (), {"x": x, "y": y})
    assert sites.observed == ("y",)


# ---------------------------------------------------------------------------------------------
# Packing and transforms
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [(), (2, 3)])
def test_flatten_unflatten_round_trip(sites, batch):
    flat = _random_flat(sites, batch)
    parts = sites.unflatten(flat)
    assert {k: v.shape for k, v in parts.items()} == {
        s.name: batch + s.unconstrained_shape for s in sites.latents
    }
    np.testing.assert_array_equal(sites.flatten(parts), flat)
    # Trace order: the first entries of the flat vector are the first site.
    np.testing.assert_array_equal(parts["scale"], flat[..., 0])


def test_unflatten_wrong_size(sites):
    with pytest.raises(ValueError, match=f"expected last dimension {sites.latent_dim}"):
        sites.unflatten(jnp.zeros((sites.latent_dim + 1,)))


def test_constrain_lands_in_supports(sites):
    values = sites.constrain(5.0 * _random_flat(sites, (50,)))
    assert values["weights"].shape == (50, K)
    assert bool(jnp.all(values["scale"] > 0))
    assert bool(jnp.all(values["tau"] > 0))
    assert bool(jnp.all(values["weights"] >= 0))
    np.testing.assert_allclose(jnp.sum(values["weights"], -1), 1.0, rtol=1e-5)


def test_constrain_unconstrain_round_trip(sites, data):
    """constrain(unconstrain(v)) == v for prior draws, and the other way round."""
    x, _ = data
    predictive = numpyro.infer.Predictive(mixed_model, num_samples=20)
    draws = predictive(jax.random.key(2), x)
    values = {name: draws[name] for name in sites.names}
    flat = sites.unconstrain(values)
    assert flat.shape == (20, sites.latent_dim)
    back = sites.constrain(flat)
    for name in sites.names:
        np.testing.assert_allclose(back[name], values[name], rtol=1e-5, atol=1e-6)
    u = _random_flat(sites, (20,))
    np.testing.assert_allclose(sites.unconstrain(sites.constrain(u)), u, rtol=1e-4, atol=1e-4)


def test_unconstrain_missing_site(sites):
    values = sites.constrain(_random_flat(sites))
    del values["loc"]
    with pytest.raises(KeyError, match="'loc'"):
        sites.unconstrain(values)


def _square_constrain(sites, flat):
    """The constraining map as R^D -> R^D: a simplex is represented by its first K-1 coordinates."""
    values = sites.constrain(flat)
    values["weights"] = values["weights"][..., :-1]
    return jnp.concatenate([jnp.reshape(values[n], (-1,)) for n in sites.names])


def test_log_abs_det_jacobian_matches_autodiff(sites):
    flat = 0.7 * _random_flat(sites, seed=3)
    jacobian = jax.jacobian(lambda u: _square_constrain(sites, u))(flat)
    assert jacobian.shape == (sites.latent_dim, sites.latent_dim)
    sign, logdet = jnp.linalg.slogdet(jacobian)
    assert sign != 0
    ladj = sites.log_abs_det_jacobian(flat)
    assert ladj.shape == ()
    np.testing.assert_allclose(ladj, logdet, rtol=1e-4, atol=1e-4)


def test_log_abs_det_jacobian_batched(sites):
    flat = _random_flat(sites, (4,), seed=4)
    batched = sites.log_abs_det_jacobian(flat)
    assert batched.shape == (4,)
    one_by_one = jnp.stack([sites.log_abs_det_jacobian(u) for u in flat])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Models the guides cannot handle: each error names the site
# ---------------------------------------------------------------------------------------------


def test_discrete_latent_raises(data):
    def discrete_model(x, y=None):
        switch = numpyro.sample("switch", dist.Bernoulli(0.5))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(switch, 1.0), obs=y)

    x, y = data
    with pytest.raises(ValueError, match="'switch' is discrete"):
        inspect_model(discrete_model, (), {"x": x, "y": y})


def test_latent_in_data_plate_raises(data):
    def local_model(x, y=None):
        scale = numpyro.sample("scale", dist.HalfNormal(1.0))
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
            numpyro.sample("y", dist.Normal(z, scale), obs=y)

    x, y = data
    with pytest.raises(ValueError, match="'z' lies inside the data plate 'data'"):
        inspect_model(local_model, (), {"x": x, "y": y})


def test_latent_shape_changing_with_num_obs_raises(data):
    def growing_model(x, y=None):
        offsets = numpyro.sample("offsets", dist.Normal(0.0, 1.0).expand([x.shape[0]]).to_event(1))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(offsets, 1.0), obs=y)

    x, y = data
    kwargs = {"x": x, "y": y}
    inspect_model(growing_model, (), kwargs)  # one size alone cannot tell
    other = {"x": x[:3], "y": y[:3]}
    with pytest.raises(ValueError, match=r"'offsets' changes shape .*\(7,\) vs \(3,\)"):
        inspect_model(growing_model, (), kwargs, other_kwargs=other)


def test_model_without_observed_site_raises(data):
    x, _ = data
    with pytest.raises(ValueError, match="no observed sample site"):
        inspect_model(mixed_model, (), {"x": x, "y": None})


def test_observed_site_outside_plate_raises():
    def unplated_model(y=None):
        loc = numpyro.sample("loc", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(loc, 1.0).expand([5]).to_event(1), obs=y)

    with pytest.raises(ValueError, match="'y' is not inside a `numpyro.plate`"):
        inspect_model(unplated_model, (), {"y": jnp.zeros(5)})


def test_observed_sites_without_shared_plate_raise():
    def two_plates_model(a=None, b=None):
        loc = numpyro.sample("loc", dist.Normal(0.0, 1.0))
        with numpyro.plate("first", 3):
            numpyro.sample("a", dist.Normal(loc, 1.0), obs=a)
        with numpyro.plate("second", 4):
            numpyro.sample("b", dist.Normal(loc, 1.0), obs=b)

    with pytest.raises(ValueError, match=r"\['a', 'b'\] share no plate"):
        inspect_model(two_plates_model, (), {"a": jnp.zeros(3), "b": jnp.zeros(4)})


def test_model_without_latents_raises():
    def no_latent_model(y=None):
        with numpyro.plate("data", 3):
            numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

    with pytest.raises(ValueError, match="no continuous latent"):
        inspect_model(no_latent_model, (), {"y": jnp.zeros(3)})


def test_a_prior_that_cannot_be_sampled_is_named():
    # Issue 15: an ImproperUniform prior gave an empty NotImplementedError.
    from numpyro.distributions import constraints

    def model(x, y=None):
        w = numpyro.sample("w", dist.ImproperUniform(constraints.real, (), (3,)))
        with numpyro.plate("n", x.shape[0]):
            numpyro.sample("y", dist.Normal(x @ w, 1.0), obs=y)

    with pytest.raises(ValueError, match=r"Site 'w' \(ImproperUniform\) cannot be sampled"):
        trace_model(model, jax.random.key(0), (jnp.ones((4, 3)),), {})
