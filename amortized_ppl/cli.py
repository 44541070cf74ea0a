"""The ``amortized-ppl`` command line."""

from __future__ import annotations

import argparse
import sys

from amortized_ppl.demo import DemoConfig, run_demo

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amortized-ppl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="train an amortized guide on linear regression and check it against exact "
        "posteriors and NUTS (defaults finish in under 5 minutes on 2 CPU cores)"
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
    demo.add_argument("--quiet", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        config = DemoConfig(
            noise=args.noise, loss=args.loss, num_steps=args.steps,
            train_seconds=args.train_seconds, batch_size=args.batch_size,
            newton_steps=args.newton_steps, num_test=args.num_test, num_nuts=args.num_nuts,
            seed=args.seed, out=args.out, progress=not args.quiet,
        )
        try:
            run_demo(config)
        except KeyboardInterrupt:
            print("Interrupted.", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
