"""Summaries of reference runs on synthetic chains: R-hat and ESS, the warnings that flag high
R-hat and divergences, the ArviZ object, flattening and moments (NumPy only, no sampler)."""

import inspect
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.convergence import (
    RHAT_THRESHOLD,
    Moments,
    ReferenceInfo,
    ReferenceResult,
    convergence_diagnostics,
    flatten_samples,
    reference_moments,
    run_inference_data,
    summarize,
    warn_if_not_converged,
)

CHAINS, DRAWS = 4, 500


def _mixed(seed=0):
    """Independent standard-normal chains: converged by construction."""
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(size=(CHAINS, DRAWS, 2)), "b": rng.normal(size=(CHAINS, DRAWS))}


def _info(divergent=None):
    is_divergent = np.zeros((CHAINS, DRAWS), bool) if divergent is None else divergent
    return ReferenceInfo(
        step_size=jnp.full(CHAINS, 0.5),
        inverse_mass_matrix=jnp.ones((CHAINS, 3)),
        is_divergent=jnp.asarray(is_divergent),
        acceptance_rate=jnp.full((CHAINS, DRAWS), 0.8),
        num_integration_steps=jnp.full((CHAINS, DRAWS), 7),
        tree_depth=jnp.full((CHAINS, DRAWS), 3),
        logdensity=jnp.zeros((CHAINS, DRAWS)),
        last_position={"w": jnp.zeros((CHAINS, 2)), "b": jnp.zeros(CHAINS)},
    )


def test_diagnostics_of_mixed_chains():
    rhat, ess = convergence_diagnostics(_mixed())
    assert rhat["w"].shape == ess["w"].shape == (2,)
    assert rhat["b"].shape == ess["b"].shape == ()
    # 2000 independent draws: R-hat within 1% of 1 and an ESS near the number of draws.
    for site in ("w", "b"):
        assert np.all(np.abs(rhat[site] - 1) < 0.01), rhat[site]
        assert np.all(ess[site] > 0.5 * CHAINS * DRAWS), ess[site]


def test_rhat_is_rank_normalized_and_sees_a_chain_with_another_scale():
    # Vehtari et al. (2021): chains with one location but different scales pass classic split
    # R-hat (between-chain variance of the means ~ 0) and fail the folded rank-normalized one.
    from numpyro.diagnostics import split_gelman_rubin

    samples = _mixed(1)
    samples["b"] = samples["b"] * np.array([1.0, 1.0, 1.0, 3.0])[:, None]
    classic = float(split_gelman_rubin(samples["b"]))
    rhat, _ = convergence_diagnostics(samples)
    assert classic < RHAT_THRESHOLD < float(rhat["b"]), (classic, rhat["b"])
    assert np.all(rhat["w"] < RHAT_THRESHOLD)


def test_summary_flags_high_rhat():
    samples = _mixed()
    samples["b"] = samples["b"] + np.arange(CHAINS)[:, None]  # chains centred apart
    with pytest.warns(RuntimeWarning, match=r"R-hat \(rank-normalized\) of site 'b' is \d+\.\d+ > 1\.01"):
        result = summarize(samples, _info())
    assert float(result.rhat["b"]) > RHAT_THRESHOLD
    assert np.all(result.rhat["w"] < RHAT_THRESHOLD)


def test_summary_is_quiet_for_mixed_chains():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = summarize(_mixed(), _info())
    assert isinstance(result, ReferenceResult)
    assert result.num_divergent == 0


def test_warnings_count_divergences_and_ignore_nan_rhat():
    divergent = np.zeros((CHAINS, DRAWS), bool)
    divergent[1, [3, 9]] = True
    rhat = {"w": np.array([1.0, 1.001]), "constant": np.array(np.nan)}
    with pytest.warns(RuntimeWarning, match=r"NUTS had 2 divergent transitions .*of 2000"):
        assert warn_if_not_converged(rhat, divergent) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_not_converged(rhat, np.zeros((CHAINS, DRAWS), bool)) == 0


def test_warnings_point_at_the_callers_caller():
    samples = _mixed()
    samples["b"] = samples["b"] + np.arange(CHAINS)[:, None]

    def sample():  # stands for ReferenceSampler.sample
        return summarize(samples, _info())

    with pytest.warns(RuntimeWarning) as record:
        line = inspect.currentframe().f_lineno + 1
        sample()  # the warning names this line, as reference_posterior's caller sees it
    assert (record[0].filename, record[0].lineno) == (__file__, line)


def test_inference_data_layout():
    samples = _mixed()
    idata = run_inference_data(samples, _info())
    assert idata["posterior"]["w"].shape == (CHAINS, DRAWS, 2)
    assert idata["posterior"]["b"].shape == (CHAINS, DRAWS)
    for stat in ("diverging", "acceptance_rate", "n_steps", "tree_depth", "lp", "step_size"):
        assert idata["sample_stats"][stat].shape == (CHAINS, DRAWS), stat
    np.testing.assert_allclose(idata["posterior"]["w"].values, samples["w"])
    np.testing.assert_allclose(idata["sample_stats"]["step_size"].values, 0.5)


def test_flatten_and_moments():
    samples = _mixed()
    flat = flatten_samples(samples)
    assert flat["w"].shape == (CHAINS * DRAWS, 2) and flat["b"].shape == (CHAINS * DRAWS,)
    np.testing.assert_array_equal(flat["w"][DRAWS : 2 * DRAWS], samples["w"][1])
    moments = reference_moments(samples)
    assert isinstance(moments, Moments)
    np.testing.assert_allclose(moments.mean["w"], samples["w"].reshape(-1, 2).mean(0), rtol=1e-5)
    np.testing.assert_allclose(moments.sd["b"], samples["b"].std(ddof=1), rtol=1e-5)
