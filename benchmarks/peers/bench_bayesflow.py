"""BayesFlow 2.x on the network-alone problem: the peer of ``bench_network_alone.py``.

Known-noise linear regression (d = 8 covariates plus an intercept, N from 10 to 200, noise
SD 0.5, prior N(0, 1) on every coefficient), trained with BayesFlow's standard recipe for this
task and scored on the same 100 held-out data sets with the same metrics as
``benchmarks/bench_network_alone.py`` (whose ``_held_out`` and ``_evaluate`` this script calls):

- online simulation: a prior, a likelihood and a meta function that draws one N per batch
  (BayesFlow's idiom for varying set sizes: every set in a batch has the same N, so no padding);
- a ``SetTransformer`` summary network over the rows ``[x, y]`` (summary size 32, like our
  ``SetEncoder``), with ``sqrt(N)`` as a direct condition of the inference network (our one-shot
  engine conditions on ``log N`` the same way);
- a ``CouplingFlow`` inference network with BayesFlow's defaults (6 affine coupling layers),
  trained by ``BasicWorkflow.fit_online`` (Adam with clipping, cosine decay over ``--steps``)
  until a Keras callback finds the wall-time budget ``--seconds`` spent;
- 2000 posterior draws per held-out data set, each at its own N (only its first N rows).

Keras backend (``--backend``, set as ``KERAS_BACKEND`` before keras or bayesflow is imported):

- ``torch`` (the default): Keras runs the training step eagerly, so a new N costs nothing and
  N is drawn uniformly from 10..200 for every batch, as in ``bench_network_alone.py``. Torch is
  given every core (``torch.set_num_threads(os.cpu_count())``), with ``OMP_WAIT_POLICY=PASSIVE``
  unless set otherwise: on a 2-core machine busy with another job, spinning OpenMP threads made
  each training step many times slower than sleeping ones.
- ``jax``: every new N is a new input shape, so Keras traces and compiles the training step
  again (seconds each on a 2-core CPU), and with N uniform in 10..200 most of a 300 s budget goes
  to compiling. Under ``--backend jax`` each batch's N is therefore drawn from a fixed grid of 8
  sizes, geometric from 10 to 200 and rounded (``N_GRID``: 10, 15, 24, 36, 55, 85, 130, 200;
  ``n_grid`` in the results), which bounds the compilations at 8. The held-out sets keep their
  own N either way. BayesFlow's ``SetTransformer`` cannot take padded sets instead: its pooling
  layer has no mask.

``distinct_set_sizes`` in the results says how many different N training drew.

BayesFlow runs on Keras, in its own environment (bayesflow 2.0.12 wants Python 3.11 to 3.13;
bayesflow 2.1 needs Python >= 3.12). The ``peers`` extra pins the CPU torch wheel::

    python3.11 -m venv .peers && .peers/bin/pip install -e ".[peers]"
    # peers = ["bayesflow>=2.0,<2.1", "keras>=3.12", "torch==2.13.0"]
    .peers/bin/python benchmarks/peers/bench_bayesflow.py [--backend torch|jax] [--seconds 300]
        [--steps 10000] [--quick] [--out benchmarks/results/network_alone_bayesflow.json]
"""

from __future__ import annotations

import argparse
import os
import sys

BACKENDS = ("torch", "jax")


def _backend_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="Keras backend for BayesFlow (default: torch)")


def _backend_from(argv) -> str:
    """``--backend`` from the command line, read before keras or bayesflow is imported."""
    parser = argparse.ArgumentParser(add_help=False)
    _backend_option(parser)
    return parser.parse_known_args(argv)[0].backend


os.environ["KERAS_BACKEND"] = _backend_from(sys.argv[1:])  # before keras or bayesflow
os.environ.setdefault("TQDM_DISABLE", "1")  # BayesFlow's per-call progress bars
# Torch's OpenMP threads sleep, not spin, between parallel regions (read when torch loads): on
# a shared machine a spinning thread whose partner lost its core made every step far slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import importlib.util  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import bayesflow as bf  # noqa: E402
import jax  # noqa: E402  (our own model and metrics are JAX whatever Keras runs on)
import keras  # noqa: E402
import numpy as np  # noqa: E402

if keras.backend.backend() == "torch":
    import torch

    torch.set_num_threads(os.cpu_count())  # both cores of a 2-core machine, not torch's guess

from amortized_ppl import inspect_problem  # noqa: E402
from amortized_ppl.models.linear_regression import (  # noqa: E402
    NOISE_SCALE,
    design_fn,
    model_known_noise,
)
from amortized_ppl.results_file import write_results  # noqa: E402

NUM_FEATURES = 8
NUM_DRAWS = 2000
# Set sizes under --backend jax: 8, geometric from 10 to 200, rounded (one compile each).
N_GRID = tuple(int(n) for n in np.unique(np.rint(np.geomspace(10, 200, 8))))
RESULTS = Path(__file__).parents[1] / "results"


