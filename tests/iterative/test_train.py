"""Training the update network on the one driver (iterative/train.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.guides import AutoIterativeAmortizedMultivariateNormal
from amortized_ppl.iterative.train import fit_iterative, training_sizes
from amortized_ppl.models.linear_regression import model_known_noise
from tests.helpers import small_design


def test_training_sizes_unroll_at_least_min_steps():
    sizes = training_sizes([(4, 8), 16], batch_size=8, num_passes=1, min_steps=2)
    assert [s.num_steps for s in sizes] == [2, 2]
    assert [s.batch_size for s in sizes] == [8, 8] and sizes[0].num_obs == (4, 8)


@pytest.mark.slow  # compiles the gradient through an unrolled refinement: 20-30 s
def test_fit_iterative_trains_and_resumes(key):
    guide = AutoIterativeAmortizedMultivariateNormal(
        model_known_noise, summary_size=4, hidden_size=8, memory_size=4, head_width=8
    )
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
    before = guide.init_params()[guide.param_name].network.head.layers[-1].weight
    after = result.params[guide.param_name].network.head.layers[-1].weight
    assert float(jnp.max(jnp.abs(after - before))) > 0
    assert result.reason == "done" and result.sizes.tolist() == [0, 0]
    # Resuming continues the optimizer's step count and the keys.
    more = fit_iterative(key, guide, sizes=[16], batch_size=8, num_passes=1, min_steps=2,
                         num_iterations=1, datasets_per_step=2, init_state=result.state,
                         progress=False)
    assert int(more.state.step) == 3


def test_fit_iterative_validates_its_arguments(key):
    guide = AutoIterativeAmortizedMultivariateNormal(model_known_noise)
    with pytest.raises(ValueError, match="num_iterations"):
        fit_iterative(key, guide, design_fn=small_design, num_iterations=0, progress=False)
    with pytest.raises(ValueError, match="the guide is not set up; pass design_fn"):
        fit_iterative(key, guide, num_iterations=1, progress=False)


def test_fit_iterative_refuses_a_one_shot_guide(key):
    from amortized_ppl import AutoAmortizedNormal

    guide = AutoAmortizedNormal(model_known_noise)
    with pytest.raises(TypeError, match="trains iterative engines"):
        fit_iterative(key, guide, design_fn=small_design, sizes=[16], num_iterations=1,
                      progress=False)


