"""Fast tests of the Set Transformer encoder: shapes, invariances, masking, gradients, errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.encoders.set_transformer import (
    InducedSetAttentionBlock,
    MultiheadAttentionBlock,
    PoolingByMultiheadAttention,
    SetAttentionBlock,
    SetTransformer,
)

IN_SIZE = 3
OUT_SIZE = 5
# Float32 sums in a different order differ by ~1e-7 relative; 1e-5 leaves ample room.
ATOL = 1e-5

# SAB and ISAB variants; two seeds exercise the flatten-then-readout path.
VARIANTS = {
    "sab": dict(num_inducing=None, num_seeds=1),
    "isab": dict(num_inducing=4, num_seeds=2),
}


# Compilation dominates the run time, so the tests share a few jitted functions and a few
# shapes (mostly 7 and 12 rows), and build each encoder once per module. Plain jax.jit takes
# the module as an argument: its arrays are leaves, its hyper-parameters static.
apply = jax.jit(lambda model, *args: model(*args))
apply_batch = jax.jit(lambda model, tokens, mask: jax.vmap(model)(tokens, mask))


@pytest.fixture(scope="module", params=[
    "isab", pytest.param("sab", marks=pytest.mark.slow)])  # the default tier: one variant
def encoder(request):
    return SetTransformer(
        IN_SIZE, OUT_SIZE, hidden_size=8, num_heads=2, num_blocks=2, key=jax.random.key(0),
        **VARIANTS[request.param],
    )


def _tokens(seed, num_obs):
    return jax.random.normal(jax.random.key(seed), (num_obs, IN_SIZE))


def _pad(tokens, num_rows, fill=1e6):
    """Pad `tokens` to `num_rows` rows of large garbage and return (padded, mask)."""
    num_obs = tokens.shape[0]
    garbage = fill * (1.0 + jnp.arange((num_rows - num_obs) * IN_SIZE).reshape(-1, IN_SIZE))
    padded = jnp.concatenate([tokens, garbage])
    return padded, jnp.arange(num_rows) < num_obs


def test_output_shape(encoder):
    # Shapes only, so trace without compiling.
    tokens = _tokens(1, 7)
    assert eqx.filter_eval_shape(encoder, tokens).shape == (OUT_SIZE,)
    assert eqx.filter_eval_shape(encoder, *_pad(tokens, 12)).shape == (OUT_SIZE,)


def test_blocks_shapes(key):
    x, y, mask = jnp.ones((6, 8)), jnp.ones((9, 8)), jnp.arange(9) < 5
    blocks = [
        (MultiheadAttentionBlock(8, 2, key=key), (x, y, mask), (6, 8)),
        (SetAttentionBlock(8, 2, key=key), (x,), (6, 8)),
        (InducedSetAttentionBlock(8, 2, 3, key=key), (x,), (6, 8)),
        (PoolingByMultiheadAttention(8, 2, 4, key=key), (y, mask), (4, 8)),
    ]
    for block, args, shape in blocks:
        assert eqx.filter_eval_shape(block, *args).shape == shape


@pytest.mark.parametrize("fill", [1e6, jnp.nan])
def test_attention_block_ignores_masked_keys(key, fill):
    # The block's own masking, without the encoder zeroing padded rows first.
    block = MultiheadAttentionBlock(8, 2, key=key)
    x = jax.random.normal(jax.random.key(1), (3, 8))
    y = jax.random.normal(jax.random.key(2), (5, 8))
    padded = jnp.concatenate([y, jnp.full((4, 8), fill)])
    mask = jnp.arange(9) < 5
    np.testing.assert_allclose(apply(block, x, padded, mask), apply(block, x, y), atol=ATOL)


def test_permutation_invariance(encoder):
    tokens, mask = _pad(_tokens(2, 7), 12)
    perm = jax.random.permutation(jax.random.key(3), 12)
    np.testing.assert_allclose(
        apply(encoder, tokens[perm], mask[perm]), apply(encoder, tokens, mask), atol=ATOL
    )
    # And without a mask.
    tokens = _tokens(4, 7)
    perm = jax.random.permutation(jax.random.key(5), 7)
    np.testing.assert_allclose(apply(encoder, tokens[perm]), apply(encoder, tokens), atol=ATOL)


@pytest.mark.parametrize("fill", [1e6, jnp.inf, jnp.nan])
def test_padding_invariance(encoder, fill):
    tokens = _tokens(6, 7)
    padded, mask = _pad(tokens, 12, fill)
    expected = apply(encoder, tokens)
    np.testing.assert_allclose(apply(encoder, padded, mask), expected, atol=ATOL)
    # Padding need not be at the end.
    perm = jax.random.permutation(jax.random.key(7), 12)
    np.testing.assert_allclose(apply(encoder, padded[perm], mask[perm]), expected, atol=ATOL)


def test_vmap_over_ragged_batch(encoder):
    sizes = [2, 7, 12]
    data_sets = [_tokens(10 + i, n) for i, n in enumerate(sizes)]
    padded, masks = zip(*(_pad(d, 12) for d in data_sets))
    batched = apply_batch(encoder, jnp.stack(padded), jnp.stack(masks))
    assert batched.shape == (len(sizes), OUT_SIZE)
    for row, data in zip(batched, data_sets):
        # The unpadded data set on its own (the full one via an all-True mask, a shape that is
        # already compiled).
        alone = apply(encoder, *_pad(data, 12)) if len(data) == 12 else apply(encoder, data)
        np.testing.assert_allclose(row, alone, atol=ATOL)


@eqx.filter_jit
@eqx.filter_grad
def _grads(model, tokens, mask):
    return jnp.sum(jax.vmap(model)(tokens, mask) ** 2)


def test_gradients_finite_with_padding(encoder):
    # Sizes include an empty data set (all rows masked), whose gradient must not be NaN either.
    padded, masks = zip(*(_pad(_tokens(20 + i, n), 12) for i, n in enumerate([0, 2, 7, 12])))
    grads = _grads(encoder, jnp.stack(padded), jnp.stack(masks))
    leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_array))
    assert leaves
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
    # Some gradients are non-zero, so the finiteness check is not vacuous.
    assert any(bool(jnp.any(leaf != 0)) for leaf in leaves)


def test_all_masked_is_finite(encoder):
    """An empty data set has an undefined encoding, but it is not NaN."""
    tokens, mask = _pad(_tokens(30, 0), 12)
    assert not bool(jnp.any(mask))
    assert bool(jnp.all(jnp.isfinite(apply(encoder, tokens, mask))))


@pytest.mark.parametrize(
    "tokens_shape, mask_shape, name",
    [
        ((7,), None, "tokens"),  # one row without its data-set axis
        ((2, 7, IN_SIZE), None, "tokens"),  # a batch: needs vmap
        ((7, IN_SIZE + 1), None, "tokens"),  # wrong feature width
        ((0, IN_SIZE), None, "tokens"),  # no rows at all
        ((7, IN_SIZE), (6,), "mask"),
        ((7, IN_SIZE), (7, 1), "mask"),
    ],
)
def test_bad_shapes_raise(encoder, tokens_shape, mask_shape, name):
    tokens = jnp.zeros(tokens_shape)
    mask = None if mask_shape is None else jnp.ones(mask_shape, bool)
    received = str(tokens_shape if name == "tokens" else mask_shape)
    # Both eagerly and at trace time under jit; the message gives the shape received.
    for fn in (encoder, lambda t, m: apply(encoder, t, m)):
        with pytest.raises(ValueError, match=name) as info:
            fn(tokens, mask)
        assert received in str(info.value)


def test_non_boolean_mask_raises(encoder):
    with pytest.raises(TypeError, match="mask"):
        encoder(jnp.zeros((4, IN_SIZE)), jnp.ones(4))


def test_bad_hyperparameters_raise(key):
    with pytest.raises(ValueError, match="num_heads"):
        SetTransformer(IN_SIZE, OUT_SIZE, hidden_size=10, num_heads=4, key=key)
    with pytest.raises(ValueError, match="num_inducing"):
        SetTransformer(IN_SIZE, OUT_SIZE, hidden_size=8, num_inducing=0, key=key)
    with pytest.raises(ValueError, match="num_seeds"):
        SetTransformer(IN_SIZE, OUT_SIZE, hidden_size=8, num_seeds=0, key=key)
