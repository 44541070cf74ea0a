"""The eight-schools problem the hierarchy tests share."""

import equinox as eqx
import jax
import pytest

from amortized_ppl.hierarchy import HierarchicalNetwork, inspect_hierarchical_problem
from amortized_ppl.models import hierarchical as h


@pytest.fixture(scope="module")
def schools():
    """Non-centred eight schools and a network with its last layers zeroed, on a problem whose
    globals' robust scale is widened three times: a proposal that covers the posterior's tails,
    so the importance-resampled draws must match the quadrature whatever a network would say."""
    problem = inspect_hierarchical_problem(
        jax.random.key(0), h.eight_schools_noncentered, h.eight_schools_design,
        num_groups=(8, 8), group_sizes=(1, 1), num_pilot=64)
    wide = eqx.tree_at(lambda p: p.global_scale, problem, problem.global_scale * 3.0)
    network = HierarchicalNetwork(jax.random.key(1), wide, width=8, summary_size=8)
    return wide, network.network_off()
