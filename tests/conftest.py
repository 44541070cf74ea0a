"""Test configuration: CPU by default, a fixed key fixture, opt-in slow tests."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


# The longest items (notebooks and the demo's end-to-end runs, 1-2 minutes each) go first, so that
# the two xdist workers fill in around them with short tests instead of ending on one of them.
_LONG_FIRST = ("test_notebooks.py", "test_demo.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.nodeid.split("::")[0].rsplit("/", 1)[-1] not in _LONG_FIRST)
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow test: opt in with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture
def key():
    return jax.random.key(0)

