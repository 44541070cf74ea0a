"""Run the library's sharded programs on one device and on every device JAX sees, and print
how far apart the results are, as JSON. ``tests/sharding/test_sharding.py`` runs it in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (the device count is
fixed when JAX starts, so it cannot be changed inside the test process)."""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from amortized_ppl import AutoAmortizedNormal, fit, reference_posterior
from amortized_ppl.diagnostics.sbc import sbc
from amortized_ppl.diffusion import (
    NetworkConfig,
    RTBConfig,
    brownian_bridge_schedule,
    build_rtb,
    fit_rtb,
    gmm_exact_drift,
    joint_samples,
)
from amortized_ppl.diffusion.kl_rl import build_kl_rl_kernel
from amortized_ppl.iterative import fit_iterative
from amortized_ppl.models.inverse_problems import (
    conditional_log_likelihood,
    gaussian_mixture,
    joint_sampler,
    linear_problem,
)
from amortized_ppl.reference import reference_posteriors
from amortized_ppl.sharding import data_mesh, shard_batch
from tests.registry import CASES, ENGINES, TINY

POISSON = CASES[2]


def _gap(a, b) -> float:
    """Largest absolute difference between two pytrees of arrays."""
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _scale(a) -> float:
    return max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(a))


def main() -> int:
    devices = len(jax.devices())
    mesh = data_mesh(devices)
    out = {"devices": devices}

    # Training: the same key on one device and data-parallel over all of them.
    runs = {}
    for name, m in (("one", None), ("all", mesh)):
        guide = AutoAmortizedNormal(POISSON.model, **TINY)
        result = fit(jax.random.key(0), guide, design_fn=POISSON.design_fn,
                     num_obs=POISSON.num_obs, num_steps=20, batch_size=16,
                     optimizer=optax.adam(3e-3), chunk_size=10, progress=False, mesh=m)
        runs[name] = (guide, result)
    (guide, one), (_, sharded) = runs["one"], runs["all"]
    leaf = jax.tree.leaves(sharded.state.params)[0]
    out["train"] = {"param_gap": _gap(one.params, sharded.params),
                    "param_scale": _scale(one.params),
                    "loss_gap": float(np.max(np.abs(one.losses - sharded.losses))),
                    "params_replicated": bool(leaf.sharding.is_fully_replicated),
                    "params_devices": len(leaf.sharding.device_set)}

    # The iterative engine's training: each step's simulated data sets split over the devices.
    iterative = []
    for m in (None, mesh):
        it_guide = ENGINES["iterative"](POISSON)
        iterative.append(fit_iterative(jax.random.key(9), it_guide, design_fn=POISSON.design_fn,
                                       sizes=(12,), batch_size=4, num_iterations=6,
                                       datasets_per_step=8, optimizer=optax.adam(3e-3),
                                       progress=False, mesh=m))
    leaf = jax.tree.leaves(iterative[1].state.params)[0]
    out["train_iterative"] = {"param_gap": _gap(iterative[0].params, iterative[1].params),
                              "param_scale": _scale(iterative[0].params),
                              "loss_gap": float(np.max(np.abs(iterative[0].history
                                                              - iterative[1].history))),
                              "loss_scale": float(np.max(np.abs(iterative[0].history))),
                              "params_devices": len(leaf.sharding.device_set)}

    # Posteriors of a batch of data sets, the batch split over the devices.
    batch = guide.problem.simulator()(jax.random.key(1), 8)
    data = {"y": batch.arguments["y"], "data_mask": np.asarray(batch.mask)}
    draws_one = guide.sample_posterior(jax.random.key(2), one.params, num_obs=None,
                                       sample_shape=(64,), **data)
    placed = shard_batch(data, mesh)
    draws_all = guide.sample_posterior(jax.random.key(2), one.params, num_obs=None,
                                       sample_shape=(64,), **placed)
    out["posterior"] = {"gap": _gap(draws_one, draws_all), "scale": _scale(draws_one),
                        "input_devices": len(placed["y"].sharding.device_set)}

    # SBC: the chunk's data sets split over the devices.
    ranks = [sbc(jax.random.key(3), guide, one.params, num_datasets=64, num_draws=20,
                 chunk_size=32, progress=False, mesh=m) for m in (None, mesh)]
    out["sbc"] = {"rank_mismatches": int(np.sum(ranks[0].ranks != ranks[1].ranks)),
                  "ranks": int(ranks[0].ranks.size)}

    # NUTS: the chains split over the devices. Short chains: a float rounding difference of
    # 1e-7 (another vectorization width) flips an accept or U-turn decision sooner or later,
    # after which the chains differ (in value, not in distribution).
    y = jnp.array([1.0, 3.0, 2.0, 0.0, 4.0])
    refs = [reference_posterior(jax.random.key(4), POISSON.model, y=y, num_chains=devices,
                                num_warmup=5, num_samples=10, progress=False, mesh=m)
            for m in (None, mesh)]
    out["nuts"] = {"gap": _gap(refs[0].samples, refs[1].samples),
                   "scale": _scale(refs[0].samples)}

    # NUTS over data sets: the data sets split over the devices, two chains each.
    ys = jnp.stack([y + i for i in range(devices)])
    batches = [reference_posteriors(jax.random.key(8), POISSON.model, y=ys, num_chains=2,
                                    num_warmup=5, num_samples=10, mesh=m) for m in (None, mesh)]
    out["nuts_datasets"] = {"gap": max(_gap(a.samples, b.samples) for a, b in zip(*batches)),
                            "scale": max(_scale(a.samples) for a in batches[0]),
                            "count": len(batches[1])}

    # RTB and KL-RL, amortized: trajectories (and their observations) split over the devices.
    schedule = brownian_bridge_schedule(10, 1, sigma=2.0)
    prior = gaussian_mixture(jnp.ones(1), jnp.zeros((1, 1)), jnp.ones((1, 1, 1)))
    problem = linear_problem(jax.random.key(5), prior, jnp.eye(1), noise_scale=0.7)
    config = RTBConfig(batch_size=16, replay_size=8, backtrack_size=4, backtrack_steps=3,
                       explore_steps=5, learning_rate=3e-3, log_z_learning_rate=1e-2)
    out["rtb"] = {}
    for name, kernel in (("rtb", None), ("kl_rl", build_kl_rl_kernel)):
        fits = []
        for m in (None, mesh):
            extra = {} if kernel is None else {"kernel": kernel}
            algorithm = build_rtb(jax.random.key(6), gmm_exact_drift(prior, schedule), schedule,
                                  conditional_log_likelihood(problem), config=config,
                                  network=NetworkConfig(width=8),
                                  source=joint_samples(joint_sampler(problem)), mesh=m, **extra)
            fits.append(fit_rtb(jax.random.key(7), algorithm, num_steps=10, chunk_size=5,
                                progress=False))
        leaf = jax.tree.leaves(fits[1].state.params)[0]
        out["rtb"][name] = {"loss_gap": float(np.max(np.abs(fits[0].history - fits[1].history))),
                            "loss_scale": float(np.max(np.abs(fits[0].history))),
                            "param_gap": _gap(fits[0].state.params, fits[1].state.params),
                            "param_scale": _scale(fits[0].state.params),
                            "params_devices": len(leaf.sharding.device_set)}

    # A batch that does not split evenly is refused, naming the argument.
    errors = []
    for call in (lambda: fit(jax.random.key(0), AutoAmortizedNormal(POISSON.model, **TINY),
                             design_fn=POISSON.design_fn, num_obs=POISSON.num_obs, num_steps=1,
                             batch_size=devices + 1, progress=False, mesh=mesh),
                 lambda: shard_batch({"y": jnp.zeros((devices + 1, 3))}, mesh),
                 lambda: build_rtb(jax.random.key(6), gmm_exact_drift(prior, schedule), schedule,
                                   conditional_log_likelihood(problem),
                                   config=config._replace(batch_size=devices + 1),
                                   source=joint_samples(joint_sampler(problem)), mesh=mesh)):
        try:
            call()
        except ValueError as error:
            errors.append(str(error))
    out["errors"] = errors
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
