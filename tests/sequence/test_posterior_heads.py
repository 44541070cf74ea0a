"""Posterior heads over discrete factors (posterior_heads.py, autoregressive_posterior.py,
environment_posterior.py): normalization, sampling, the KL to an exact posterior, errors."""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp

from amortized_ppl.sequence.autoregressive_posterior import AutoregressivePosterior
from amortized_ppl.sequence.environment_posterior import EnvironmentPosterior
from amortized_ppl.sequence.evaluate import environment_posterior_kl
from amortized_ppl.sequence.monte_carlo import (
    JointPosteriorTargets,
    MonteCarloPredictor,
    PosteriorDrawTargets,
)
from amortized_ppl.sequence.oracle import oracle_batch
from amortized_ppl.sequence.posterior_heads import FactorizedPosterior, mixed_radix_index
from amortized_ppl.sequence.study import factorized_floor_kl, posterior_kl_by_position
from tests.sequence.helpers import TOY_STEPS, toy_problem

SIZES = (2, 3, 1, 2)
"""A small factor set with a one-valued factor and unequal sizes: 12 combinations."""

TABLE = jnp.array(list(itertools.product(*[range(k) for k in SIZES])), jnp.int32)
FEATURES = jax.random.normal(jax.random.key(1), (5, 8))  # (T, d): 5 rows of an 8-wide trunk

SPECS = {
    "factorized": FactorizedPosterior(),
    "autoregressive": AutoregressivePosterior(width=16),
    "environment": EnvironmentPosterior(np.asarray(TABLE)),  # every combination listed
}


def _head(name, key=0):
    return SPECS[name].build(jax.random.key(key), FEATURES.shape[1], SIZES)


@eqx.filter_jit
def _table_and_draws(head, key):
    table = head.log_prob_table(FEATURES, TABLE)  # (T, 12)
    teacher = head.log_prob(FEATURES, jnp.broadcast_to(TABLE[:, None, :], (12, 5, len(SIZES))))
    return table, teacher, head.sample(key, FEATURES, (4000,))


def _slow_but(default):
    """The heads as parameters, all but ``default`` in the slow tier (each compiles a sampler)."""
    return [pytest.param(n, marks=() if n == default else (pytest.mark.slow,)) for n in SPECS]


@pytest.mark.parametrize("name", _slow_but("autoregressive"))
def test_head_normalizes_and_its_draws_follow_its_probabilities(name):
    table, teacher, draws = _table_and_draws(_head(name), jax.random.key(2))
    assert table.shape == (5, 12) and draws.shape == (4000, 5, len(SIZES))
    assert draws.dtype == jnp.int32
    # A distribution over all 12 combinations at every row.
    np.testing.assert_allclose(jnp.exp(logsumexp(table, axis=-1)), 1.0, atol=1e-5)
    # Teacher forcing (the training loss) scores the same joint as the table.
    np.testing.assert_allclose(teacher.T, table, atol=1e-5)
    # 4,000 draws: a frequency's SD is at most 0.008, so 0.035 is a four-SD bound.
    ids = np.asarray(mixed_radix_index(SIZES, draws))
    for row in (0, 4):
        freq = np.bincount(ids[:, row], minlength=12) / ids.shape[0]
        np.testing.assert_allclose(freq, np.exp(np.asarray(table[row])), atol=0.035)


@pytest.mark.parametrize("name", _slow_but("autoregressive"))
def test_head_is_deterministic_given_the_key(name):
    a = _table_and_draws(_head(name), jax.random.key(3))
    b = _table_and_draws(_head(name), jax.random.key(3))
    other = _table_and_draws(_head(name), jax.random.key(4))[2]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[2], other)


@pytest.mark.parametrize("name", _slow_but("factorized"))
def test_one_combination_scored_at_every_row_broadcasts(name):
    """The training label ``(F,)`` scores as that combination repeated at each of the T rows."""
    head = _head(name)
    one = eqx.filter_jit(head.log_prob)(FEATURES, TABLE[7])
    rows = eqx.filter_jit(head.log_prob)(FEATURES, jnp.broadcast_to(TABLE[7], (5, len(SIZES))))
    assert one.shape == (5,)
    np.testing.assert_allclose(one, rows, atol=1e-6)


def test_autoregressive_head_enumerates_every_combination_in_mixed_radix_order():
    head = _head("autoregressive")
    joint = eqx.filter_jit(head.joint_log_probs)(FEATURES)
    assert joint.shape == (5, 12)
    # The rows of the full table in mixed-radix order are the enumeration itself.
    np.testing.assert_allclose(joint, eqx.filter_jit(head.log_prob_table)(FEATURES, TABLE),
                               atol=1e-6)


