"""Reading a hierarchical model's levels from its plates, and refusing what it cannot take."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from amortized_ppl.hierarchy import inspect_hierarchy, pad_groups, unpad_groups
from amortized_ppl.hierarchy.problem import random_mask
from amortized_ppl.models import hierarchical as h


def _regression_data(num_groups=6, max_size=5, key=0):
    mask = random_mask(jax.random.key(key), (num_groups, num_groups), (1, max_size))
    return dict(h.regression_design(jax.random.key(key + 1), mask), mask=mask,
                y=jnp.zeros(mask.shape))


def test_levels_of_the_zoo_models():
    schools = inspect_hierarchy(h.eight_schools, h.eight_schools_data())
    assert schools.global_names == ("mu", "tau") and schools.local_names == ("theta",)
    assert (schools.group_plate, schools.obs_plate, schools.observed) == ("schools", "obs", ("y",))
    assert schools.covariates == ("sigma",) and (schools.global_dim, schools.local_dim) == (2, 1)
    assert inspect_hierarchy(h.eight_schools_noncentered,
                             h.eight_schools_data()).local_names == ("theta_decentered",)
    slopes = inspect_hierarchy(h.varying_slopes, _regression_data())
    assert slopes.global_dim == 5 and slopes.local_names == ("a", "b")
    logistic = inspect_hierarchy(h.multilevel_logistic, _regression_data())
    assert logistic.global_names == ("mu", "sigma", "beta") and logistic.local_dim == 1


def _per_observation_latent(x, mask, y=None):
    with numpyro.plate("groups", x.shape[0], dim=-2):
        a = numpyro.sample("a", dist.Normal())
        with numpyro.plate("obs", x.shape[1], dim=-1), numpyro.handlers.mask(mask=mask):
            z = numpyro.sample("z", dist.Normal(a, 1.0))
            numpyro.sample("y", dist.Normal(z, 1.0), obs=y)


def _no_groups(x, mask, y=None):
    m = numpyro.sample("m", dist.Normal())
    with numpyro.plate("obs", x.shape[1], dim=-1), numpyro.handlers.mask(mask=mask):
        numpyro.sample("y", dist.Normal(m, 1.0).expand(x.shape).to_event(0), obs=y)


def _flat_observations(x, mask, y=None):
    with numpyro.plate("groups", x.shape[0], dim=-2):
        a = numpyro.sample("a", dist.Normal())
    numpyro.sample("y", dist.Normal(a, 1.0).mask(mask).to_event(2), obs=y)


def _ignores_mask(x, mask, y=None):
    with numpyro.plate("groups", x.shape[0], dim=-2):
        a = numpyro.sample("a", dist.Normal())
        with numpyro.plate("obs", x.shape[1], dim=-1):
            numpyro.sample("y", dist.Normal(a, 1.0), obs=y)


def _discrete_local(x, mask, y=None):
    with numpyro.plate("groups", x.shape[0], dim=-2):
        c = numpyro.sample("c", dist.Bernoulli(0.5))
        with numpyro.plate("obs", x.shape[1], dim=-1), numpyro.handlers.mask(mask=mask):
            numpyro.sample("y", dist.Normal(c, 1.0), obs=y)


def _data_shaped_local(x, mask, y=None):
    with numpyro.plate("groups", x.shape[0], dim=-2):
        a = numpyro.sample("a", dist.Normal(jnp.zeros(x.shape[1])))  # one per column, no plate
        with numpyro.plate("obs", x.shape[1], dim=-1), numpyro.handlers.mask(mask=mask):
            numpyro.sample("y", dist.Normal(a, 1.0), obs=y)


@pytest.mark.parametrize("model, match", [
    (_per_observation_latent, "'z' is in plates"),
    (_no_groups, "Exactly one plate of groups"),
    (_flat_observations, "Observed site 'y' is in plates"),
    (_ignores_mask, "masked-out values of 'y'"),
    (_discrete_local, "'c' is a discrete latent"),
    (_data_shaped_local, "Site 'a' .* batch shape"),
])
def test_unsupported_structures_are_refused_by_name(model, match):
    with pytest.raises(ValueError, match=match):
        inspect_hierarchy(model, _regression_data())


def test_bad_data_is_refused_by_name():
    data = _regression_data()
    with pytest.raises(ValueError, match="no mask argument 'mask'"):
        inspect_hierarchy(h.varying_slopes, {k: v for k, v in data.items() if k != "mask"})
    with pytest.raises(ValueError, match="must be a boolean"):
        inspect_hierarchy(h.varying_slopes, dict(data, mask=data["mask"].astype(int)))
    empty = data["mask"].at[2].set(False)
    with pytest.raises(ValueError, match=r"Groups \[2\] have no observation"):
        inspect_hierarchy(h.varying_slopes, dict(data, mask=empty))
    with pytest.raises(ValueError, match=r"data\['x'\] contains NaN"):
        inspect_hierarchy(h.varying_slopes, dict(data, x=data["x"].at[0, 0].set(jnp.nan)))


def test_pad_groups_round_trip_and_refusals():
    index = np.array([2, 0, 1, 2, 0, 2])
    x = np.arange(6.0)
    padded = pad_groups(index, x=x, y=10 * x)
    np.testing.assert_array_equal(padded["mask"].sum(axis=1), [2, 1, 3])
    np.testing.assert_array_equal(padded["x"][2, :3], [0.0, 3.0, 5.0])  # rows keep their order
    back = unpad_groups(padded["y"], padded["mask"])
    np.testing.assert_array_equal(np.sort(back), np.sort(10 * x))
    with pytest.raises(ValueError, match=r"Groups \[1\] have no observation"):
        pad_groups(np.array([0, 2, 2]), x=np.zeros(3))
    with pytest.raises(ValueError, match=r"out of range \[0, 2\) at rows \[2\]"):
        pad_groups(np.array([0, 1, 2]), num_groups=2, x=np.zeros(3))
    with pytest.raises(ValueError, match="must hold integers"):
        pad_groups(np.array([0.0, 0.5]), x=np.zeros(2))
    with pytest.raises(ValueError, match="x must have 3 rows"):
        pad_groups(np.array([0, 1, 1]), x=np.zeros(2))
    with pytest.raises(ValueError, match="y contains NaN"):
        pad_groups(np.array([0, 1]), y=np.array([0.0, np.nan]))