def _load_reference():
    """Import ``bench_network_alone.py`` (its held-out sets and its metrics) from its path."""
    path = Path(__file__).parents[1] / "bench_network_alone.py"
    spec = importlib.util.spec_from_file_location("bench_network_alone", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _simulator(rng: np.random.Generator, num_obs: tuple[int, int], drawn: list[int],
               n_grid: tuple[int, ...] | None = None):
    """Online simulator: one N per batch (meta), then per data set ``w, b`` and ``x, y``.

    N is uniform in ``num_obs`` (inclusive), or uniform over ``n_grid`` when given. Every N
    drawn is appended to ``drawn``: under JAX each new N is a new shape, so one more
    compilation of the training step.
    """

    def meta():
        if n_grid is None:
            drawn.append(int(rng.integers(num_obs[0], num_obs[1] + 1)))
        else:
            drawn.append(int(rng.choice(n_grid)))
        return {"n": drawn[-1]}

    def prior():
        return {"w": rng.normal(size=NUM_FEATURES), "b": rng.normal()}

    def likelihood(w, b, n):
        x = rng.normal(size=(n, NUM_FEATURES))
        return {"x": x, "y": x @ w + b + NOISE_SCALE * rng.normal(size=n)}

    return bf.make_simulator([prior, likelihood], meta_fn=meta)


def _adapter() -> bf.Adapter:
    """Rows ``[x, y]`` to the summary net, ``sqrt(N)`` to the flow, ``[w, b]`` inferred."""
    return (
        bf.Adapter()
        .broadcast("n", to="y")
        .sqrt("n")
        .as_set(["x", "y"])
        .convert_dtype("float64", "float32")
        .concatenate(["w", "b"], into="inference_variables")
        .concatenate(["x", "y"], into="summary_variables")
        .rename("n", "inference_conditions")
    )


class WallClockBudget(keras.callbacks.Callback):
    """Stop training once ``seconds`` have passed since it began; count the steps done."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.steps = 0
        self.epochs = 0

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if time.perf_counter() - self.start >= self.seconds:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self.epochs = epoch + 1


class BayesFlowDraws:
    """Posterior draws in the shape ``bench_network_alone._evaluate`` asks of a guide."""

    def __init__(self, workflow: bf.BasicWorkflow):
        self.workflow = workflow

    def sample_posterior(self, key, params, x, y, *, data_mask, sample_shape):
        (num_draws,) = sample_shape
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        x, y, sizes = np.asarray(x), np.asarray(y), np.asarray(data_mask).sum(-1)
        ws, bs = [], []
        for i, n in enumerate(sizes):
            conditions = {"x": x[i : i + 1, :n], "y": y[i : i + 1, :n], "n": np.array(n)}
            draws = self.workflow.sample(num_samples=num_draws, conditions=conditions,
                                         seed=seed + i)
            ws.append(draws["w"][0])
            bs.append(draws["b"][0, :, 0])
        return {"w": np.stack(ws), "b": np.stack(bs)}


def _workflow(simulator, learning_rate: float) -> bf.BasicWorkflow:
    return bf.BasicWorkflow(
        simulator=simulator,
        adapter=_adapter(),
        summary_network=bf.networks.SetTransformer(summary_dim=32),
        inference_network=bf.networks.CouplingFlow(),
        initial_learning_rate=learning_rate,
    )


def _device() -> str:
    """Where Keras trained: the torch device, or JAX's first device."""
    if keras.backend.backend() == "torch":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return f"torch {device} ({torch.get_num_threads()} threads)"
    return str(jax.devices()[0])


def _environment() -> dict:
    env = {"python": platform.python_version(), "keras_backend": keras.backend.backend(),
           "jax": jax.__version__, "keras": keras.__version__, "bayesflow": bf.__version__,
           "cpu_count": os.cpu_count()}
    if keras.backend.backend() == "torch":
        env |= {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    return env


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="training budget")
    parser.add_argument("--steps", type=int, default=10_000,
                        help="optimizer steps planned (the learning-rate schedule's length)")
    parser.add_argument("--batches-per-epoch", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64, help="as our fit's default")
    parser.add_argument("--learning-rate", type=float, default=5e-4, help="BayesFlow's default")
    parser.add_argument("--num-test", type=int, default=100)
    parser.add_argument("--quick", action="store_true",
                        help="5 seconds of training, 10 held-out data sets (a smoke test)")
    parser.add_argument("--out", default=str(RESULTS / "network_alone_bayesflow.json"))
    _backend_option(parser)
    args = parser.parse_args(argv)
    if args.backend != keras.backend.backend():
        parser.error(f"keras was imported with backend {keras.backend.backend()!r}: pass "
                     f"--backend on the command line to run {args.backend!r}")
    if args.quick:
        args.seconds, args.num_test = 5.0, 10
    reference = _load_reference()
    problem = inspect_problem(jax.random.key(0), model_known_noise, design_fn,
                              reference.NUM_OBS)
    sim, mask = reference._held_out(jax.random.key(1), problem, args.num_test)

    logging.getLogger("bayesflow").setLevel(logging.WARNING)
    keras.utils.set_random_seed(2)
    drawn = []
    n_grid = N_GRID if args.backend == "jax" else None
    workflow = _workflow(_simulator(np.random.default_rng(3), reference.NUM_OBS, drawn, n_grid),
                         args.learning_rate)
    budget = WallClockBudget(args.seconds)
    start = time.perf_counter()
    workflow.fit_online(epochs=max(1, args.steps // args.batches_per_epoch),
                        num_batches_per_epoch=args.batches_per_epoch,
                        batch_size=args.batch_size, callbacks=[budget],
                        verbose=0 if args.quick else 2)
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    metrics = reference._evaluate(jax.random.key(4), BayesFlowDraws(workflow), None, sim, mask)
    results = {
        "command": "python benchmarks/peers/bench_bayesflow.py " + " ".join(argv or sys.argv[1:]),
        "device": _device(),
        "environment": _environment(),
        "backend": args.backend,
        "n_grid": list(n_grid) if n_grid else None,
        "seconds_budget": args.seconds,
        "train_seconds": train_seconds,
        "steps": budget.steps,
        "epochs": budget.epochs,
        "distinct_set_sizes": len(set(drawn)),
        "batch_size": args.batch_size,
        "num_test": args.num_test,
        "eval_seconds": time.perf_counter() - start,
        **metrics,
    }
    print(json.dumps(results, indent=2), flush=True)
    write_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
