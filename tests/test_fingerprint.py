"""The model fingerprint: equal for the same model on any draw of its design, different for a
changed distribution or constant; a checkpoint refuses a model with another fingerprint."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from amortized_ppl.checkpoint import load_guide, load_params, save_params
from amortized_ppl.fingerprint import model_fingerprint
from amortized_ppl.guides import AutoAmortizedNormal


def _regression(likelihood=dist.Normal, prior_scale=1.0, noise=0.5, shift=1.0):
    def model(x, y=None):
        w = numpyro.sample("w", dist.Normal(0.0, prior_scale).expand([x.shape[1]]).to_event(1))
        mean = x @ w + shift * w[0]
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", likelihood(mean, noise) if likelihood is dist.Normal
                           else likelihood(4.0, mean, noise), obs=y)

    return model


def design(key, n):
    return (jax.random.normal(key, (n, 2)),), {}


def _digest(model, seed=0):
    (x,), _ = design(jax.random.key(seed), 6)
    return model_fingerprint(model, {"x": np.asarray(x), "y": None}, "data")


def test_the_same_model_has_one_fingerprint_whatever_the_design_draw():
    assert _digest(_regression(), 0) == _digest(_regression(), 1)


@pytest.mark.parametrize("changed", [
    dict(likelihood=dist.StudentT), dict(prior_scale=5.0), dict(noise=1.0),
], ids=["student_t_likelihood", "prior_scale", "noise"])
def test_a_changed_distribution_or_constant_changes_it(changed):
    assert _digest(_regression(**changed)) != _digest(_regression())


@pytest.mark.slow  # the default tier's budget (3 minutes on 2 cores)
def test_a_checkpoint_refuses_a_model_with_the_same_name_and_sites(tmp_path):
    # Issue 15: a Student-t model with another prior loaded a Normal model's checkpoint.
    guide = AutoAmortizedNormal(_regression(), hidden_size=8, summary_size=8, head_width=8,
                                num_blocks=1)
    guide.setup(jax.random.key(0), design, (4, 8))
    params = jax.tree.map(lambda v: v + 0.01, guide.init_params())
    path = save_params(tmp_path / "ckpt", guide, params)
    other = _regression(likelihood=dist.StudentT, prior_scale=2.0)
    assert other.__qualname__ == _regression().__qualname__
    with pytest.raises(ValueError, match="not the one the checkpoint was trained for"):
        load_guide(path, other)
    # Same structure, other arithmetic (the mean's sign): the probe at fixed latents sees it.
    with pytest.raises(ValueError, match="at the same latents and data its distributions"):
        load_guide(path, _regression(shift=-1.0))
    other = AutoAmortizedNormal(_regression(shift=-1.0), hidden_size=8, summary_size=8,
                                head_width=8, num_blocks=1)
    other.setup(jax.random.key(0), design, (4, 8))
    with pytest.raises(ValueError, match="at the same latents and data its distributions"):
        load_params(path, other)
    restored, _ = load_guide(path, _regression())
    (x,), _ = design(jax.random.key(3), 5)
    draws = restored.sample_posterior(jax.random.key(1), params, x, y=jnp.ones(5),
                                      sample_shape=(3,))
    assert draws["w"].shape == (3, 2)
