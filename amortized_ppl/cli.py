"""The amortized-ppl command line: train, sample, check and time a guide of your own model.

Commands:

- ``train``: train an amortized guide of a NumPyro model on simulations from its design
  function, both given by import path (``module:function`` or ``path/to/file.py:function``), and
  save it in a run folder (``checkpoint/`` and the command's settings in ``train.json``);
- ``sample``: posterior draws from a run folder's guide for a data set in a CSV or ``.npz`` file
  (layout: :mod:`amortized_ppl._cli_data`), written as ``.npz`` or ArviZ netCDF (``.nc``);
- ``diagnose``: the trust suite (:func:`amortized_ppl.diagnose.run_diagnose`) on a run folder of
  ``train`` or of the demo;
- ``benchmark``: time the guide against NUTS on a few simulated data sets;
- ``demo``: train and check a guide of Bayesian linear regression end to end.

Parsing imports no JAX (``--help`` and ``--version`` are instant); the jobs
(:mod:`amortized_ppl._cli_commands`) are imported once the arguments are read. A user error (a bad
import path, a missing file, a data file that does not fit the model, a damaged checkpoint) is
one line ``amortized-ppl: error: ...`` on stderr and exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from amortized_ppl._cli_defaults import DemoConfig, DiagnoseConfig

__all__ = ["build_parser", "main", "parse_num_obs"]

PROG = "amortized-ppl"
DESCRIPTION = (
    "Amortized inference for NumPyro models: train a neural posterior on simulations from your "
    "model once, then draw posteriors for new data sets in milliseconds, with checks on when to "
    "trust them."
)
EPILOG = """\
workflow:
  amortized-ppl train --model my_model.py:model --design my_model.py:design_fn \\
      --num-obs 10,200 --out runs/mine
  amortized-ppl sample --run runs/mine --data data.csv --out draws.npz
  amortized-ppl diagnose --run runs/mine
  amortized-ppl benchmark --run runs/mine

Run 'amortized-ppl COMMAND --help' for a command's options."""

DATA_EPILOG = """\
data files:
  CSV: the header names the model's arguments, one row per observation. A column named
  like an argument (y) gives a vector; columns x_0, x_1, ... (or x[0], x[1], ...) give one
  matrix argument x with a column per index. All-integer columns give integer arrays.
  Arguments that are not per-observation keep the model's defaults.
  .npz: one array per model argument, named after it (0-d arrays become scalars); a leading
  axis on every data argument gives a batch of data sets (draws then have it too)."""

GUIDES = ("normal", "mvn", "flow")
LOSSES = ("forward_kl", "elbo", "mixed")
DEMO_RUN = DemoConfig().out


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except where there is none to show (None, a flag, a required option), and
    keeps indented lines of descriptions and epilogs (examples) as written."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.required:
            return action.help
        return super()._get_help_string(action)

    def _fill_text(self, text, width, indent):
        blocks = []
        for block in text.split("\n\n"):
            if any(line.startswith(" ") for line in block.splitlines()):
                blocks.append("\n".join(indent + line for line in block.splitlines()))
            else:
                blocks.append(super()._fill_text(block, width, indent))
        return "\n\n".join(blocks)