@pytest.mark.slow  # compiles the environment head's sampler and scorer
def test_environment_head_gives_unlisted_combinations_no_mass():
    listed = np.asarray(TABLE[::3])  # 4 of the 12
    head = EnvironmentPosterior(listed).build(jax.random.key(0), 8, SIZES)
    table = eqx.filter_jit(head.log_prob_table)(FEATURES, TABLE)
    np.testing.assert_allclose(jnp.exp(logsumexp(table[:, ::3], axis=-1)), 1.0, atol=1e-5)
    assert bool(jnp.all(jnp.isneginf(table[:, 1::3])))
    draws = eqx.filter_jit(head.sample)(jax.random.key(0), FEATURES, (50,))
    assert set(np.asarray(mixed_radix_index(SIZES, draws)).ravel()) <= set(range(0, 12, 3))


def test_autoregressive_head_holds_correlated_factors_a_factorized_one_cannot():
    """Fit both heads by forward KL to p = 1/2 on (0, 0) and (1, 1) over 2 x 2 factors."""
    sizes, target = (2, 2), jnp.array([[0, 0], [1, 1]])
    features = jnp.ones((1, 4))
    table = jnp.array(list(itertools.product(range(2), range(2))))
    p = jnp.log(jnp.array([0.5, 0.0, 0.0, 0.5]))

    @eqx.filter_jit
    def fit(head):
        def loss(h):
            return -jnp.mean(h.log_prob(features, target[:, None, :]))

        def step(h, _):
            return jax.tree.map(lambda a, g: a - 0.3 * g, h, eqx.filter_grad(loss)(h)), None

        params, static = eqx.partition(head, eqx.is_inexact_array)
        params, _ = jax.lax.scan(lambda q, x: (eqx.partition(
            step(eqx.combine(q, static), x)[0], eqx.is_inexact_array)[0], None), params, None,
            length=200)
        fitted = eqx.combine(params, static)
        return environment_posterior_kl(p, fitted.log_prob_table(features, table)[0])

    ar = fit(AutoregressivePosterior(width=16).build(jax.random.key(0), 4, sizes))
    fact = fit(FactorizedPosterior().build(jax.random.key(0), 4, sizes))
    floor = factorized_floor_kl(p, table, sizes)
    np.testing.assert_allclose(floor, np.log(2.0), atol=1e-6)  # the total correlation
    assert float(fact) >= float(floor) - 1e-4
    assert float(ar) < 0.05  # (0.002 measured; the factorized head stays at log 2 = 0.69)


def test_factorized_floor_is_zero_for_a_product_posterior():
    sizes = (2, 3)
    table = jnp.array(list(itertools.product(range(2), range(3))))
    p_a, p_b = jnp.array([0.3, 0.7]), jnp.array([0.2, 0.5, 0.3])
    log_p = jnp.log(p_a[table[:, 0]] * p_b[table[:, 1]])
    np.testing.assert_allclose(factorized_floor_kl(log_p, table, sizes), 0.0, atol=1e-6)


class _CountsModel(eqx.Module):
    """A stand-in for a Monte Carlo predictor without a Transformer (whose compilation would put
    this test in the slow tier): row t's features are the counts of each symbol in ``x_<t``."""

    head: eqx.Module

    def posterior_log_prob_table(self, symbols, table):
        counts = jnp.cumsum(jax.nn.one_hot(symbols, 4), axis=0) - jax.nn.one_hot(symbols, 4)
        return self.head.log_prob_table(counts, table)


def test_posterior_kl_to_the_oracle_on_the_toy_family():
    """The KL-to-oracle evaluation for an autoregressive head, against a direct sum."""
    (li, lt, le), table, sample_fn = toy_problem()
    model = _CountsModel(AutoregressivePosterior(16).build(jax.random.key(0), 4, (2, 2)))
    _, xs = jax.jit(sample_fn, static_argnums=1)(jax.random.key(5), 3)
    oracle = oracle_batch(li, lt, le, xs, return_posterior=True)
    kl = posterior_kl_by_position(model, xs, oracle.log_posterior, table)
    assert kl.shape == (3, TOY_STEPS) and bool(jnp.all(kl >= -1e-5))
    q = eqx.filter_jit(model.posterior_log_prob_table)(xs[1], table)  # (T, 4)
    p = jnp.exp(oracle.log_posterior[1])
    direct = jnp.sum(jnp.where(p > 0, p * (oracle.log_posterior[1] - q), 0.0), axis=-1)
    np.testing.assert_allclose(kl[1], direct, atol=1e-5)
    # Deterministic: the same inputs give the same KL.
    np.testing.assert_array_equal(kl, posterior_kl_by_position(model, xs, oracle.log_posterior,
                                                               table))
    with pytest.raises(ValueError, match="oracle_log_posterior"):
        posterior_kl_by_position(model, xs, oracle.log_posterior[:, :-1], table)


