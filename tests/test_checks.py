"""The shared argument checks (amortized_ppl/_checks.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl._checks import (
    check_finite,
    check_int,
    check_key,
    check_open_unit,
    check_positive_float,
)

# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 42, np.int64(7)])
def test_check_key_rejects_int_seed(seed):
    with pytest.raises(TypeError, match=rf"rng_key: .*jax\.random\.key\({int(seed)}\)"):
        check_key(seed)


@pytest.mark.parametrize(
    "bad, fragment",
    [
        (jnp.zeros(2), "float32"),
        (jnp.zeros((3,), jnp.uint32), r"shape \(3,\)"),
        (np.zeros(2, np.uint32), "ndarray"),
        ("seed", "str"),
        (None, "NoneType"),
    ],
    ids=["float-array", "uint32-wrong-shape", "numpy-array", "str", "none"],
)
def test_check_key_rejects_non_keys(bad, fragment):
    with pytest.raises(TypeError, match=fragment):
        check_key(bad)


def test_check_key_names_the_argument():
    with pytest.raises(TypeError, match=r"^key: "):
        check_key(3, "key")


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: jax.random.key(0),
        lambda: jax.random.PRNGKey(0),
        lambda: jax.random.split(jax.random.key(0), 3),
        lambda: jax.random.split(jax.random.PRNGKey(0), 3),
    ],
    ids=["key", "PRNGKey", "split-keys", "split-PRNGKeys"],
)
def test_check_key_accepts_keys(make_key):
    key = make_key()
    assert check_key(key) is key



def test_check_int_accepts_integers_and_refuses_the_rest():
    assert check_int(3, "n") == 3 and check_int(np.int64(0), "n", 0) == 0
    for bad in (0, True, 2.0, "3", None):
        with pytest.raises(ValueError, match=r"^n: expected an int >= 1, got"):
            check_int(bad, "n")


def test_check_positive_float_and_open_unit():
    assert check_positive_float(0.5, "s") == 0.5
    assert check_positive_float(0.0, "s", allow_zero=True) == 0.0
    for bad in (0.0, -1.0, float("nan"), float("inf"), "x", None):
        with pytest.raises(ValueError, match=r"^s: expected a positive finite float"):
            check_positive_float(bad, "s")
    assert check_open_unit(0.3, "p") == 0.3
    for bad in (0.0, 1.0, 2.0, float("nan"), "x"):
        with pytest.raises(ValueError, match=r"^p: expected a float in \(0, 1\)"):
            check_open_unit(bad, "p")


def test_check_finite_on_concrete_and_traced_arrays():
    assert check_finite(jnp.ones(3), "x").shape == (3,)
    with pytest.raises(ValueError, match="x: expected finite values"):
        check_finite(jnp.array([1.0, jnp.nan]), "x")
    traced = jax.jit(lambda v: check_finite(v, "x"))
    np.testing.assert_array_equal(traced(jnp.ones(2)), jnp.ones(2))
    # Inside jit the check is an equinox runtime error (surfaced by jax as an error whose
    # message holds ours).
    with pytest.raises(Exception, match="x: expected finite values"):
        jax.block_until_ready(traced(jnp.array([jnp.inf, 0.0])))
