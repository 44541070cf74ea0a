"""Throughput on one device and data-parallel over every device JAX finds.

Four workloads on the linear regression with known noise (``d = 8`` covariates plus an
intercept, 100 observations per data set), each timed after a first call that compiles, the
faster of ``--repeats`` warm calls, every call ended by :func:`jax.block_until_ready`:

- **simulations/s**: ``--batch`` data sets from the prior predictive in one compiled call;
- **training steps/s**: the training kernel ``fit`` runs, of an
  :class:`~amortized_ppl.AutoAmortizedMultivariateNormal`, ``--steps`` steps of ``--batch`` data
  sets scanned in one compiled call;
- **posterior draws/s**: ``sample_posterior`` on ``--batch`` data sets at once, 1,000 draws each;
- **NUTS seconds per data set**: :func:`~amortized_ppl.reference_posterior`, 4 chains;
- **NUTS seconds per data set, batched**: :func:`~amortized_ppl.reference.reference_posteriors`
  on ``--nuts-datasets`` data sets in one vectorized program, 4 chains each.

Each runs twice: on one device (``mesh=None``), then with the batch (the chains; the NUTS data
sets) split over a mesh of all devices (``mesh=data_mesh()``), and the ratio is reported. The same script runs
unchanged on a GPU, several GPUs, or the CPU with forced host devices::

    python benchmarks/bench_devices.py                       # whatever devices JAX sees
    XLA_FLAGS=--xla_force_host_platform_device_count=4 python benchmarks/bench_devices.py \
        --out benchmarks/results/devices_cpu4.json            # 4 devices sharing this CPU

Forced host devices share the same cores, so on a CPU the ratio measures the overhead of the
sharded program (partitioning, collectives), never a speed-up.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from amortized_ppl import AutoAmortizedMultivariateNormal, reference_posterior  # noqa: E402
from amortized_ppl.losses import get_loss_fn  # noqa: E402
from amortized_ppl.models.linear_regression import design_fn, model_known_noise  # noqa: E402
from amortized_ppl.reference import reference_posteriors  # noqa: E402
from amortized_ppl.results_file import run_environment, write_results  # noqa: E402
from amortized_ppl.sharding import (  # noqa: E402
    constrain_batch,
    data_mesh,
    replicate,
    shard_batch,
    sharded_simulator,
)
from amortized_ppl.train import build_train_kernel, default_optimizer  # noqa: E402  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "devices.json"
NUM_OBS = 100
DRAWS = 1000


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch", type=int, default=256,
                        help="data sets per simulation, training step and posterior call")
    parser.add_argument("--steps", type=int, default=100, help="training steps timed")
    parser.add_argument("--repeats", type=int, default=3, help="warm calls; the fastest counts")
    parser.add_argument("--nuts-samples", type=int, default=500,
                        help="NUTS warm-up and sampling steps per chain")
    parser.add_argument("--nuts-datasets", type=int, default=8,
                        help="data sets of the batched NUTS run (a multiple of the devices)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def _best(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(first call's seconds, compilation included; fastest warm call's seconds)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, min(times)


def measure(key, mesh, args) -> dict:
    """The four workloads with ``mesh`` (``None``: one device)."""
    sim_key, fit_key, post_key, nuts_key = jax.random.split(key, 4)
    guide = AutoAmortizedMultivariateNormal(model_known_noise, hidden_size=32, summary_size=32)
    guide.setup(fit_key, design_fn, NUM_OBS)
    simulator = guide.problem.simulator(design_fn, NUM_OBS)
    simulate = jax.jit(lambda k: constrain_batch(simulator(k, args.batch), mesh, args.batch))
    out = {}

    first, warm = _best(lambda: simulate(sim_key), args.repeats)
    out["simulations_per_s"] = args.batch / warm

    # fit's kernel (the same one fit runs, with fit's sharding), its steps scanned in one
    # compiled call, so that warm calls time the steps alone.
    engine_params, static = eqx.partition(guide.engine(guide.init_params()),
                                          eqx.is_inexact_array)
    init, step = build_train_kernel(
        guide.problem, static, get_loss_fn("forward_kl"),
        default_optimizer(1e-3, args.steps), simulate=sharded_simulator(simulator, mesh),
        batch_size=args.batch)
    state = replicate(init(engine_params), mesh)
    keys = jax.random.split(fit_key, args.steps)
    run = jax.jit(lambda s: jax.lax.scan(lambda c, k: step(k, c), s, keys)[0])
    first, warm = _best(lambda: run(state), args.repeats)
    out["train_steps_per_s"] = args.steps / warm
    out["train_compile_s"] = first - warm
    params = {guide.param_name: run(state).params}

    batch = simulate(jax.random.fold_in(sim_key, 1))
    data = shard_batch({"x": batch.arguments["x"], "y": batch.arguments["y"]}, mesh)
    first, warm = _best(lambda: guide.sample_posterior(post_key, params, sample_shape=(DRAWS,),
                                                       **data), args.repeats)
    out["posterior_draws_per_s"] = args.batch * DRAWS / warm
    out["posterior_compile_s"] = first - warm

    x, y = np.asarray(batch.arguments["x"][0]), np.asarray(batch.arguments["y"][0])
    chains = 4 if mesh is None else max(4, mesh.devices.size)
    first, warm = _best(lambda: reference_posterior(
        nuts_key, model_known_noise, x, y=y, num_chains=chains, num_warmup=args.nuts_samples,
        num_samples=args.nuts_samples, progress=False, mesh=mesh).samples, 1)
    out["nuts_s_per_dataset"] = warm
    out["nuts_chains"] = chains

    xs = np.asarray(batch.arguments["x"][:args.nuts_datasets])
    ys = np.asarray(batch.arguments["y"][:args.nuts_datasets])
    first, warm = _best(lambda: [r.samples for r in reference_posteriors(
        nuts_key, model_known_noise, xs, y=ys, num_chains=4, num_warmup=args.nuts_samples,
        num_samples=args.nuts_samples, mesh=mesh)], 1)
    out["nuts_batched_s_per_dataset"] = warm / args.nuts_datasets
    out["nuts_batched_compile_s"] = first - warm
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    key = jax.random.key(args.seed)
    mesh = data_mesh()
    devices = mesh.devices.size
    if args.batch % devices or args.nuts_datasets % devices or args.nuts_datasets > args.batch:
        raise SystemExit(f"--batch {args.batch} and --nuts-datasets {args.nuts_datasets} must "
                         f"split over {devices} devices (and --nuts-datasets <= --batch).")
    results = {"benchmark": "devices", "command": " ".join(["python", *sys.argv]),
               "environment": run_environment(),
               "config": {"batch": args.batch, "steps": args.steps, "repeats": args.repeats,
                          "nuts_samples": args.nuts_samples,
                          "nuts_datasets": args.nuts_datasets, "num_obs": NUM_OBS,
                          "draws": DRAWS, "seed": args.seed}}
    one = measure(key, None, args)
    print(f"one device: {one}", flush=True)
    results["one_device"] = one
    if devices > 1:
        sharded = measure(key, mesh, args)
        print(f"{devices} devices: {sharded}", flush=True)
        results["all_devices"] = sharded
        results["ratio_all_over_one"] = {
            name: sharded[name] / one[name]
            for name in ("simulations_per_s", "train_steps_per_s", "posterior_draws_per_s")}
        for name in ("nuts_s_per_dataset", "nuts_batched_s_per_dataset"):
            results["ratio_all_over_one"][name] = sharded[name] / one[name]
    write_results(args.out, results)
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
