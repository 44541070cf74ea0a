"""Data-parallel training over several processes (hosts) with ``jax.distributed``.

Every process runs this same script; JAX joins them into one set of devices, and ``fit(...,
mesh=data_mesh())`` splits each training step's simulated batch over all of them (the
parameters are replicated; the compiler all-reduces the gradients). On a cluster, start one
process per host with the coordinator's address; the example below runs two processes on this
machine, each with two CPU devices, so it works anywhere::

    python examples/multi_host.py --num-processes 2 --process-id 0 &
    python examples/multi_host.py --num-processes 2 --process-id 1

Each process prints the same trained parameters' checksum. On GPU hosts, leave out
``--cpu-devices``: each process then sees its host's GPUs. Under SLURM or Open MPI,
``jax.distributed.initialize()`` without arguments reads the process layout from the scheduler.
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coordinator", default="localhost:12355",
                        help="host:port of process 0, reachable by every process")
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--cpu-devices", type=int, default=2,
                        help="CPU devices per process (0: the host's accelerators)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32,
                        help="simulated data sets per step, over all devices (a multiple of "
                             "their number)")
    args = parser.parse_args()
    if args.cpu_devices:
        # Before JAX starts: CPU devices per process, and CPU collectives across processes.
        os.environ["XLA_FLAGS"] = " ".join(
            [f"--xla_force_host_platform_device_count={args.cpu_devices}",
             os.environ.get("XLA_FLAGS", "")]).strip()
        os.environ["JAX_PLATFORMS"] = "cpu"

    import jax

    if args.cpu_devices:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes, process_id=args.process_id)

    import jax.numpy as jnp

    from amortized_ppl import AutoAmortizedMultivariateNormal, fit
    from amortized_ppl.models.linear_regression import design_fn, model_known_noise
    from amortized_ppl.sharding import data_mesh

    mesh = data_mesh()  # every process's devices
    guide = AutoAmortizedMultivariateNormal(model_known_noise, hidden_size=16, summary_size=16)
    # The same key in every process: the same simulations, split over the devices.
    result = fit(jax.random.key(0), guide, design_fn=design_fn, num_obs=(10, 50),
                 num_steps=args.steps, batch_size=args.batch_size, progress=False,
                 mesh=mesh)
    checksum = sum(float(jnp.sum(leaf)) for leaf in jax.tree.leaves(result.params))
    print(f"process {jax.process_index()} of {jax.process_count()}: {jax.device_count()} "
          f"devices, final loss {float(result.losses[-1]):.4f}, parameter checksum "
          f"{checksum:.6f}", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
