"""The reference sampler's input checks: argument names, finite data, latent sites, init_params,
metric shape (host-side and trace-time Python; no compiled program)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from amortized_ppl.models.linear_regression import model, model_known_noise
from amortized_ppl.reference.checks import (
    argument_names,
    check_finite_arguments,
    check_finite_tree,
    check_init_params,
    check_init_params_type,
    check_inverse_mass_matrix,
    check_target_accept,
    unconstrained_shapes,
)

X, Y = jnp.ones((5, 3)), jnp.ones(5)


def test_argument_names_follow_the_model_signature():
    names = argument_names(model_known_noise, (X,), {"y": Y, "sigma": 0.3})
    assert list(names) == ["x", "y", "sigma"]
    assert names["x"] is X and names["sigma"] == 0.3

    def varargs(*arrays, scale=1.0, **extra):
        pass

    names = argument_names(varargs, (X, Y), {"scale": 2.0, "z": 3.0})
    assert list(names) == ["arrays[0]", "arrays[1]", "scale", "z"]


def test_argument_names_fall_back_to_positions():
    # Too many positional arguments for the signature: named by position instead.
    names = argument_names(model, (X, Y, Y), {"extra": 1.0})
    assert list(names) == ["args[0]", "args[1]", "args[2]", "extra"]


def test_check_finite_names_the_argument():
    check_finite_tree("ok", {"a": X, "n": 3, "s": "text", "none": None, "i": jnp.arange(3)})
    with pytest.raises(ValueError, match="Argument 'data' contains NaN or Inf"):
        check_finite_tree("data", {"a": np.array([1.0, np.inf])})
    with pytest.raises(ValueError, match="Argument 'y' contains NaN or Inf"):
        check_finite_arguments(model, (X,), {"y": Y.at[2].set(jnp.nan)})
    check_finite_arguments(model, (X,), {"y": Y})


def test_unconstrained_shapes_of_the_latent_sites():
    shapes = unconstrained_shapes(model, (X,), {"y": Y})
    assert set(shapes) == {"w", "b", "sigma"}
    assert shapes["w"].shape == (3,) and shapes["b"].shape == () and shapes["sigma"].shape == ()


def test_discrete_site_is_named():
    def discrete():
        numpyro.sample("k", dist.Poisson(3.0))

    with pytest.raises(ValueError, match="discrete sample site 'k'"):
        unconstrained_shapes(discrete, (), {})


def test_check_init_params():
    expected = unconstrained_shapes(model, (X,), {"y": Y})
    good = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(4), "sigma": jnp.zeros(4)}
    check_init_params(good, expected, num_chains=4)
    with pytest.raises(ValueError, match=r"keyed by the latent sites \['b', 'sigma', 'w'\]"):
        check_init_params({"w": good["w"]}, expected, num_chains=4)
    with pytest.raises(ValueError, match=r"init_params\['b'\] must have shape \(4,\)"):
        check_init_params(dict(good, b=jnp.zeros((4, 1))), expected, num_chains=4)
    check_init_params_type(None)
    check_init_params_type(good)
    with pytest.raises(ValueError, match="init_params must be a dict .* got list"):
        check_init_params_type([good["w"]])


def test_check_inverse_mass_matrix():
    args, kwargs = (X,), {"y": Y}
    assert check_inverse_mass_matrix(np.ones(5), model, args, kwargs).shape == (5,)
    assert check_inverse_mass_matrix(jnp.eye(5), model, args, kwargs).shape == (5, 5)
    with pytest.raises(ValueError, match=r"inverse_mass_matrix: expected shape \(5,\) or \(5, 5\)"):
        check_inverse_mass_matrix(jnp.ones(4), model, args, kwargs)


@pytest.mark.parametrize("value", [0.0, 1.0, -0.5, 2])
def test_check_target_accept_rejects(value):
    with pytest.raises(ValueError, match="target_accept must lie in"):
        check_target_accept(value)


def test_check_target_accept_accepts():
    assert check_target_accept(0.9) == 0.9
    assert isinstance(check_target_accept(np.float32(0.5)), float)


def test_checks_pass_traced_leaves():
    # Inside jit the data are tracers: the host check leaves them to the compiled program.
    jax.jit(lambda a: check_finite_tree("a", a) or a)(X)
