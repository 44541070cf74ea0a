"""BayesFlow 2.x's NPE on the sbibm tasks: a peer of ``bench_sbibm.py`` beside ``bench_sbi.py``.

For each task (``--tasks``) and simulation budget (``--budgets``): the same simulations as
``bench_sbi.py`` and our guide use (the task's NumPyro model, simulated by JAX under
``jax.random.fold_in(key, 1)``; ``x`` flattened row by row as sbibm gives it), handed to
BayesFlow 2.0's standard offline recipe for data of a fixed size:

- no summary network: the flat ``x`` is the ``inference_conditions`` as it is, ``theta`` the
  ``inference_variables`` (an :class:`bayesflow.Adapter` that renames them and casts to float32);
- standardization of both (``BasicWorkflow(standardize="all")``: running means and SDs learned
  during training, undone on the draws). In BayesFlow 2.0 this lives in the approximator, not the
  adapter: the adapter's own ``standardize`` transform takes fixed means and SDs;
- a ``CouplingFlow`` with BayesFlow's defaults (6 affine dual-coupling layers with ActNorm and
  random permutations, residual MLP subnets of 256 x 256, mish, dropout 0.05);
- ``BasicWorkflow.fit_offline`` for ``--epochs`` (200, as ``bench_sbibm.py``) passes over the
  training simulations on batches of ``--batch-size`` (200, sbi's default), with BayesFlow's
  default optimizer for offline training: AdamW (weight decay 5e-3, gradient norm clipped at
  1.5), its learning rate warmed up from 10% of ``--learning-rate`` (5e-4, BayesFlow's default)
  over the first 5% of the steps and then cosine-decayed to zero. 10% of the simulations (the
  last ones, as ``simulation_budget`` splits ours) are held out as ``validation_data``; BayesFlow
  only reports their loss (``best_held_out_loss``, ``best_epoch``, ``final_held_out_loss``) and
  keeps the last epoch's weights, where ours and sbi keep the best held-out ones. Training also
  stops after ``--max-train-seconds`` (as ours does; ``reason`` says which ended it).

Then, on each of the task's observations (``--num-observations``), ``--num-draws`` (10,000)
posterior draws, scored by :func:`~amortized_ppl.diagnostics.c2st.c2st_sbibm` against the same
cached references as ``bench_sbibm.py`` (``bench_sbibm.reference``); non-finite draws score 1 and
are flagged (``all_finite``), as ``bench_sbibm.py`` does.

Bounded priors (two_moons, slcp, slcp_distractors, gaussian_mixture, gaussian_linear_uniform):
BayesFlow has no support-aware sampling, so its draws are scored as they come, and
``outside_prior`` reports the fraction of draws outside the prior's box (the box of
``bench_sbi.torch_prior``'s ``BoxUniform``, read from it). sbi instead rejects the draws outside
the support (as in sbibm's published runs), so on these tasks sbi's figures are of a truncated
posterior and BayesFlow's are not.

Of the options shared with ``bench_sbibm.py``, ``--patience``, ``--variants``,
``--psis-proposals``, ``--flow`` and ``--encoder`` are ours alone and are ignored here.

Keras backend: ``--backend`` (``torch`` by default), set before keras or bayesflow is imported,
with torch's threads and ``OMP_WAIT_POLICY=PASSIVE`` as ``bench_bayesflow.py`` sets them (this
script imports it first). Runs in the peers environment::

    python3.11 -m venv .peers && .peers/bin/pip install -e ".[peers]"
    .peers/bin/python benchmarks/peers/bench_bayesflow_sbibm.py --tasks two_moons \\
        --budgets 1000,10000
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))

# First: sets KERAS_BACKEND (from --backend), TQDM_DISABLE and OMP_WAIT_POLICY before keras,
# bayesflow or torch is imported, and gives torch every core.
import bench_bayesflow  # noqa: E402
import bench_sbibm  # noqa: E402
from bench_sbi import torch_prior  # noqa: E402

from amortized_ppl.diagnostics.c2st import c2st_sbibm  # noqa: E402
from amortized_ppl.models.sbibm import observation, simulate  # noqa: E402

bf, keras = bench_bayesflow.bf, bench_bayesflow.keras
VALIDATION_FRACTION = 0.1  # as ``simulation_budget``'s default, which ours trains under


def prior_box(task) -> tuple[np.ndarray, np.ndarray] | None:
    """``(low, high)`` of the task's prior if it is a box (``bench_sbi.torch_prior``'s
    ``BoxUniform``), else ``None``."""
    prior = torch_prior(task)
    if not hasattr(prior, "low"):
        return None
    return prior.low.numpy(), prior.high.numpy()


def outside_fraction(draws: np.ndarray, box) -> float | None:
    """The fraction of the draws with a coordinate outside ``box`` (``None`` with no box)."""
    if box is None:
        return None
    low, high = box
    return float(np.mean(np.any((draws < low) | (draws > high), axis=-1)))


def workflow(learning_rate: float) -> bf.BasicWorkflow:
    """BayesFlow's offline recipe for fixed-size data: no summary network, a default
    ``CouplingFlow`` on ``theta`` given the flat ``x``, both standardized."""
    adapter = (bf.Adapter()
               .convert_dtype("float64", "float32")
               .rename("theta", "inference_variables")
               .rename("x", "inference_conditions"))
    return bf.BasicWorkflow(adapter=adapter, inference_network=bf.networks.CouplingFlow(),
                            initial_learning_rate=learning_rate, standardize="all")


def train(key, task, budget: int, args):
    """The workflow fitted offline on ``budget`` simulations (the last 10% held out);
    ``(workflow, info)``."""
    theta, x = simulate(jax.random.fold_in(key, 1), task, budget)
    theta = np.asarray(theta, dtype=np.float32)
    x = np.asarray(x, dtype=np.float32).reshape(budget, -1)
    num_held_out = max(1, int(round(budget * VALIDATION_FRACTION)))
    split = budget - num_held_out
    keras.utils.set_random_seed(int(jax.random.randint(key, (), 0, 2**30)))
    flow = workflow(args.learning_rate)
    clock = bench_bayesflow.WallClockBudget(args.max_train_seconds)
    start = time.perf_counter()
    history = flow.fit_offline({"theta": theta[:split], "x": x[:split]}, epochs=args.epochs,
                               batch_size=args.batch_size, callbacks=[clock], verbose=0,
                               validation_data={"theta": theta[split:], "x": x[split:]})
    seconds = time.perf_counter() - start
    losses = history.history
    held_out = np.asarray(losses.get("val_loss", [np.nan]), dtype=float)
    info = {"seconds": seconds, "epochs": clock.epochs, "steps": clock.steps,
            "batch_size": args.batch_size, "num_train": split, "num_held_out": num_held_out,
            # A stop by the clock ends the epoch under way (counted in ``epochs``) early.
            "reason": ("epochs" if clock.steps >= args.epochs * -(-split // args.batch_size)
                       else "max_seconds"),
            "final_loss": float(losses["loss"][-1]),
            "final_held_out_loss": float(held_out[-1]),
            "best_held_out_loss": float(np.nanmin(held_out)),
            "best_epoch": int(np.nanargmin(held_out)) + 1}
    return flow, info


def run_bayesflow(key, task, budget: int, args) -> dict:
    flow, info = train(key, task, budget, args)
    print(f"[bayesflow {task.name} {budget}] trained {info['epochs']} epochs ({info['reason']}) "
          f"in {info['seconds']:.0f} s; held-out loss {info['final_held_out_loss']:.3f} "
          f"(best {info['best_held_out_loss']:.3f} at epoch {info['best_epoch']})", flush=True)
    box = prior_box(task)

    def score(index):
        _, x_obs = observation(task, index)
        ref = bench_sbibm.reference(task, index, args.num_draws, Path(args.cache_dir))
        seed = int(jax.random.randint(jax.random.fold_in(key, 200 + index), (), 0, 2**30))
        start = time.perf_counter()
        draws = flow.sample(num_samples=args.num_draws, seed=seed, conditions={
            "x": np.asarray(x_obs, dtype=np.float32).reshape(1, -1)})["theta"][0]
        sample_seconds = time.perf_counter() - start
        draws = np.asarray(draws)
        ok = bool(np.all(np.isfinite(draws)))
        # Non-finite draws score 1 (told apart always) and are flagged, never dropped.
        accuracy = (float(c2st_sbibm(jax.random.fold_in(key, 100 + index), draws, ref))
                    if ok else 1.0)
        return {"c2st": accuracy, "seconds": sample_seconds, "finite": ok,
                "outside_prior": outside_fraction(draws, box)}

    rows, failures = bench_sbibm.each_observation(task, args.num_observations, score)
    values = np.array([r["c2st"] for r in rows])
    npe = {"c2st_mean": float(values.mean()), "c2st_sd": float(values.std()),
           "c2st": values.tolist(),
           "seconds_per_observation": float(np.median([r["seconds"] for r in rows])),
           "seconds": [r["seconds"] for r in rows],
           "all_finite": all(r["finite"] for r in rows)}
    if box is not None:
        outside = [r["outside_prior"] for r in rows]
        npe.update(outside_prior=outside, outside_prior_mean=float(np.mean(outside)))
    print(f"[bayesflow {task.name} {budget}] C2ST {npe['c2st_mean']:.3f}"
          + (f", {npe['outside_prior_mean']:.2%} of draws outside the prior's box"
             if box is not None else ""), flush=True)
    return {**failures, "training": info, "npe": npe}


def main(argv=None) -> dict:
    parser = bench_sbibm.build_parser(__doc__.splitlines()[0], "sbibm_bayesflow.json")
    parser.add_argument("--learning-rate", type=float, default=5e-4,
                        help="the peak of BayesFlow's warm-up and cosine schedule (BayesFlow's "
                             "default) [5e-4]")
    bench_bayesflow._backend_option(parser)
    args = parser.parse_args(argv)
    if args.backend != keras.backend.backend():
        parser.error(f"keras was imported with backend {keras.backend.backend()!r}: pass "
                     f"--backend on the command line to run {args.backend!r}")
    tasks, budgets = bench_sbibm.parts(parser, args)
    logging.getLogger("bayesflow").setLevel(logging.WARNING)
    command = "python benchmarks/peers/bench_bayesflow_sbibm.py " + " ".join(
        argv or sys.argv[1:])
    results = {"device": bench_bayesflow._device(),
               "environment": {**bench_bayesflow._environment(),
                               "load_average_at_start": list(os.getloadavg())},
               "settings": {"num_observations": args.num_observations,
                            "num_draws": args.num_draws, "batch_size": args.batch_size,
                            "epochs": args.epochs, "max_train_seconds": args.max_train_seconds,
                            "validation_fraction": VALIDATION_FRACTION,
                            "learning_rate": args.learning_rate, "backend": args.backend,
                            "optimizer": "AdamW(weight_decay=5e-3, clipnorm=1.5), 5% linear "
                                         "warm-up from 10%, cosine decay to 0 (BayesFlow's "
                                         "offline default)",
                            "inference_network": "CouplingFlow() (BayesFlow's defaults)",
                            "summary_network": None, "standardize": "all",
                            "keeps": "last epoch's weights"}}
    return bench_sbibm.run_parts(args, results, command, tasks, budgets,
                                 lambda key, task, budget: run_bayesflow(key, task, budget, args))


if __name__ == "__main__":
    main()
