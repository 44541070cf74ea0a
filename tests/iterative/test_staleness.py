"""The readout's view of its own staleness (iterative/kernel.py: track_staleness, the readout)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from amortized_ppl.iterative.kernel import readout_features, track_staleness
from tests.iterative.linear import data, linear_guide


def test_track_staleness_keeps_the_weighted_moments_of_the_linearization_points(key):
    """Against the brute-force sums: point ``j`` (the location before step ``j``) carries weight
    ``rho_j prod_{k > j} (1 - rho_k)``, and the moments are about the final location."""
    dim, steps = 3, 6
    locs = jnp.cumsum(jax.random.normal(key, (steps + 1, dim)), axis=0)  # mu_0 .. mu_K
    rhos = jnp.array([1.0, 0.5, 0.3, 0.8, 0.25, 0.6])
    mean, second = jnp.zeros(dim), jnp.zeros((dim, dim))
    for j in range(steps):
        mean, second = track_staleness(mean, second, locs[j + 1] - locs[j], rhos[j])
    weights = np.array([float(rhos[j] * jnp.prod(1.0 - rhos[j + 1:])) for j in range(steps)])
    offsets = np.asarray(locs[:-1] - locs[-1])
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)  # rho_0 = 1 forgets the start
    np.testing.assert_allclose(mean, weights @ offsets, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(second, (weights[:, None] * offsets).T @ offsets, rtol=1e-5,
                               atol=1e-5)


def test_readout_features_whiten_the_staleness_and_scale_by_the_sd_ratio():
    tril = jnp.array([[2.0, 0.0], [1.0, 0.5]])
    prior = (jnp.zeros(2), jnp.array([4.0, 4.0]))
    stale_mean = tril @ jnp.array([0.3, -0.2])
    stale_second = tril @ jnp.array([[1.0, 0.2], [0.2, 0.5]]) @ tril.T
    inputs, kappa = readout_features(jnp.zeros(3), jnp.ones(2), tril, stale_mean, stale_second,
                                     prior)
    np.testing.assert_allclose(inputs[3:5], np.arcsinh([0.3, -0.2]), rtol=1e-5)
    np.testing.assert_allclose(inputs[5:8], np.arcsinh([1.0, 0.2, 0.5]), rtol=1e-5)
    sd = np.sqrt(np.sum(np.asarray(tril) ** 2, axis=-1))
    rms = np.sqrt(np.mean([1.0, 0.5]))  # RMS staleness in the whitened frame
    np.testing.assert_allclose(float(kappa), np.exp(np.mean(np.log(sd / 4.0))) * rms, rtol=1e-5)
    # A posterior wider than the prior does not scale the correction up.
    _, kappa = readout_features(jnp.zeros(3), jnp.ones(2), 10 * tril, 10 * stale_mean,
                                100 * stale_second, prior)
    np.testing.assert_allclose(float(kappa), rms, rtol=1e-5)
    # Fresh expansions: no staleness, no correction.
    _, kappa = readout_features(jnp.zeros(3), jnp.ones(2), tril, 0 * stale_mean,
                                0 * stale_second, prior)
    assert float(kappa) == 0.0


def test_the_readout_network_moves_the_readout_and_never_the_running_gaussian(key):
    guide, params = linear_guide()
    problem, base = guide.problem, guide.engine(params)
    last = base.network.readout.layers[-1]
    shifted = eqx.tree_at(lambda e: e.network.readout.layers[-1].bias, base,
                          jnp.full_like(last.bias, 0.5))
    x, y = data(40)
    batch = {"x": x[:20], "y": y[:20], "sigma": 0.5}
    mask = jnp.ones(20, bool)

    @eqx.filter_jit
    def two_steps(engine):
        state = engine.init_state(problem)
        for k in range(2):
            state, _ = engine.step(jax.random.fold_in(key, k), problem, state, batch, mask, 2)
        return state

    off, on = two_steps(base), two_steps(shifted)
    # The network off: the readout is the running Gaussian (the base).
    np.testing.assert_array_equal(off.loc, off.run_loc)
    np.testing.assert_array_equal(off.scale_tril, off.run_scale_tril)
    # On: the running Gaussian (and its staleness) is the same; only the readout moves.
    np.testing.assert_allclose(on.run_loc, off.run_loc, rtol=1e-6)
    np.testing.assert_allclose(on.stale_second, off.stale_second, rtol=1e-5, atol=1e-8)
    assert float(jnp.max(jnp.abs(on.loc - on.run_loc))) > 1e-3
