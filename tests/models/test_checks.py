"""The model zoo's shape checks (amortized_ppl/models/checks.py) and the shared value checks it uses."""

import jax.numpy as jnp
import pytest

from amortized_ppl._checks import check_int, check_positive_float
from amortized_ppl.models.checks import as_float, check_design_shape, check_last_axis


def test_shared_positive_and_shape_checks():
    assert check_positive_float(0.5, "s") == 0.5 and check_int(3, "n") == 3
    for bad in (0.0, -1.0, float("nan"), float("inf"), "x"):
        with pytest.raises(ValueError, match="s: expected a positive finite float"):
            check_positive_float(bad, "s")
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="n: expected an int >= 1"):
            check_int(bad, "n")
    check_last_axis(jnp.zeros((4, 3)), 3)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 2\)"):
        check_last_axis(jnp.zeros((4, 3)), 2)


def test_design_shape_and_float_conversion():
    check_design_shape(jnp.zeros((3, 2)), None)
    check_design_shape(jnp.zeros((3, 2)), jnp.zeros(3))
    with pytest.raises(ValueError, match=r"x must be a 2-D array .*got shape \(3,\)"):
        check_design_shape(jnp.zeros(3), None)
    with pytest.raises(ValueError, match=r"y must be a 1-D array .*\(3,\); got shape \(2,\)"):
        check_design_shape(jnp.zeros((3, 2)), jnp.zeros(2))
    assert as_float(jnp.arange(3)).dtype == jnp.result_type(float)
    assert as_float(jnp.zeros(2, jnp.float16)).dtype == jnp.float16  # floating stays as it is