@pytest.mark.slow  # compiles a Transformer trunk's loss, gradient and predictive (about 8 s)
def test_monte_carlo_predictor_with_an_autoregressive_head_trains_and_samples():
    (log_init, log_trans, log_emit), table, sample_fn = toy_problem()
    model = MonteCarloPredictor(4, TOY_STEPS, (2, 2), size=16, num_heads=2, num_blocks=1,
                                key=jax.random.key(0), posterior=AutoregressivePosterior(16))
    factors, xs = sample_fn(jax.random.key(1), 4)
    loss, grads = eqx.filter_jit(eqx.filter_value_and_grad(lambda m: m.loss(xs, factors)))(model)
    assert np.isfinite(float(loss))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    draws = eqx.filter_jit(model.sample_factors)(jax.random.key(2), xs[0], 3)
    assert draws.shape == (3, TOY_STEPS, 2)
    # Joint soft targets: a posterior that is a point on the true environment is the one label.
    point = jnp.log(jax.nn.one_hot(mixed_radix_index((2, 2), factors), 4))
    point = JointPosteriorTargets(jnp.broadcast_to(point[:, None], (4, TOY_STEPS, 4)), table)
    joint_loss = eqx.filter_jit(lambda m, t: m.loss(xs, factors, t))(model, point)
    np.testing.assert_allclose(float(joint_loss), float(loss), rtol=1e-5)
    # Labels drawn from a point posterior are the one label too.
    repeated = PosteriorDrawTargets(jnp.broadcast_to(factors[:, None, None], (4, 3, TOY_STEPS, 2)))
    draws_loss = eqx.filter_jit(lambda m, t: m.loss(xs, factors, t))(model, repeated)
    np.testing.assert_allclose(float(draws_loss), float(loss), rtol=1e-5)
    # The oracle's posterior (uniform prior over the 4 environments): finite loss and gradient.
    oracle = oracle_batch(log_init, log_trans, log_emit, xs, return_posterior=True)
    exact = JointPosteriorTargets(oracle.log_posterior, table)
    exact_loss, exact_grads = eqx.filter_jit(eqx.filter_value_and_grad(
        lambda m: m.loss(xs, factors, exact)))(model)
    assert np.isfinite(float(exact_loss))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(exact_grads))
    with pytest.raises(ValueError, match="factorized head only"):
        model.loss(xs, factors, jnp.ones((4, TOY_STEPS, 4)) / 2)
    with pytest.raises(ValueError, match="posterior_raw: only defined for the factorized"):
        model.posterior_raw(jnp.zeros((TOY_STEPS, 16)))
    with pytest.raises(TypeError, match="posterior spec"):
        MonteCarloPredictor(4, TOY_STEPS, (2, 2), key=jax.random.key(0), posterior="ar")


def test_head_errors():
    head = _head("autoregressive")
    with pytest.raises(ValueError, match=r"features: expected one sequence's trunk features \(T, 8\)"):
        head.log_prob(jnp.zeros((2, 5, 8)), TABLE[:5])
    with pytest.raises(ValueError, match="trailing axis of 4 factors"):
        head.log_prob(FEATURES, TABLE[:5, :3])
    with pytest.raises(ValueError, match="integer factor values"):
        head.log_prob(FEATURES, TABLE[:5].astype(jnp.float32))
    with pytest.raises(Exception, match=r"every value must lie in \[0, K_f\)"):
        eqx.filter_jit(head.log_prob)(FEATURES, TABLE[:5].at[0, 1].set(3))
    with pytest.raises(Exception, match="features: expected finite values"):
        eqx.filter_jit(head.sample)(jax.random.key(0), FEATURES.at[0, 0].set(jnp.nan), (2,))
    with pytest.raises(ValueError, match="width: expected an int >= 1"):
        AutoregressivePosterior(width=0)
    with pytest.raises(ValueError, match="factor_sizes"):
        AutoregressivePosterior().build(jax.random.key(0), 8, (2, 0))
    with pytest.raises(ValueError, match="distinct"):
        EnvironmentPosterior(np.asarray(TABLE)[[0, 0]]).build(jax.random.key(0), 8, SIZES)
    with pytest.raises(ValueError, match=r"table: expected \(E, 4\)"):
        EnvironmentPosterior(np.asarray(TABLE[:, :2])).build(jax.random.key(0), 8, SIZES)
    with pytest.raises(ValueError, match=r"in \[0, K_f\)"):
        EnvironmentPosterior(np.asarray(TABLE.at[0, 2].set(1))).build(jax.random.key(0), 8, SIZES)
