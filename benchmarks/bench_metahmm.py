"""MetaHMM: the exact oracle, and a next-token Transformer vs Monte Carlo predictors by ambiguity.

Sections:

- ``oracle``: the exact Bayesian oracle (:func:`amortized_ppl.sequence.oracle.oracle_batch`)
  checked against brute-force enumeration of hidden paths (tiny-set environments, length 6), and
  one evaluation of the ``small`` set (12,288 environments, 1,000 held out: the oracle's prior is
  the 11,288 training environments) on 100 sequences of length 200, timed after compilation
  (fastest of two runs).
- ``tiny``: on the ``tiny`` set a plain causal Transformer and a Monte Carlo predictor with the
  same trunk (same size, steps and batch size) are trained on fresh simulations, then evaluated
  on ``--eval-seqs`` sequences from training environments (in distribution) and from held-out
  environments (OOD) against the oracle: forward ``KL(oracle || predictor)`` per position,
  averaged over all positions, over ambiguity terciles (equal-count bins by the oracle's posterior
  entropy) and per position; the amortized posterior's KL to the oracle's environment posterior
  per prefix length. Monte Carlo predictors use M = 1, 5, 20 samples with (a) the known HMM
  filter as decoder and (b) the learned decoder; the ceiling samples environments from the exact
  posterior instead of q.

Usage::

    python benchmarks/bench_metahmm.py                      # both sections, ~35 min on 2 cores
    python benchmarks/bench_metahmm.py --sections tiny --train-steps 500

Writes ``benchmarks/results/metahmm.json`` and a figure next to it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amortized_ppl.models.metahmm import (  # noqa: E402
    build_metahmm,
    get_config,
    sample_batch,
    sample_sequences,
)
from amortized_ppl.sequence import (  # noqa: E402
    MonteCarloPredictor,
    NextTokenTransformer,
    bayes_oracle,
    evaluate_predictors,
    fit_sequence_model,
    oracle_batch,
    summarize,
)
from amortized_ppl.sequence.hmm import (  # noqa: E402
    categorical_log_likelihoods,
    enumerate_log_evidence,
)
from amortized_ppl.sequence.study import make_sample_fn  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _best_of(fn, repeats=2):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def oracle_section(args) -> dict:
    tiny = build_metahmm(get_config("tiny"))
    errors = []
    key = jax.random.key(args.seed)
    for e in range(5):
        env = jnp.array([int(tiny.train_envs[e])])
        x, _ = sample_sequences(jax.random.fold_in(key, e), tiny, env, seq_len=6)
        exact = float(bayes_oracle(tiny.log_init, tiny.log_trans[env], tiny.log_emit[env],
                                   x[0]).log_evidence)
        brute = float(enumerate_log_evidence(
            tiny.log_init, tiny.log_trans[env[0]],
            categorical_log_likelihoods(tiny.log_emit[env[0]], x[0])))
        errors.append(abs(exact - brute))
    print(f"oracle vs enumeration (tiny envs, T = 6, 8^6 paths): max |error| = {max(errors):.2e}")

    start = time.perf_counter()
    small = build_metahmm(get_config("small"))
    build_s = time.perf_counter() - start
    _, x = sample_batch(jax.random.fold_in(key, 99), small, 100, "train")
    envs = small.train_envs
    args_ = (small.log_init, small.log_trans[envs], small.log_emit[envs], x)
    start = time.perf_counter()
    jax.block_until_ready(oracle_batch(*args_).log_probs)
    first = time.perf_counter() - start
    warm = _best_of(lambda: oracle_batch(*args_).log_probs)
    print(f"small set: built in {build_s:.2f} s; oracle on 100 x 200 symbols over "
          f"{envs.shape[0]} environments: {warm:.2f} s warm ({first:.2f} s with compilation)")
    return {
        "enumeration_max_abs_error": max(errors),
        "small_build_seconds": build_s,
        "small_oracle_100_sequences_seconds": warm,
        "small_oracle_first_call_seconds": first,
        "small_num_prior_envs": int(envs.shape[0]),
    }


def tiny_section(args) -> dict:
    hmm = build_metahmm(get_config("tiny"))
    num_symbols, seq_len = hmm.num_symbols, hmm.config.seq_len
    sample_fn = make_sample_fn(hmm, sample_sequences)
    trunk = dict(size=args.size, num_heads=4, num_blocks=args.blocks,
                 context_tokens=args.context_tokens)
    init_key, train_key, eval_key = jax.random.split(jax.random.key(args.seed), 3)
    budget = dict(num_steps=args.train_steps, batch_size=args.batch_size,
                  learning_rate=args.learning_rate, progress=not args.quiet)
    plain = fit_sequence_model(train_key, NextTokenTransformer(num_symbols, seq_len, key=init_key,
                                                               **trunk), sample_fn, **budget)
    mc_init = MonteCarloPredictor(num_symbols, seq_len, hmm.factor_sizes, key=init_key, **trunk)
    mc = fit_sequence_model(train_key, mc_init, sample_fn, **budget)
    fits = {"transformer": plain, "monte_carlo": mc}
    if not args.no_rb:
        # The same predictor trained on the oracle's posterior marginals (soft labels).
        rb_sample_fn = make_sample_fn(hmm, sample_sequences, exact_targets=True)
        fits["monte_carlo_rb"] = fit_sequence_model(train_key, mc_init, rb_sample_fn, **budget)
    print("trained: " + ", ".join(f"{k} {v.seconds:.0f} s" for k, v in fits.items()))
    out = {"train_seconds": {k: v.seconds for k, v in fits.items()},
           "final_loss": {k: float(v.history[-100:].mean()) for k, v in fits.items()}}
    figures = {}
    for split in ("train", "ood"):
        _, x = sample_batch(jax.random.fold_in(eval_key, 1 if split == "train" else 2), hmm,
                            args.eval_seqs, split)
        start = time.perf_counter()
        results = evaluate_predictors(jax.random.fold_in(eval_key, 3), hmm, x, split,
                                      plain=plain.model, monte_carlo=mc.model,
                                      exact_posterior=True)
        if "monte_carlo_rb" in fits:
            rb = evaluate_predictors(jax.random.fold_in(eval_key, 3), hmm, x, split,
                                     monte_carlo=fits["monte_carlo_rb"].model, decoders=("hmm",))
            for kind in ("kl", "nll"):
                results[kind].update({k.replace("mc_", "mc_rb_"): v for k, v in rb[kind].items()})
            results["posterior_kl_rb"] = rb["posterior_kl"]
        summary = summarize(results)
        if "posterior_kl_rb" in results:
            summary["posterior_kl_rb_by_position"] = np.mean(
                results["posterior_kl_rb"], axis=0).tolist()
        summary["eval_seconds"] = time.perf_counter() - start
        out[split] = summary
        figures[split] = results
        _print_summary(split, summary)
    _plots(figures, args.out.with_suffix(""))
    return out


def _print_summary(split, summary):
    print(f"\n[{split}] mean KL(oracle || predictor), overall and by ambiguity tercile "
          "(low, mid, high)")
    for name, s in summary["predictors"].items():
        t = s["kl_by_ambiguity"]["mean"]
        print(f"  {name:18s} {s['mean_kl']:.4f}   {t[0]:.4f} {t[1]:.4f} {t[2]:.4f}")
    for key in ("posterior_kl_by_position", "posterior_kl_rb_by_position"):
        if key in summary:
            post = np.asarray(summary[key])
            # Row t has read t symbols (row 0 is the prior).
            print(f"  {key}: KL(oracle env posterior || q) after 0, 4, 16, 63 symbols:",
                  " ".join(f"{post[t]:.3f}" for t in (0, 4, 16, post.size - 1)))


def _plots(figures, stem):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from amortized_ppl.sequence.plots import plot_kl_by_ambiguity, plot_kl_by_position

    names = ["transformer", "mc_hmm_M20", "mc_learned_M20", "mc_exact_M20"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for row, split in enumerate(("train", "ood")):
        plot_kl_by_position(figures[split], names, ax=axes[row, 0])
        plot_kl_by_ambiguity(figures[split], names, ax=axes[row, 1])
        axes[row, 0].set_title(f"{split}: KL by position")
        axes[row, 1].set_title(f"{split}: KL by ambiguity")
    fig.savefig(f"{stem}_kl.png", dpi=110)
    print(f"figure: {stem}_kl.png")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", nargs="+", default=["oracle", "tiny"],
                        choices=["oracle", "tiny"])
    parser.add_argument("--train-steps", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--context-tokens", type=int, default=2,
                        help="preceding symbols embedded at each row (1: a plain Transformer input)")
    parser.add_argument("--eval-seqs", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-rb", action="store_true",
                        help="skip the predictor trained on exact posterior marginals")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "metahmm.json")
    args = parser.parse_args(argv)
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(jax.devices()[0]),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "versions": {"jax": jax.__version__},
        "arguments": {k: str(v) for k, v in vars(args).items()},
    }
    if "oracle" in args.sections:
        record["oracle"] = oracle_section(args)
    if "tiny" in args.sections:
        record["tiny"] = tiny_section(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(args.out)  # never leave a half-written result
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
