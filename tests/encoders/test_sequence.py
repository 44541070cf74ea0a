"""The positional sequence encoder, and the guides built on it (encoder="sequence")."""

import json
import types

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl import AutoAmortizedMultivariateNormal, AutoAmortizedNormal
from amortized_ppl.checkpoint import load_guide, save_params
from amortized_ppl.encoders.sequence import (
    SequenceEncoder,
    SequenceTransformer,
    sinusoidal_positions,
)
from amortized_ppl.encoders.set_transformer import SetTransformer
from amortized_ppl.models.gaussian_hmm import design_fn, model, simulate

TINY = dict(hidden_size=16, summary_size=8, num_blocks=1, head_width=32, head_depth=1)


def _encoder(**kwargs):
    return SequenceTransformer(2, 5, hidden_size=16, num_heads=2, key=jax.random.key(0), **kwargs)


@pytest.mark.slow  # the default tier's budget (3 minutes on 2 cores)
def test_padding_at_the_end_is_ignored_even_when_it_holds_nan():
    encoder = eqx.filter_jit(_encoder())
    tokens = jax.random.normal(jax.random.key(1), (12, 2))
    garbage = jnp.full((12, 2), jnp.nan).at[-1].set(1e6)
    lengths = jnp.array([3, 12, 7])
    mask = jnp.arange(12) < lengths[:, None]
    batch = jnp.stack([jnp.where(m[:, None], tokens, garbage) for m in mask])
    out = jax.vmap(encoder)(batch, mask)
    assert bool(jnp.all(jnp.isfinite(out)))
    # Each padded sequence encodes as its unpadded self.
    np.testing.assert_allclose(out[0], encoder(tokens[:3]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[2], encoder(tokens[:7]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[1], encoder(tokens), rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # in the slow tier for the default tier's 3-minute budget
def test_order_matters_unlike_the_set_transformer():
    tokens = jax.random.normal(jax.random.key(2), (10, 2))
    permuted = tokens[jax.random.permutation(jax.random.key(3), 10)]
    for encoder in (_encoder(), _encoder(num_conv=0), _encoder(num_blocks=0)):
        encode = eqx.filter_jit(encoder)
        difference = jnp.max(jnp.abs(encode(tokens) - encode(permuted)))
        assert float(difference) > 1e-3
    # The same check passes trivially for the set encoder: it is permutation invariant.
    set_encoder = SetTransformer(2, 5, hidden_size=16, num_heads=2, key=jax.random.key(0))
    np.testing.assert_allclose(set_encoder(tokens), set_encoder(permuted), rtol=1e-4, atol=1e-5)


def test_positions_and_bad_inputs():
    positions = sinusoidal_positions(4, 5)
    assert positions.shape == (4, 5)
    np.testing.assert_allclose(positions[0, :4], [0.0, 1.0, 0.0, 1.0])
    assert float(jnp.max(jnp.abs(positions[:, 4]))) == 0.0  # odd width: last column zero
    encoder = _encoder()
    with pytest.raises(ValueError, match="tokens must have shape"):
        encoder(jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="at least one row"):
        encoder(jnp.zeros((0, 2)))
    with pytest.raises(ValueError, match="mask must have shape"):
        encoder(jnp.zeros((4, 2)), jnp.ones(3, bool))
    with pytest.raises(TypeError, match="boolean"):
        encoder(jnp.zeros((4, 2)), jnp.ones(4))
    with pytest.raises(ValueError, match="kernel_size"):
        _encoder(kernel_size=2)
    with pytest.raises(ValueError, match="num_heads must divide"):
        SequenceTransformer(1, 4, hidden_size=10, num_heads=4, key=jax.random.key(0))


def test_guide_rejects_an_unknown_encoder():
    with pytest.raises(ValueError, match="encoder: expected one of"):
        AutoAmortizedNormal(model, encoder="lstm")


@pytest.mark.slow  # the default tier's contract test covers a sequence guide and its checkpoint
def test_sequence_guide_samples_and_survives_a_checkpoint(tmp_path):
    # Training is not repeated here (it compiles for half a minute): the set-up network is
    # enough for shapes, supports and checkpoints; the --runslow test trains and checks accuracy.
    guide = AutoAmortizedMultivariateNormal(model, encoder="sequence", **TINY)
    guide.setup(jax.random.key(3), design_fn, (20, 30), num_pilot=16)
    result = types.SimpleNamespace(params=guide.init_params())
    # One token per time step: the observed site sits in the "time" plate.
    problem = guide.problem
    assert problem.sites.plate_name == "time" and problem.spec.token_dim == 1
    assert guide.describe()["engine"]["encoder"]["type"] == "SequenceEncoder"
    assert isinstance(guide.engine(result.params).encoder, SequenceTransformer)

    ys = jax.vmap(simulate, in_axes=(0, None))(jax.random.split(jax.random.key(1), 2), 25).y
    mask = jnp.stack([jnp.ones(25, bool), jnp.arange(25) < 20])  # the second padded to 25
    draws = guide.sample_posterior(jax.random.key(2), result.params, ys, data_mask=mask,
                                   sample_shape=(50,))
    assert draws["means"].shape == (2, 50, 3) and draws["transition"].shape == (2, 50, 3, 3)
    assert draws["noise"].shape == (2, 50) and bool(jnp.all(draws["noise"] > 0))
    assert bool(jnp.all(jnp.diff(draws["means"], axis=-1) > 0))  # ordered
    np.testing.assert_allclose(draws["transition"].sum(-1), 1.0, rtol=1e-5)

    path = save_params(tmp_path / "ckpt", guide, result.params)
    # The guide comes back from the checkpoint and the model alone, sequence encoder included.
    loaded, params = load_guide(path, model, design_fn=design_fn)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(result.params), strict=True):
        np.testing.assert_array_equal(got, want)
    assert isinstance(loaded.engine(params).encoder, SequenceTransformer)
    again = loaded.sample_posterior(jax.random.key(2), params, ys, data_mask=mask,
                                    sample_shape=(50,))
    np.testing.assert_allclose(again["means"], draws["means"], rtol=1e-6)
    # A checkpoint whose recipe names an encoder this version does not know is refused by name.
    meta_path = path / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["guide"]["engine"]["encoder"]["type"] = "LSTMEncoder"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="Unknown recipe 'LSTMEncoder'"):
        load_guide(path, model)


def test_encoder_recipes_build_their_modules_and_describe_themselves():
    from amortized_ppl._recipes import describe_recipe, recipe_from_description
    from amortized_ppl.encoders import SetEncoder, resolve_encoder

    recipe = SequenceEncoder(summary_size=6, hidden_size=8, num_heads=2)
    module = recipe.build(jax.random.key(0), 3)
    assert isinstance(module, SequenceTransformer) and module.out_size == 6
    assert recipe_from_description(json.loads(json.dumps(describe_recipe(recipe)))) == recipe
    assert resolve_encoder("sequence", num_inducing=16) == SequenceEncoder()
    assert resolve_encoder("set", summary_size=4) == SetEncoder(summary_size=4)
    assert resolve_encoder(recipe) is recipe
    with pytest.raises(TypeError, match="encoder: expected 'set', 'sequence' or an encoder"):
        resolve_encoder(3)
