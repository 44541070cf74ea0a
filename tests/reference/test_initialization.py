"""Initial positions of the chains: shapes, the init strategy's range, keys, one compile per
shape; the runtime check of a start's log density."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.util import potential_energy

from amortized_ppl.models.linear_regression import model
from amortized_ppl.reference.initialization import build_initial_positions, check_finite_start
from tests.reference.helpers import counting

NUM_CHAINS = 3


def _data(seed):
    x = jax.random.normal(jax.random.key(seed), (20, 2))
    return (x,), {"y": x.sum(axis=1)}


@pytest.fixture(scope="module")
def init():
    counted = counting(model)
    return counted, build_initial_positions(
        counted, num_chains=NUM_CHAINS, init_strategy=init_to_uniform
    )


def test_one_position_per_chain_within_the_uniform_range(init):
    _, init_fn = init
    args, kwargs = _data(0)
    positions = init_fn(jax.random.key(0), args, kwargs)
    assert set(positions) == {"w", "b", "sigma"}
    assert positions["w"].shape == (NUM_CHAINS, 2)
    assert positions["b"].shape == positions["sigma"].shape == (NUM_CHAINS,)
    # init_to_uniform draws each unconstrained coordinate from U(-2, 2).
    for value in positions.values():
        assert np.all(np.abs(np.asarray(value)) <= 2.0)
    # One key per chain: the chains start apart.
    assert len(np.unique(np.asarray(positions["b"]))) == NUM_CHAINS


def test_deterministic_given_the_key_and_compiled_once_per_shape(init):
    counted, init_fn = init
    args, kwargs = _data(0)
    first = init_fn(jax.random.key(0), args, kwargs)
    calls = len(counted.calls)
    again = init_fn(jax.random.key(0), *_data(1))
    other = init_fn(jax.random.key(1), args, kwargs)
    assert len(counted.calls) == calls, "a data set of the same shape retraced the model"
    for site in first:
        np.testing.assert_array_equal(again[site], first[site])
    assert not np.allclose(other["w"], first["w"])


def test_check_finite_start():
    args, kwargs = _data(0)

    def logdensity_fn(position):
        return -potential_energy(model, args, kwargs, position)

    good = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2), "sigma": jnp.zeros(2)}
    checked = eqx.filter_jit(lambda p: check_finite_start(p, logdensity_fn))
    assert set(checked(good)) == set(good)
    # sigma = exp(-1e4) underflows to zero: the likelihood's log density is not finite.
    bad = dict(good, sigma=jnp.array([0.0, -1e4]))
    with pytest.raises(eqx.EquinoxRuntimeError, match="non-finite log density"):
        jax.block_until_ready(checked(bad))
