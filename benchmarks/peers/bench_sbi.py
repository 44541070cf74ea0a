"""sbi's NPE on the sbibm tasks, beside ours in the same process: the peer of ``bench_sbibm.py``.

For each task (``--tasks``) and simulation budget (``--budgets``): the same simulations our guide
would train on (the task's NumPyro model, simulated by JAX, ``theta`` and ``x`` as NumPy arrays;
``x`` flattened row by row as sbibm gives it), handed to sbi 0.27's ``NPE`` with a neural spline
flow (sbibm's NPE configuration) and sbi's training defaults as sbibm ran them (batches of 200,
10% held out, stop after 20 epochs without improvement); 10,000 posterior draws per observation
(sbi rejects draws outside a bounded prior's support, as in the published runs), scored by
:func:`~amortized_ppl.diagnostics.c2st.c2st_sbibm` against the same cached references as
``bench_sbibm.py``, and by sbi's own ``c2st`` on the same draws with its defaults
(``c2st_sbi_implementation``). Those defaults are not sbibm's test: sbi 0.27's ``c2st``
classifies with a random forest, not sbibm's MLP, so the two agree where the samples differ
in ways both classifiers see (two_moons: 0.690 against 0.689 at 10^3) and not always
elsewhere (gaussian_mixture: 0.697 against 0.656). The published figures are sbibm's MLP test.
With ``--with-ours`` the same process then runs ``bench_sbibm.py``'s
guide on the same task and budget, so training seconds are measured side by side.

sbi's ``PermutationInvariantEmbedding`` is not used: it miscounts set sizes when rows have
several columns and its scaling breaks on NaN padding (sbi 0.27); every task here has a fixed
number of rows, so sbibm's flat ``x`` needs no embedding.

Runs in the peers environment (the ``peers`` extra: torch's CPU wheel, sbi, BayesFlow)::

    python3.11 -m venv .peers && .peers/bin/pip install -e ".[peers]"
    .peers/bin/python benchmarks/peers/bench_sbi.py --tasks two_moons --budgets 1000,10000 \\
        --with-ours
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_sbibm  # noqa: E402

from amortized_ppl.diagnostics.c2st import c2st_sbibm  # noqa: E402
from amortized_ppl.models.sbibm import (  # noqa: E402
    bernoulli_glm,
    gaussian_linear,
    observation,
    simulate,
)


def torch_prior(task):
    """The task's prior as a torch distribution (sbi needs one)."""
    import torch
    from sbi.utils import BoxUniform

    bounds = {"gaussian_linear_uniform": 1.0, "gaussian_mixture": 10.0, "two_moons": 1.0,
              "slcp": 3.0, "slcp_distractors": 3.0}
    if task.name in bounds:
        bound = bounds[task.name]
        return BoxUniform(-bound * torch.ones(task.theta_dim), bound * torch.ones(task.theta_dim))
    if task.name == "gaussian_linear":
        return torch.distributions.MultivariateNormal(
            torch.zeros(task.theta_dim), gaussian_linear.VARIANCE * torch.eye(task.theta_dim))
    if task.name == "bernoulli_glm":
        precision = torch.as_tensor(np.asarray(bernoulli_glm.prior_precision()))
        return torch.distributions.MultivariateNormal(torch.zeros(task.theta_dim),
                                                      precision_matrix=precision)
    raise ValueError(f"No torch prior for task {task.name!r}.")


def run_sbi(key, task, budget: int, args) -> dict:
    import torch
    from sbi.inference import NPE
    from sbi.utils.metrics import c2st as sbi_c2st

    torch.manual_seed(int(jax.random.randint(key, (), 0, 2**30)))
    theta, x = simulate(jax.random.fold_in(key, 1), task, budget)
    theta = torch.as_tensor(np.asarray(theta), dtype=torch.float32)
    x = torch.as_tensor(np.asarray(x).reshape(budget, -1), dtype=torch.float32)
    inference = NPE(prior=torch_prior(task), density_estimator="nsf", show_progress_bars=False)
    start = time.perf_counter()
    estimator = inference.append_simulations(theta, x).train(
        training_batch_size=args.batch_size, validation_fraction=0.1, stop_after_epochs=20)
    seconds = time.perf_counter() - start
    posterior = inference.build_posterior(estimator)
    epochs = int(inference.summary["epochs_trained"][-1])
    print(f"[sbi {task.name} {budget}] trained {epochs} epochs in {seconds:.0f} s", flush=True)

    def score(index):
        _, x_obs = observation(task, index)
        ref = bench_sbibm.reference(task, index, args.num_draws, Path(args.cache_dir))
        start = time.perf_counter()
        draws = posterior.sample((args.num_draws,), x=torch.as_tensor(
            np.asarray(x_obs).reshape(1, -1), dtype=torch.float32), show_progress_bars=False)
        sample_seconds = time.perf_counter() - start
        draws = draws.numpy()
        ours = float(c2st_sbibm(jax.random.fold_in(key, 100 + index), draws, ref))
        theirs = float(sbi_c2st(torch.as_tensor(ref), torch.as_tensor(draws)))
        return {"c2st": ours, "c2st_sbi_implementation": theirs, "seconds": sample_seconds}

    rows, failures = bench_sbibm.each_observation(task, args.num_observations, score)
    values = np.array([r["c2st"] for r in rows])
    out = {**failures,
           "training": {"seconds": seconds, "epochs": epochs, "batch_size": args.batch_size},
           "npe": {"c2st_mean": float(values.mean()), "c2st_sd": float(values.std()),
                   "c2st": values.tolist(),
                   "c2st_sbi_implementation": [r["c2st_sbi_implementation"] for r in rows],
                   "seconds_per_observation": float(np.median([r["seconds"] for r in rows]))}}
    print(f"[sbi {task.name} {budget}] C2ST {out['npe']['c2st_mean']:.3f} (sbi's c2st: "
          f"{np.mean(out['npe']['c2st_sbi_implementation']):.3f})", flush=True)
    return out


def main(argv=None) -> dict:
    parser = bench_sbibm.build_parser(__doc__.splitlines()[0], "sbibm_sbi.json")
    parser.add_argument("--with-ours", action="store_true",
                        help="also run bench_sbibm.py's guide on each task and budget")
    args = parser.parse_args(argv)
    tasks, budgets = bench_sbibm.parts(parser, args)
    import sbi
    import torch

    torch.set_num_threads(os.cpu_count())
    command = "python benchmarks/peers/bench_sbi.py " + " ".join(argv or sys.argv[1:])
    results = {"device": "cpu",
               "environment": {"python": platform.python_version(), "sbi": sbi.__version__,
                               "torch": torch.__version__, "jax": jax.__version__,
                               "cpu_count": os.cpu_count(),
                               "load_average_at_start": list(os.getloadavg())}}

    def row(key, task, budget):
        out = run_sbi(key, task, budget, args)
        if args.with_ours:
            out["ours"] = bench_sbibm.run(key, task, budget, args)
        return out

    return bench_sbibm.run_parts(args, results, command, tasks, budgets, row)


if __name__ == "__main__":
    main()
