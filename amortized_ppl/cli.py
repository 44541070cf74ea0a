"""The ``amortized-ppl`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from amortized_ppl._checks import check_output_dir
from amortized_ppl.demo import DemoConfig, load_demo, run_demo
from amortized_ppl.diagnose import DiagnoseConfig, run_diagnose

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amortized-ppl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="train an amortized guide on linear regression and check it against exact "
        "posteriors and NUTS, then run the trust suite (several minutes on 2 CPU cores)"
    )
    defaults = DemoConfig()
    demo.add_argument("--noise", choices=["known", "unknown"], default=defaults.noise)
    demo.add_argument("--loss", choices=["forward_kl", "elbo", "mixed"], default=defaults.loss)
    demo.add_argument("--steps", type=int, default=defaults.num_steps)
    demo.add_argument("--train-seconds", type=float, default=defaults.train_seconds)
    demo.add_argument("--batch-size", type=int, default=defaults.batch_size)
    demo.add_argument("--newton-steps", type=int, default=defaults.newton_steps,
                      help="Newton steps on the model's density per data set (0: network only)")
    demo.add_argument("--num-test", type=int, default=defaults.num_test)
    demo.add_argument("--num-nuts", type=int, default=defaults.num_nuts)
    demo.add_argument("--seed", type=int, default=defaults.seed)
    demo.add_argument("--out", default=defaults.out)
    demo.add_argument("--num-sbc", type=int, default=defaults.num_sbc,
                      help="simulated data sets for simulation-based calibration")
    demo.add_argument("--num-ood", type=int, default=defaults.num_ood,
                      help="data sets per out-of-distribution kind in the trust checks")
    demo.add_argument("--no-diagnose", action="store_true",
                      help="skip the trust suite (SBC, k-hat, OOD flags, ladder)")
    demo.add_argument("--quiet", action="store_true")

    diagnose = commands.add_parser(
        "diagnose", help="run the trust suite (SBC, coverage, PSIS k-hat, OOD flags, the ladder "
        "to warm-started NUTS, distances to NUTS) on a trained demo guide and write plots"
    )
    checks = DiagnoseConfig()
    diagnose.add_argument("--run", default=defaults.out, help="the demo's output folder")
    diagnose.add_argument("--out", default=None, help="default: RUN/diagnose")
    diagnose.add_argument("--num-sbc", type=int, default=checks.num_sbc)
    diagnose.add_argument("--num-in", type=int, default=checks.num_in)
    diagnose.add_argument("--num-ood", type=int, default=checks.num_ood)
    diagnose.add_argument("--num-reference", type=int, default=checks.num_reference,
                          help="in-distribution data sets compared with NUTS (0 skips)")
    diagnose.add_argument("--num-ood-simulations", type=int, default=checks.num_ood_simulations,
                          help="simulations behind the out-of-distribution test")
    diagnose.add_argument("--seed", type=int, default=checks.seed)
    diagnose.add_argument("--quiet", action="store_true")
    return parser


def _diagnose(args) -> None:
    checks = DiagnoseConfig(
        num_sbc=args.num_sbc, num_in=args.num_in, num_ood=args.num_ood,
        num_reference=args.num_reference, num_ood_simulations=args.num_ood_simulations,
        seed=args.seed, progress=not args.quiet,
    ).checked()
    guide, params, config, design, exact_fn = load_demo(args.run)
    out = check_output_dir(Path(args.out) if args.out else Path(args.run) / "diagnose")
    run_diagnose(guide, params, design_fn=design, num_obs=config.num_obs, out=out,
                 config=checks, exact_fn=exact_fn)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            config = DemoConfig(
                noise=args.noise, loss=args.loss, num_steps=args.steps,
                train_seconds=args.train_seconds, batch_size=args.batch_size,
                newton_steps=args.newton_steps, num_test=args.num_test, num_nuts=args.num_nuts,
                seed=args.seed, out=args.out, progress=not args.quiet,
                diagnose=not args.no_diagnose, num_sbc=args.num_sbc, num_ood=args.num_ood,
            )
            run_demo(config)
        elif args.command == "diagnose":
            _diagnose(args)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except (OSError, ValueError, TypeError) as error:
        # Bad settings, unreadable or damaged checkpoints, unwritable folders: one line, exit 2.
        message = error.strerror if isinstance(error, OSError) and not str(error) else error
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
