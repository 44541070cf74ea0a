"""The in-context learners (implicit.py, explicit.py, transformer.py): exact masks, padding."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.icl import (
    ImplicitLearner,
    MaskedTransformer,
    build_explicit_learner,
    implicit_attention_mask,
)

KEY = jax.random.key(0)
N, M = 6, 4
# A perturbation that is not a constant shift (layer norm would erase one).
BUMP = jnp.linspace(-1.0, 1.0, 8)


def _task():
    keys = jax.random.split(jax.random.key(1), 3)
    context_x = jax.random.normal(keys[0], (N, 1))
    context_y = jax.random.normal(keys[1], (N,))
    query_x = jax.random.normal(keys[2], (M, 1))
    return context_x, context_y, jnp.arange(N) < 4, query_x


def test_implicit_mask_exactly():
    # Perturbing one token's input moves only the outputs allowed to read it.
    trunk = MaskedTransformer(8, num_heads=2, num_blocks=2, key=KEY)
    context_mask = jnp.arange(N) < 4
    attend = implicit_attention_mask(context_mask, M)
    tokens = jax.random.normal(jax.random.key(2), (N + M, 8))
    run = eqx.filter_jit(lambda t: trunk(t, attend))
    base = run(tokens)
    moved = lambda i: np.abs(np.asarray(run(tokens.at[i].add(BUMP)) - base)).max(axis=1) > 1e-6
    first_query = N
    assert moved(first_query).tolist() == [i == first_query for i in range(N + M)]
    for padded in (4, 5):  # padding moves only its own row
        assert moved(padded).tolist() == [i == padded for i in range(N + M)]
    # A real context token reaches every row (padded rows read the context; nothing reads them).
    assert moved(1).all()


@pytest.mark.slow  # the trunk's mask is tested exactly above; this is the learner end to end
def test_implicit_learner_predicts_queries_independently_and_ignores_padding():
    learner = ImplicitLearner(1, size=8, num_heads=2, num_blocks=2, key=KEY)
    context_x, context_y, mask, query_x = _task()
    call = eqx.filter_jit(lambda lr, *a: lr(*a))
    mean, log_scale = call(learner, context_x, context_y, mask, query_x)
    assert mean.shape == log_scale.shape == (M,)
    mean2, _ = call(learner, context_x, context_y, mask, query_x.at[0].add(1.0))
    np.testing.assert_array_equal(mean[1:], mean2[1:])
    assert abs(float(mean[0] - mean2[0])) > 1e-6
    mean3, _ = call(learner, context_x.at[5].set(1e4), context_y.at[4].set(jnp.nan), mask, query_x)
    np.testing.assert_array_equal(mean, mean3)


def test_explicit_cls_is_read_by_nothing_and_padding_is_ignored():
    learner = build_explicit_learner(
        1, 2, predictor="transformer", z_dim=4, size=8, num_heads=2, num_blocks=2, key=KEY
    )
    context_x, context_y, mask, query_x = _task()
    tokens = eqx.filter_jit(lambda enc, *a: enc.tokens(*a))
    base = tokens(learner.encoder, context_x, context_y, mask)
    shifted = eqx.tree_at(
        lambda lr: lr.encoder.cls_token, learner, learner.encoder.cls_token + BUMP
    )
    moved = tokens(shifted.encoder, context_x, context_y, mask)
    np.testing.assert_array_equal(base[1:], moved[1:])  # no context token reads CLS
    assert float(jnp.abs(base[0] - moved[0]).max()) > 1e-6
    call = eqx.filter_jit(lambda lr, *a: lr(*a))
    mean, _ = call(learner, context_x, context_y, mask, query_x)
    garbage, _ = call(
        learner, context_x.at[4].set(1e4), context_y.at[5].set(jnp.nan), mask, query_x
    )
    np.testing.assert_array_equal(mean, garbage)
    # The Transformer predictor: each query reads only itself and z.
    mean2, _ = call(learner, context_x, context_y, mask, query_x.at[2].add(1.0))
    np.testing.assert_array_equal(np.delete(mean, 2), np.delete(mean2, 2))


@pytest.mark.slow  # two compilations; the Transformer predictor is exercised above
@pytest.mark.parametrize("predictor", ["mlp", "known"])
def test_explicit_predictors_shapes(predictor):
    learner = build_explicit_learner(
        1, 2, predictor=predictor, z_dim=4, size=8, num_heads=2, num_blocks=1, key=KEY
    )
    context_x, context_y, mask, query_x = _task()
    mean, log_scale = learner(context_x, context_y, mask, query_x)
    assert mean.shape == log_scale.shape == (M,)
    assert learner.probe_latent(context_x, context_y, mask).shape == (2,)


def test_bad_inputs_name_the_argument():
    learner = ImplicitLearner(1, size=8, num_heads=2, num_blocks=1, key=KEY)
    context_x, context_y, mask, query_x = _task()
    with pytest.raises(ValueError, match="context_x: expected shape"):
        learner(context_x[None], context_y, mask, query_x)
    with pytest.raises(ValueError, match="context_mask: expected a boolean"):
        learner(context_x, context_y, mask.astype(jnp.float32), query_x)
    with pytest.raises(ValueError, match="query_x: expected shape"):
        learner(context_x, context_y, mask, jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="predictor: expected one of"):
        build_explicit_learner(1, 2, predictor="gp", key=KEY)
    with pytest.raises(ValueError, match="num_heads"):
        MaskedTransformer(10, num_heads=4, key=KEY)