class _Parser(argparse.ArgumentParser):
    """Refuses bad arguments in one line (``amortized-ppl: error: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def parse_num_obs(text: str) -> tuple[int, int]:
    """``"LOW"`` or ``"LOW,HIGH"`` as an inclusive range of data-set sizes ``(low, high)``."""
    parts = [part.strip() for part in str(text).split(",")]
    try:
        low, high = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (0, -1)
    except ValueError:
        low, high = 0, -1
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(
            f"expected LOW or LOW,HIGH with 1 <= LOW <= HIGH (integers), got {text!r}"
        )
    return low, high


def _version() -> str:
    from amortized_ppl._version import __version__

    return f"{PROG} {__version__}"


def _add_user_model(parser, *, required: bool, origin: str = "", design: bool = True) -> None:
    parser.add_argument(
        "--model",
        required=required,
        help="the NumPyro model, as module:function or path/to/file.py:function" + origin,
    )
    if not design:
        return
    parser.add_argument(
        "--design",
        required=required,
        help="its design function design_fn(key, num_obs) -> (args, kwargs): the model's inputs "
        "for one data set without the observations" + origin,
    )


def _add_demo(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="train an amortized guide on linear regression and check it against exact "
        "posteriors and NUTS, then run the trust suite (several minutes on 2 CPU cores)",
        description="Train AutoAmortizedMultivariateNormal on Bayesian linear regression, check "
        "it against closed-form posteriors and NUTS, then run the trust suite.",
    )
    d = DemoConfig()
    demo.add_argument(
        "--noise",
        choices=["known", "unknown"],
        default=d.noise,
        help="known: closed-form reference posteriors; unknown: NUTS only",
    )
    demo.add_argument("--loss", choices=list(LOSSES), default=d.loss, help="training loss")
    demo.add_argument("--steps", type=int, default=d.num_steps, help="training steps (at most)")
    demo.add_argument(
        "--train-seconds",
        type=float,
        default=d.train_seconds,
        help="training time budget in seconds",
    )
    demo.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="simulated data sets per training step"
    )
    demo.add_argument(
        "--newton-steps",
        type=int,
        default=d.newton_steps,
        help="Newton steps on the model's density per data set (0: network only)",
    )
    demo.add_argument(
        "--num-test",
        type=int,
        default=d.num_test,
        help="held-out data sets checked against the exact posterior",
    )
    demo.add_argument(
        "--num-nuts",
        type=int,
        default=d.num_nuts,
        help="held-out data sets also run with NUTS (accuracy and timing)",
    )
    demo.add_argument("--seed", type=int, default=d.seed, help="random seed")
    demo.add_argument("--out", default=d.out, help="output folder")
    demo.add_argument(
        "--num-sbc",
        type=int,
        default=d.num_sbc,
        help="simulated data sets for simulation-based calibration",
    )
    demo.add_argument(
        "--num-ood",
        type=int,
        default=d.num_ood,
        help="data sets per out-of-distribution kind in the trust checks",
    )
    demo.add_argument(
        "--no-diagnose",
        action="store_true",
        help="skip the trust suite (SBC, k-hat, OOD flags, ladder)",
    )
    demo.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _add_train(commands) -> None:
    train = commands.add_parser(
        "train",
        help="train an amortized guide of your NumPyro model and save it in a run folder",
        description="Train an amortized guide of a NumPyro model on simulations from its prior "
        "predictive (sizes and covariates from the design function) and save it in a run folder: "
        "checkpoint/ and train.json (the settings, with the import paths that sample, diagnose "
        "and benchmark rebuild the guide from).",
    )
    _add_user_model(train, required=True)
    train.add_argument(
        "--num-obs",
        type=parse_num_obs,
        default="10,100",
        metavar="LOW[,HIGH]",
        help="observations per simulated data set: a number or an inclusive range",
    )
    train.add_argument(
        "--guide",
        choices=GUIDES,
        default="mvn",
        help="posterior family: diagonal Normal, full-rank Normal (mvn) or a normalizing flow",
    )
    train.add_argument(
        "--newton-steps",
        type=int,
        default=0,
        help="Newton steps on the model's density per data set (0: network only)",
    )
    train.add_argument("--loss", choices=LOSSES, default="forward_kl", help="training loss")
    train.add_argument("--steps", type=int, default=2000, help="training steps (at most)")
    train.add_argument(
        "--train-seconds",
        type=float,
        default=None,
        help="stop training after this many seconds (default: no limit)",
    )
    train.add_argument(
        "--batch-size", type=int, default=64, help="simulated data sets per training step"
    )
    train.add_argument("--learning-rate", type=float, default=1e-3, help="peak learning rate")
    train.add_argument("--seed", type=int, default=0, help="random seed")
    train.add_argument("--out", required=True, help="the run folder to write")
    train.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def _add_sample(commands) -> None:
    sample = commands.add_parser(
        "sample",
        help="draw posterior samples from a trained guide for a data set (CSV or .npz)",
        description="Draw posterior samples from a run folder's guide for the data set in a CSV "
        "or .npz file and write them as .npz (one array per latent site) or ArviZ netCDF (.nc).",
        epilog=DATA_EPILOG,
    )
    sample.add_argument("--run", required=True, help="a run folder written by train")
    sample.add_argument("--data", required=True, help="the data set: a .csv or .npz file")
    sample.add_argument("--num-samples", type=int, default=1000, help="posterior draws")
    sample.add_argument("--seed", type=int, default=0, help="random seed")
    sample.add_argument("--out", required=True, help="the draws' file: .npz or .nc")
    _add_user_model(sample, required=False, origin=" (default: from RUN/train.json)", design=False)


def _add_diagnose(commands) -> None:
    diagnose = commands.add_parser(
        "diagnose",
        help="run the trust suite (SBC, coverage, PSIS k-hat, OOD flags, the ladder to "
        "warm-started NUTS, distances to NUTS) on a trained guide and write plots",
        description="Run the trust suite on the guide of a run folder (of train, or of the "
        "demo) and write diagnostics.json and plots.",
    )
    c = DiagnoseConfig()
    diagnose.add_argument(
        "--run", default=DEMO_RUN, help="a run folder written by train or by the demo"
    )
    diagnose.add_argument("--out", default=None, help="output folder (default: RUN/diagnose)")
    diagnose.add_argument(
        "--num-sbc",
        type=int,
        default=c.num_sbc,
        help="simulated data sets for simulation-based calibration",
    )
    diagnose.add_argument(
        "--num-in", type=int, default=c.num_in, help="in-distribution data sets on the trust ladder"
    )
    diagnose.add_argument(
        "--num-ood",
        type=int,
        default=c.num_ood,
        help="data sets per out-of-distribution kind on the trust ladder",
    )
    diagnose.add_argument(
        "--ood-num-obs",
        type=int,
        default=None,
        help=f"observations per out-of-distribution data set (default: {c.ood_num_obs}, or the "
        "most the guide was trained on if fewer)",
    )
    diagnose.add_argument(
        "--num-reference",
        type=int,
        default=c.num_reference,
        help="in-distribution data sets compared with NUTS (0 skips)",
    )
    diagnose.add_argument(
        "--num-ood-simulations",
        type=int,
        default=c.num_ood_simulations,
        help="simulations behind the out-of-distribution test",
    )
    diagnose.add_argument("--seed", type=int, default=c.seed, help="random seed")
    diagnose.add_argument("--quiet", action="store_true", help="print nothing but errors")
    _add_user_model(
        diagnose,
        required=False,
        origin=" (default: from RUN/train.json; needed for a guide saved with save_params)",
    )


def _add_benchmark(commands) -> None:
    benchmark = commands.add_parser(
        "benchmark",
        help="time posterior sampling with the guide against NUTS on a few simulated data sets",
        description="Time the guide's posterior draws against NUTS (blackjax, the library's "
        "reference sampler) on a few data sets simulated from the model, compare their means, "
        "print a table and write JSON.",
    )
    benchmark.add_argument(
        "--run", default=DEMO_RUN, help="a run folder written by train or by the demo"
    )
    benchmark.add_argument(
        "--num-datasets",
        type=int,
        default=3,
        help="simulated data sets, each sampled by the guide and by NUTS",
    )
    benchmark.add_argument(
        "--num-obs",
        type=int,
        default=None,
        help="observations per data set (default: the most the guide was trained on)",
    )
    benchmark.add_argument(
        "--num-samples",
        type=int,
        default=1000,
        help="posterior draws per data set (the guide's and each NUTS chain's)",
    )
    benchmark.add_argument("--num-warmup", type=int, default=500, help="NUTS warm-up steps")
    benchmark.add_argument("--num-chains", type=int, default=4, help="NUTS chains")
    benchmark.add_argument("--seed", type=int, default=0, help="random seed")
    benchmark.add_argument(
        "--out", default=None, help="the JSON file to write (default: RUN/benchmark.json)"
    )
    benchmark.add_argument("--quiet", action="store_true", help="print nothing but errors")
    _add_user_model(benchmark, required=False, origin=" (default: from RUN/train.json)")


def build_parser() -> argparse.ArgumentParser:
    """The ``amortized-ppl`` parser; builds without importing JAX."""
    parser = _Parser(
        prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=_HelpFormatter
    )
    parser.add_argument(
        "--version", action="version", version=_version(), help="print the version and exit"
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    for add in (_add_train, _add_sample, _add_diagnose, _add_benchmark, _add_demo):
        add(commands)
    for command in commands.choices.values():
        command.formatter_class = _HelpFormatter
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = " ".join(str(message).split())
    print(f"{PROG}: warning: {text}", file=sys.stderr if file is None else file)


def _message(error: BaseException) -> str:
    if isinstance(error, OSError) and not str(error):
        return str(error.strerror or type(error).__name__)
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    """Run ``amortized-ppl`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    Bad arguments exit through ``SystemExit(2)`` (argparse); user errors found while running
    (files, import paths, checkpoints, settings) return 2 after one ``amortized-ppl: error:``
    line on stderr; Ctrl-C returns 130.
    """
    args = build_parser().parse_args(argv)
    from amortized_ppl import _cli_commands  # imports JAX: only after parsing

    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            _cli_commands.COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except (OSError, ValueError, TypeError) as error:
        # Bad settings, import paths, data files, damaged checkpoints, unwritable folders.
        print(f"{PROG}: error: {_message(error)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
